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

/// What to do about a wait for `workers`, given the workers the shard has
/// heard nothing from since it started (`unheard`): a worker never started
/// is told apart from one that stopped. The advice the shard's wait log and
/// the waiting worker's give alike.
pub fn advice(workers: &[u32], unheard: &[u32]) -> String {
    let (absent, present): (Vec<u32>, Vec<u32>) = workers.iter().partition(|w| unheard.contains(w));
    let mut advice = Vec::new();
    match absent.as_slice() {
        [] => {}
        [one] => advice.push(format!(
            "worker {one} has sent nothing to this shard since it started: start it, or start the \
             shards with a smaller --workers"
        )),
        many => advice.push(format!(
            "workers {many:?} have sent nothing to this shard since it started: start them, or \
             start the shards with a smaller --workers"
        )),
    }
    if !present.is_empty() || absent.is_empty() {
        advice.push(
            "if one has stopped, restart it (it joins again) or start the shards with \
             --worker-timeout SECONDS"
                .to_string(),
        );
    }
    advice.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_tells_a_worker_never_started_from_one_that_stopped() {
        let stopped = advice(&[1], &[]);
        assert!(stopped.starts_with("if one has stopped, restart it"), "{stopped}");
        let never = advice(&[1], &[1, 3]);
        assert!(
            never.starts_with("worker 1 has sent nothing to this shard since it started: start it"),
            "{never}"
        );
        assert!(!never.contains("if one has stopped"), "{never}");
        let both = advice(&[1, 2, 3], &[1, 3]);
        assert!(both.starts_with("workers [1, 3] have sent nothing"), "{both}");
        assert!(both.contains("; if one has stopped"), "{both}");
    }

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
