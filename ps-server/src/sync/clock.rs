//! Per-tensor clocks, release rules and exactly-once bookkeeping.

use ps_proto::Policy;

/// What to do with a push that passed the clock checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushDecision {
    /// Apply the gradient to the parameters now (ssp, async).
    Apply,
    /// Add the gradient to the round's aggregation buffer (sync).
    Accumulate,
    /// The push was already applied (a client retry): change nothing, acknowledge.
    Duplicate,
}

/// Whether a pull may read now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullDecision {
    /// The release rule holds: read the current value.
    Ready,
    /// Wait for another push, leave or join, then ask again.
    Wait,
}

/// A sync round that just became complete: apply the aggregate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundComplete {
    /// The clock whose updates are aggregated.
    pub clock: u64,
    /// How many workers contributed (the divisor of a mean).
    pub contributors: u32,
}

/// Why the table refused an event. State is unchanged after an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The worker id is not part of the job.
    #[error("unknown worker {worker}: this job has workers 0..{num_workers}")]
    UnknownWorker {
        /// The worker's id.
        worker: u32,
        /// Worker ids are `0..num_workers`.
        num_workers: u32,
    },
    /// The worker left (or was removed) and has not joined again.
    #[error("worker {worker} has left the job; join again before pushing or pulling")]
    NotLive {
        /// The worker's id.
        worker: u32,
    },
    /// A push skips clocks: monotonic writes require clock order.
    #[error("worker {worker} pushed clock {got} but its next clock is {expected}")]
    PushGap {
        /// The worker's id.
        worker: u32,
        /// What was expected.
        expected: u64,
        /// What was received.
        got: u64,
    },
    /// A sync push for a round that has not started yet.
    #[error(
        "worker {worker} pushed clock {got} but the sync round in progress is clock {round}; pull clock {got} first"
    )]
    PushAhead {
        /// The worker's id.
        worker: u32,
        /// The sync round in progress.
        round: u64,
        /// What was received.
        got: u64,
    },
    /// A pull for a clock the worker has not reached.
    #[error("worker {worker} pulled clock {got} but has completed only {completed} clocks")]
    PullAhead {
        /// The worker's id.
        worker: u32,
        /// Clocks the worker has completed.
        completed: u64,
        /// What was received.
        got: u64,
    },
    /// A sync pull for a clock whose exact snapshot is gone.
    #[error(
        "worker {worker} pulled clock {got} in sync mode but has already pushed it; pull clock {expected}"
    )]
    PullBehind {
        /// The worker's id.
        worker: u32,
        /// What was expected.
        expected: u64,
        /// What was received.
        got: u64,
    },
}

#[derive(Clone, Debug)]
struct Slot {
    live: bool,
    /// Clocks pushed and accepted so far: the worker's clock.
    next: u64,
    /// Highest clock of this worker applied to the value, -1 for none.
    applied: i64,
    /// Sync only: contributed to the round in progress.
    in_round: bool,
}

/// Clocks of one tensor part under one policy.
///
/// Invariants: a worker's pushes are accepted only in clock order (`next`);
/// a push for a clock below `next` is a duplicate; in sync, `round` is the
/// number of applied clocks and every live worker's `next` is `round` or
/// `round + 1`.
#[derive(Clone, Debug)]
pub struct ClockTable {
    policy: Policy,
    slots: Vec<Slot>,
    /// Sync: number of rounds applied. Others: unused (0).
    round: u64,
}

impl ClockTable {
    /// A table for workers `0..num_workers`, all live at clock 0.
    pub fn new(policy: Policy, num_workers: u32) -> Self {
        let slot = Slot { live: true, next: 0, applied: -1, in_round: false };
        Self { policy, slots: vec![slot; num_workers as usize], round: 0 }
    }

    /// A table restored from a checkpoint at `clock`: every worker live, at
    /// `clock`, with the updates of clocks `< clock` applied.
    pub fn resumed(policy: Policy, num_workers: u32, clock: u64) -> Self {
        let slot = Slot { live: true, next: clock, applied: clock as i64 - 1, in_round: false };
        let round = if policy == Policy::Sync { clock } else { 0 };
        Self { policy, slots: vec![slot; num_workers as usize], round }
    }

    /// The largest clock of any worker, live or not, and that worker.
    pub fn max_clock(&self) -> (u32, u64) {
        self.slots
            .iter()
            .enumerate()
            .map(|(w, s)| (w as u32, s.next))
            .max_by_key(|(_, c)| *c)
            .unwrap_or((0, 0))
    }

    /// Whether the value holds every update of clocks `< clock` that live
    /// workers will make (sync: rounds `0..clock` applied; others: every
    /// live worker has pushed `clock` clocks).
    pub fn cut_complete(&self, clock: u64) -> bool {
        self.reached(clock)
    }

    /// The table's policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of worker ids in the job.
    pub fn num_workers(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Sync: clocks applied so far. Other policies: the minimum live clock.
    pub fn applied_clock(&self) -> u64 {
        match self.policy {
            Policy::Sync => self.round,
            _ => self.min_live_clock().unwrap_or(0),
        }
    }

    /// The clock of `worker` (number of clocks it has pushed), if it exists.
    pub fn worker_clock(&self, worker: u32) -> Option<u64> {
        self.slots.get(worker as usize).map(|s| s.next)
    }

    /// Whether `worker` is live.
    pub fn is_live(&self, worker: u32) -> bool {
        self.slots.get(worker as usize).is_some_and(|s| s.live)
    }

    /// The smallest clock among live workers; `None` when no worker is live.
    pub fn min_live_clock(&self) -> Option<u64> {
        self.slots.iter().filter(|s| s.live).map(|s| s.next).min()
    }

    /// Per worker: the highest clock of that worker applied to the value, or -1.
    pub fn versions(&self) -> Vec<i64> {
        self.slots.iter().map(|s| s.applied).collect()
    }

    fn slot(&self, worker: u32) -> Result<&Slot, ClockError> {
        let slot = self
            .slots
            .get(worker as usize)
            .ok_or(ClockError::UnknownWorker { worker, num_workers: self.num_workers() })?;
        if !slot.live {
            return Err(ClockError::NotLive { worker });
        }
        Ok(slot)
    }

    /// Decides what a push of `worker` for `clock` does, without changing state.
    ///
    /// A clock below the worker's clock is a [`PushDecision::Duplicate`]: it
    /// was accepted before, so a retried push is applied exactly once.
    pub fn check_push(&self, worker: u32, clock: u64) -> Result<PushDecision, ClockError> {
        let slot = self.slot(worker)?;
        if clock < slot.next {
            return Ok(PushDecision::Duplicate);
        }
        if clock > slot.next {
            return Err(ClockError::PushGap { worker, expected: slot.next, got: clock });
        }
        match self.policy {
            Policy::Sync if clock != self.round => {
                Err(ClockError::PushAhead { worker, round: self.round, got: clock })
            }
            Policy::Sync => Ok(PushDecision::Accumulate),
            Policy::Ssp { .. } | Policy::Async => Ok(PushDecision::Apply),
        }
    }

    /// Records a push that [`check_push`](Self::check_push) accepted and whose
    /// data the caller has applied or accumulated. In sync, returns the round
    /// that this push completed, which the caller must apply before releasing
    /// the lock that guards this table.
    ///
    /// # Panics
    /// If the push was not accepted by `check_push` in the current state.
    pub fn commit_push(&mut self, worker: u32, clock: u64) -> Option<RoundComplete> {
        let decision = self.check_push(worker, clock);
        assert!(
            matches!(decision, Ok(PushDecision::Apply | PushDecision::Accumulate)),
            "commit_push without an accepted check_push: {decision:?}"
        );
        let slot = &mut self.slots[worker as usize];
        slot.next = clock + 1;
        match self.policy {
            Policy::Sync => {
                slot.in_round = true;
                self.complete_round()
            }
            _ => {
                slot.applied = clock as i64;
                None
            }
        }
    }

    /// Sync: whether an accepted push of `worker` would complete the round,
    /// that is, every other live worker has contributed. Changes nothing.
    pub fn push_completes_round(&self, worker: u32) -> bool {
        self.policy == Policy::Sync
            && self.slots.iter().enumerate().all(|(i, s)| i == worker as usize || !s.live || s.in_round)
    }

    /// Sync: closes the round if every live worker has contributed.
    fn complete_round(&mut self) -> Option<RoundComplete> {
        let contributors = self.slots.iter().filter(|s| s.in_round).count() as u32;
        let waiting = self.slots.iter().any(|s| s.live && !s.in_round);
        if contributors == 0 || waiting {
            return None;
        }
        let clock = self.round;
        for s in self.slots.iter_mut().filter(|s| s.in_round) {
            s.applied = clock as i64;
            s.in_round = false;
        }
        self.round += 1;
        Some(RoundComplete { clock, contributors })
    }

    /// Decides whether a pull of `worker` (or of an observer, `None`) for
    /// `clock` may read the current value now.
    ///
    /// Release rules, with `c` the pull's clock:
    /// - sync: the worker must pull exactly its own clock, and reads once
    ///   rounds `0..c` are applied;
    /// - ssp(s): reads once every live worker's clock is `>= c - s`;
    /// - async: always reads.
    ///
    /// Example, ssp(2) with live clocks `[5, 3, 4]`: pull(5) may read
    /// (`3 >= 5 - 2`), pull(6) waits for the worker at clock 3.
    pub fn check_pull(&self, worker: Option<u32>, clock: u64) -> Result<PullDecision, ClockError> {
        let Some(worker) = worker else { return Ok(PullDecision::Ready) };
        let slot = self.slot(worker)?;
        if clock > slot.next {
            return Err(ClockError::PullAhead { worker, completed: slot.next, got: clock });
        }
        let ready = match self.policy {
            Policy::Sync if clock < slot.next => {
                return Err(ClockError::PullBehind { worker, expected: slot.next, got: clock });
            }
            Policy::Sync => self.round >= clock,
            Policy::Ssp { staleness } => {
                self.min_live_clock().is_none_or(|min| min >= clock.saturating_sub(u64::from(staleness)))
            }
            Policy::Async => true,
        };
        Ok(if ready { PullDecision::Ready } else { PullDecision::Wait })
    }

    /// Whether every live worker has completed `clock` clocks (and, in sync,
    /// those rounds are applied).
    pub fn reached(&self, clock: u64) -> bool {
        match self.policy {
            Policy::Sync => self.round >= clock,
            _ => self.min_live_clock().is_none_or(|m| m >= clock),
        }
    }

    /// Removes `worker` from the live set: no release rule waits for it any
    /// more. Its accepted pushes stay applied (or, in sync, stay in the
    /// round). Returns the sync round this completes, if any. Leaving twice is
    /// a no-op.
    pub fn leave(&mut self, worker: u32) -> Result<Option<RoundComplete>, ClockError> {
        let num_workers = self.num_workers();
        let slot =
            self.slots.get_mut(worker as usize).ok_or(ClockError::UnknownWorker { worker, num_workers })?;
        if !slot.live {
            return Ok(None);
        }
        slot.live = false;
        Ok(match self.policy {
            Policy::Sync => self.complete_round(),
            _ => None,
        })
    }

    /// Makes `worker` live again and returns the clock it resumes at. A live
    /// worker keeps its clock; a worker that had left resumes at the current
    /// frontier (sync: the round in progress; others: the smallest live
    /// clock), or at its own clock if that is larger, so it never blocks
    /// others for clocks it missed and never pushes a clock twice.
    pub fn join(&mut self, worker: u32) -> Result<u64, ClockError> {
        let num_workers = self.num_workers();
        let frontier = match self.policy {
            Policy::Sync => self.round,
            _ => self.min_live_clock().unwrap_or(0),
        };
        let slot =
            self.slots.get_mut(worker as usize).ok_or(ClockError::UnknownWorker { worker, num_workers })?;
        if !slot.live {
            slot.live = true;
            // Never below its own clock: a clock it pushed before leaving
            // stays pushed, so a rejoin cannot apply it twice.
            slot.next = slot.next.max(frontier);
            // The clocks it skipped have no updates: the version vector shows
            // them as applied, so readers see no staleness that isn't there.
            let settled = match self.policy {
                Policy::Sync => frontier,
                _ => slot.next,
            };
            slot.applied = slot.applied.max(settled as i64 - 1);
        }
        Ok(slot.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PullDecision::*;
    use PushDecision::*;

    #[test]
    fn sync_round_completes_when_all_live_workers_pushed() {
        let mut t = ClockTable::new(Policy::Sync, 3);
        assert_eq!(t.check_pull(Some(0), 0), Ok(Ready));
        assert_eq!(t.check_push(0, 0), Ok(Accumulate));
        assert_eq!(t.commit_push(0, 0), None);
        assert_eq!(t.check_pull(Some(0), 1), Ok(Wait));
        assert_eq!(t.commit_push(1, 0), None);
        assert_eq!(t.versions(), vec![-1, -1, -1]);
        assert_eq!(t.commit_push(2, 0), Some(RoundComplete { clock: 0, contributors: 3 }));
        assert_eq!(t.versions(), vec![0, 0, 0]);
        assert_eq!(t.check_pull(Some(0), 1), Ok(Ready));
        assert_eq!(t.applied_clock(), 1);
    }

    #[test]
    fn sync_rejects_out_of_order_clocks() {
        let mut t = ClockTable::new(Policy::Sync, 2);
        assert_eq!(t.check_push(0, 1), Err(ClockError::PushGap { worker: 0, expected: 0, got: 1 }));
        t.commit_push(0, 0);
        assert_eq!(t.check_push(0, 0), Ok(Duplicate));
        assert_eq!(t.check_push(0, 1), Err(ClockError::PushAhead { worker: 0, round: 0, got: 1 }));
        assert_eq!(t.check_pull(Some(0), 0), Err(ClockError::PullBehind { worker: 0, expected: 1, got: 0 }));
        assert_eq!(t.check_pull(Some(1), 1), Err(ClockError::PullAhead { worker: 1, completed: 0, got: 1 }));
        assert_eq!(t.check_push(2, 0), Err(ClockError::UnknownWorker { worker: 2, num_workers: 2 }));
    }

    #[test]
    fn sync_leave_completes_round_with_remaining_contributors() {
        let mut t = ClockTable::new(Policy::Sync, 3);
        t.commit_push(0, 0);
        t.commit_push(1, 0);
        assert_eq!(t.leave(2), Ok(Some(RoundComplete { clock: 0, contributors: 2 })));
        assert_eq!(t.versions(), vec![0, 0, -1]);
        assert_eq!(t.check_push(2, 1), Err(ClockError::NotLive { worker: 2 }));
        // Later rounds need only the two live workers.
        t.commit_push(0, 1);
        assert_eq!(t.commit_push(1, 1), Some(RoundComplete { clock: 1, contributors: 2 }));
        // A worker that contributed and then left still counts for its round.
        t.commit_push(0, 2);
        assert_eq!(t.leave(0), Ok(None));
        assert_eq!(t.commit_push(1, 2), Some(RoundComplete { clock: 2, contributors: 2 }));
        // Rejoin resumes at the round in progress.
        assert_eq!(t.join(2), Ok(3));
        assert_eq!(t.check_push(2, 3), Ok(Accumulate));
    }

    #[test]
    fn sync_rejoin_keeps_a_pending_contribution() {
        let mut t = ClockTable::new(Policy::Sync, 2);
        t.commit_push(0, 0);
        assert_eq!(t.leave(0), Ok(None), "worker 1 has not pushed round 0");
        assert_eq!(t.join(0), Ok(1), "worker 0 already pushed clock 0");
        assert_eq!(t.check_push(0, 0), Ok(Duplicate));
        assert_eq!(t.commit_push(1, 0), Some(RoundComplete { clock: 0, contributors: 2 }));
    }

    #[test]
    fn ssp_bounds_staleness() {
        let mut t = ClockTable::new(Policy::Ssp { staleness: 2 }, 2);
        for c in 0..3 {
            assert_eq!(t.check_pull(Some(0), c), Ok(Ready));
            assert_eq!(t.check_push(0, c), Ok(Apply));
            t.commit_push(0, c);
        }
        // Worker 0 at clock 3, worker 1 at 0: pull(3) needs min >= 1.
        assert_eq!(t.check_pull(Some(0), 3), Ok(Wait));
        assert_eq!(t.check_pull(Some(0), 2), Ok(Ready));
        t.commit_push(1, 0);
        assert_eq!(t.check_pull(Some(0), 3), Ok(Ready));
        assert_eq!(t.versions(), vec![2, 0]);
    }

    #[test]
    fn ssp_zero_is_lockstep() {
        let mut t = ClockTable::new(Policy::Ssp { staleness: 0 }, 2);
        t.commit_push(0, 0);
        assert_eq!(t.check_pull(Some(0), 1), Ok(Wait));
        t.commit_push(1, 0);
        assert_eq!(t.check_pull(Some(0), 1), Ok(Ready));
    }

    #[test]
    fn async_never_waits() {
        let mut t = ClockTable::new(Policy::Async, 2);
        for c in 0..100 {
            assert_eq!(t.check_pull(Some(0), c), Ok(Ready));
            t.commit_push(0, c);
        }
        assert_eq!(t.versions(), vec![99, -1]);
        assert_eq!(t.check_push(0, 5), Ok(Duplicate));
    }

    #[test]
    fn observers_never_wait() {
        let t = ClockTable::new(Policy::Sync, 2);
        assert_eq!(t.check_pull(None, 1000), Ok(Ready));
    }

    #[test]
    fn ssp_leave_releases_waiters_and_rejoin_starts_at_frontier() {
        let mut t = ClockTable::new(Policy::Ssp { staleness: 1 }, 2);
        for c in 0..4 {
            t.commit_push(0, c);
        }
        assert_eq!(t.check_pull(Some(0), 4), Ok(Wait));
        assert_eq!(t.leave(1), Ok(None));
        assert_eq!(t.check_pull(Some(0), 4), Ok(Ready));
        assert_eq!(t.join(1), Ok(4));
        assert_eq!(t.check_push(1, 4), Ok(Apply));
    }
}
