//! Worker leases: when each worker was last heard from, how many of its
//! requests are in flight, and which workers were evicted for silence.
//!
//! Every request of a worker renews its lease while it runs and when it
//! ends, so a worker blocked in a long pull is never overdue. The shard
//! evicts (makes leave) workers that are live, have nothing in flight, and
//! were silent for longer than the configured timeout.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Lease {
    last_seen: Instant,
    in_flight: u32,
    evicted: bool,
}

/// The leases of workers `0..n`.
#[derive(Debug)]
pub struct Leases {
    leases: Arc<Mutex<Vec<Lease>>>,
}

/// Holds a worker's lease open while a request runs; renews it when dropped.
#[derive(Debug)]
pub struct LeaseGuard {
    leases: Arc<Mutex<Vec<Lease>>>,
    worker: usize,
}

fn lock(leases: &Mutex<Vec<Lease>>) -> MutexGuard<'_, Vec<Lease>> {
    leases.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.leases).get_mut(self.worker) {
            l.in_flight = l.in_flight.saturating_sub(1);
            l.last_seen = Instant::now();
        }
    }
}

impl Leases {
    /// Leases for workers `0..n`, all just renewed.
    pub fn new(n: u32) -> Self {
        let lease = Lease { last_seen: Instant::now(), in_flight: 0, evicted: false };
        Self { leases: Arc::new(Mutex::new(vec![lease; n as usize])) }
    }

    /// Renews `worker`'s lease for the duration of a request; `None` for an unknown worker.
    pub fn begin(&self, worker: u32) -> Option<LeaseGuard> {
        let mut leases = lock(&self.leases);
        let l = leases.get_mut(worker as usize)?;
        l.in_flight += 1;
        l.last_seen = Instant::now();
        Some(LeaseGuard { leases: Arc::clone(&self.leases), worker: worker as usize })
    }

    /// Workers among `live` with nothing in flight, silent for longer than `timeout` as of `now`.
    pub fn overdue(&self, live: &[bool], timeout: Duration, now: Instant) -> Vec<u32> {
        lock(&self.leases)
            .iter()
            .zip(live)
            .enumerate()
            .filter(|(_, (l, live))| {
                **live && l.in_flight == 0 && now.saturating_duration_since(l.last_seen) > timeout
            })
            .map(|(w, _)| w as u32)
            .collect()
    }

    /// Records that `worker` was evicted (`true`) or has joined again (`false`).
    pub fn set_evicted(&self, worker: u32, evicted: bool) {
        if let Some(l) = lock(&self.leases).get_mut(worker as usize) {
            l.evicted = evicted;
            l.last_seen = Instant::now();
        }
    }

    /// Whether `worker` was evicted and has not joined again.
    pub fn is_evicted(&self, worker: u32) -> bool {
        lock(&self.leases).get(worker as usize).is_some_and(|l| l.evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_silent_idle_live_workers_are_overdue() {
        let leases = Leases::new(3);
        let t = Duration::from_secs(5);
        let later = Instant::now() + Duration::from_secs(10);
        let busy = leases.begin(1).unwrap();
        assert_eq!(leases.overdue(&[true, true, false], t, later), vec![0], "1 is in flight, 2 is not live");
        drop(busy);
        assert_eq!(leases.overdue(&[true, true, true], t, Instant::now()), Vec::<u32>::new(), "just renewed");
        assert!(leases.begin(7).is_none());
        leases.set_evicted(0, true);
        assert!(leases.is_evicted(0));
        leases.set_evicted(0, false);
        assert!(!leases.is_evicted(0));
    }
}
