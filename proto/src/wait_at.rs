//! The wait a `Status` request asks about, whose workers each tensor's
//! `holding_back` then names: a pull's or a barrier's, at a clock. Written
//! by the worker and read by the shard, here in one place.

use crate::pb;

/// A wait whose workers a shard can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitAt {
    /// A pull at this clock (a step's pull is at its clock + 1).
    Pull(u64),
    /// A barrier at this clock.
    Barrier(u64),
}

impl WaitAt {
    /// The status request that asks about this wait.
    pub fn status_request(self) -> pb::StatusRequest {
        match self {
            Self::Pull(clock) => pb::StatusRequest { pull_clock: Some(clock), barrier_clock: None },
            Self::Barrier(clock) => pb::StatusRequest { pull_clock: None, barrier_clock: Some(clock) },
        }
    }

    /// The wait `request` asks about, if any; an error when it gives both
    /// clocks.
    pub fn of_status_request(request: &pb::StatusRequest) -> Result<Option<Self>, String> {
        match (request.pull_clock, request.barrier_clock) {
            (Some(_), Some(_)) => Err("status request: give pull_clock or barrier_clock, not both".into()),
            (Some(clock), None) => Ok(Some(Self::Pull(clock))),
            (None, Some(clock)) => Ok(Some(Self::Barrier(clock))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_survives_its_request_and_both_clocks_are_refused() {
        for wait in [WaitAt::Pull(3), WaitAt::Barrier(0)] {
            assert_eq!(WaitAt::of_status_request(&wait.status_request()), Ok(Some(wait)));
        }
        assert_eq!(WaitAt::of_status_request(&pb::StatusRequest::default()), Ok(None));
        let both = pb::StatusRequest { pull_clock: Some(1), barrier_clock: Some(1) };
        assert!(WaitAt::of_status_request(&both).is_err_and(|e| e.contains("not both")));
    }
}
