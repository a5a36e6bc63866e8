//! Sync pushes that arrive in pieces: which pieces of its push for the
//! round each worker has delivered.
//!
//! A sync part larger than the shard's piece size also takes a push as
//! several requests, one per piece, each all or nothing. The worker's push
//! for a clock is complete, and is counted by [`ClockTable::step`], once
//! every piece has arrived; a piece that arrives twice is a duplicate.
//!
//! [`ClockTable::step`]: super::ClockTable::step

use std::collections::BTreeMap;

/// Per worker, the pieces of its unfinished push that have arrived.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    by_worker: BTreeMap<u32, Progress>,
}

/// The pieces of one worker's push for one clock that have arrived.
#[derive(Clone, Debug)]
struct Progress {
    clock: u64,
    arrived: Vec<bool>,
    count: usize,
}

impl Delivered {
    fn progress(&self, worker: u32, clock: u64) -> Option<&Progress> {
        self.by_worker.get(&worker).filter(|p| p.clock == clock)
    }

    /// Whether `piece` of `worker`'s push for `clock` has arrived.
    pub fn has(&self, worker: u32, clock: u64, piece: usize) -> bool {
        self.progress(worker, clock).is_some_and(|p| p.arrived.get(piece).copied().unwrap_or(false))
    }

    /// Whether some, but not yet all, pieces of `worker`'s push for `clock` have arrived.
    pub fn started(&self, worker: u32, clock: u64) -> bool {
        self.progress(worker, clock).is_some()
    }

    /// Whether `piece`, not arrived yet, is the last one missing of
    /// `worker`'s push for `clock` (of `pieces` pieces). Changes nothing.
    pub fn completes(&self, worker: u32, clock: u64, piece: usize, pieces: usize) -> bool {
        if self.has(worker, clock, piece) {
            return false;
        }
        self.progress(worker, clock).map_or(0, |p| p.count) + 1 == pieces
    }

    /// The pieces of `worker`'s push for `clock` (of `pieces` pieces) that
    /// have not arrived: all of them when none has.
    pub fn missing(&self, worker: u32, clock: u64, pieces: usize) -> Vec<usize> {
        match self.progress(worker, clock) {
            Some(p) => (0..pieces).filter(|i| !p.arrived.get(*i).copied().unwrap_or(false)).collect(),
            None => (0..pieces).collect(),
        }
    }

    /// Records that `piece` of `worker`'s push for `clock` (of `pieces`
    /// pieces) arrived, and returns whether that completes the push, which
    /// is then forgotten. Progress on another clock is dropped first (the
    /// caller only records pieces of the worker's current clock).
    pub fn record(&mut self, worker: u32, clock: u64, piece: usize, pieces: usize) -> bool {
        let progress = self.by_worker.entry(worker).or_insert_with(|| Progress {
            clock,
            arrived: vec![false; pieces],
            count: 0,
        });
        if progress.clock != clock || progress.arrived.len() != pieces {
            *progress = Progress { clock, arrived: vec![false; pieces], count: 0 };
        }
        if let Some(slot) = progress.arrived.get_mut(piece)
            && !*slot
        {
            *slot = true;
            progress.count += 1;
        }
        let complete = progress.count == pieces;
        if complete {
            self.by_worker.remove(&worker);
        }
        complete
    }

    /// Forgets `worker`'s progress, returning the clock of its unfinished
    /// push if it had one.
    pub fn forget(&mut self, worker: u32) -> Option<u64> {
        self.by_worker.remove(&worker).map(|p| p.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_completes_when_its_last_piece_arrives_in_any_order() {
        let mut d = Delivered::default();
        assert!(!d.started(0, 4));
        assert!(d.completes(1, 4, 0, 1), "a push of one piece completes with it");
        assert!(!d.completes(0, 4, 2, 3));
        assert!(!d.record(0, 4, 2, 3));
        assert!(d.started(0, 4) && d.has(0, 4, 2) && !d.has(0, 4, 0));
        assert!(!d.has(0, 5, 2), "progress is per clock");
        assert_eq!(d.missing(0, 4, 3), vec![0, 1]);
        assert!(!d.record(0, 4, 0, 3));
        assert!(!d.completes(0, 4, 0, 3), "an arrived piece completes nothing");
        assert!(d.completes(0, 4, 1, 3));
        assert!(d.record(0, 4, 1, 3));
        assert!(!d.started(0, 4), "a complete push is forgotten");
        assert_eq!(d.missing(0, 4, 3), vec![0, 1, 2]);
    }

    #[test]
    fn a_piece_arriving_twice_counts_once() {
        let mut d = Delivered::default();
        assert!(!d.record(3, 0, 1, 2));
        assert!(!d.record(3, 0, 1, 2));
        assert!(d.started(3, 0));
        assert!(d.record(3, 0, 0, 2));
    }

    #[test]
    fn workers_progress_independently_and_forgetting_returns_the_clock() {
        let mut d = Delivered::default();
        d.record(0, 7, 0, 2);
        d.record(1, 7, 1, 2);
        assert_eq!(d.missing(0, 7, 2), vec![1]);
        assert_eq!(d.missing(1, 7, 2), vec![0]);
        assert_eq!(d.forget(0), Some(7));
        assert_eq!(d.forget(0), None);
        assert!(d.started(1, 7));
        // Progress on an older clock gives way to the clock recorded now.
        assert!(!d.record(1, 8, 0, 2));
        assert_eq!(d.missing(1, 8, 2), vec![1]);
    }
}
