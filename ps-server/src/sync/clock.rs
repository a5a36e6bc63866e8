//! Per-tensor clocks, release rules and exactly-once bookkeeping, as a
//! state machine: [`ClockTable::step`] takes one [`Event`] and returns the
//! [`Ready`] that follows from it.

use ps_proto::Policy;

/// Names one waiting pull, so that it is released by name rather than by
/// waking every waiter to look again.
pub type PullId = u64;

/// What happened to a tensor part, as the table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `worker` pushed its gradient of `clock`. `complete` is false for a
    /// piece of a sync push whose other pieces have not all arrived: the
    /// push is checked but not counted yet.
    Push {
        /// The pushing worker.
        worker: u32,
        /// The clock of the gradient.
        clock: u64,
        /// Whether the whole push is now in.
        complete: bool,
    },
    /// The update the last [`Ready::update`] asked for is in the values now.
    Applied,
    /// Pull `id` of `worker` (`None`: an observer) wants to read at `clock`.
    Pull {
        /// The pull's name, for its release.
        id: PullId,
        /// The reader, `None` for an observer that never waits.
        worker: Option<u32>,
        /// The clock it reads at.
        clock: u64,
    },
    /// Pull `id` no longer waits (its request ended).
    Cancel {
        /// The pull.
        id: PullId,
    },
    /// `worker` joins (again).
    Join {
        /// The worker.
        worker: u32,
        /// A worker joining again after it left may give up the one clock
        /// it could not finish: it resumes at `skip_to` if that is one
        /// clock past where it would resume (the clock's round closes
        /// without it). 0, or any other value, skips nothing.
        skip_to: u64,
    },
    /// `worker` leaves, or is made to.
    Leave {
        /// The worker.
        worker: u32,
    },
    /// `worker` read the current value (a released pull took its
    /// snapshot): its next push is computed from this value. Sets the
    /// round a backup-workers push counts for and the base of a push's
    /// staleness τ.
    Read {
        /// The reader.
        worker: u32,
    },
}

/// What to do with a push that passed the clock checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushDecision {
    /// Apply the gradient to the parameters now (ssp, async).
    Apply,
    /// Add the gradient to the round's aggregation buffer (sync).
    Accumulate,
    /// The push was already counted (a client retry): change nothing, acknowledge.
    Duplicate,
    /// Sync with backup workers: the round the gradient was computed for
    /// closed without it (or it already gave one). The worker's clock moves
    /// on; the gradient is discarded and acknowledged as dropped.
    Dropped,
}

/// Whether a pull may read now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullDecision {
    /// The release rule holds: read the current value.
    Ready,
    /// The pull waits; a later [`Ready::release`] or [`Ready::refuse`] names it.
    Wait,
}

/// A sync round that just became complete: apply the aggregate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundComplete {
    /// The round: the clock whose updates are aggregated (with backup
    /// workers, the round's number, which worker clocks need not match).
    pub clock: u64,
    /// How many workers contributed (the divisor of a mean).
    pub contributors: u32,
}

/// An update of the values that the table has counted and readers must not
/// see before it is applied: apply it, then step [`Event::Applied`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Apply `worker`'s gradient of `clock` (ssp, async).
    Push {
        /// The pushing worker.
        worker: u32,
        /// The gradient's clock.
        clock: u64,
        /// Its staleness τ: updates applied to the part between the
        /// worker's last read and this push.
        staleness: u64,
    },
    /// Apply the aggregate of a completed sync round.
    Round(RoundComplete),
}

/// What follows from one event. Every field is decided once, by the step
/// that returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// For a push: what to do with its gradient.
    pub push: Option<PushDecision>,
    /// An update to apply to the values, then step [`Event::Applied`].
    /// Until then pulls wait and no push, join or leave is taken.
    pub update: Option<Update>,
    /// For a pull: read now, or wait to be released.
    pub pull: Option<PullDecision>,
    /// For a join: the clock the worker resumes at.
    pub resumed_at: Option<u64>,
    /// Waiting pulls whose rule holds now: each reads the current value.
    pub release: Vec<PullId>,
    /// Waiting pulls that can never be released, with the reason.
    pub refuse: Vec<(PullId, ClockError)>,
    /// The readable frontier ([`ClockTable::applied_clock`]) if this step
    /// may have moved it: checkpoint cuts at or below it are due.
    pub frontier: Option<u64>,
}

/// Why the table refused an event. State is unchanged after an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The worker id is not part of the job.
    #[error(
        "unknown worker {worker}: this job's worker ids are 0 to {}: give each worker an id below \
         {num_workers} (the shards' --workers, or --max-workers for workers that join later)",
        num_workers.saturating_sub(1)
    )]
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
    /// A sync pull for a clock whose exact snapshot is gone: the worker
    /// pushed it and its round's update is applied.
    #[error(
        "worker {worker} pulled clock {got} in sync mode but has already pushed it and its round is applied; \
         pull clock {expected}"
    )]
    PullBehind {
        /// The worker's id.
        worker: u32,
        /// What was expected.
        expected: u64,
        /// What was received.
        got: u64,
    },
    /// A push, join or leave arrived while an update was still to be
    /// applied: the caller must step [`Event::Applied`] first.
    #[error("an update of this tensor part is still being applied")]
    UpdatePending,
}

#[derive(Clone, Debug)]
struct Slot {
    live: bool,
    /// Clocks pushed and counted so far: the worker's clock.
    next: u64,
    /// Highest clock of this worker applied to the value, -1 for none.
    applied: i64,
    /// Sync only: contributed to the round in progress.
    in_round: bool,
    /// Sync with backup workers: the round whose values the worker last
    /// read; its next push counts only for that round.
    read_round: u64,
    /// [`ClockTable::updates`] at the worker's last read: the base of a
    /// push's staleness τ.
    read_updates: u64,
}

/// A pull waiting for its release rule.
#[derive(Clone, Debug)]
struct Waiter {
    id: PullId,
    worker: u32,
    clock: u64,
}

/// Clocks of one tensor part under one policy.
///
/// Invariants: a worker's pushes are counted only in clock order (`next`);
/// a push for a clock below `next` is a duplicate; in sync, `round` is the
/// number of applied rounds and, without backup workers, every live
/// worker's `next` is `round` or `round + 1` (with backup workers, worker
/// clocks and rounds move apart: a worker's clock counts its pushes, kept
/// or dropped). While an [`Update`] is pending, the version vector and the
/// release rules still describe the values without it.
#[derive(Clone, Debug)]
pub struct ClockTable {
    policy: Policy,
    slots: Vec<Slot>,
    /// Sync: number of rounds applied. Others: unused (0).
    round: u64,
    /// Updates applied to the values (pushes, or rounds).
    updates: u64,
    /// The update counted but not yet in the values.
    pending: Option<Update>,
    /// Pulls waiting for their release rule, in arrival order.
    waiting: Vec<Waiter>,
}

impl ClockTable {
    /// A table for workers `0..num_workers`, all live at clock 0.
    pub fn new(policy: Policy, num_workers: u32) -> Self {
        Self::resumed(policy, num_workers, 0)
    }

    /// A table restored from a checkpoint at `clock`: every worker live, at
    /// `clock`, with the updates of clocks `< clock` applied.
    pub fn resumed(policy: Policy, num_workers: u32, clock: u64) -> Self {
        let round = if policy.is_sync() { clock } else { 0 };
        let slot = Slot {
            live: true,
            next: clock,
            applied: clock as i64 - 1,
            in_round: false,
            read_round: round,
            read_updates: 0,
        };
        let slots = vec![slot; num_workers as usize];
        Self { policy, slots, round, updates: 0, pending: None, waiting: Vec::new() }
    }

    /// Takes one event and returns what follows from it. On error nothing
    /// changed.
    pub fn step(&mut self, event: Event) -> Result<Ready, ClockError> {
        match event {
            Event::Push { worker, clock, complete } => self.push(worker, clock, complete),
            Event::Applied => Ok(self.applied()),
            Event::Pull { id, worker, clock } => self.pull(id, worker, clock),
            Event::Cancel { id } => {
                self.waiting.retain(|w| w.id != id);
                Ok(Ready::default())
            }
            Event::Join { worker, skip_to } => self.join(worker, skip_to),
            Event::Leave { worker } => self.leave(worker),
            Event::Read { worker } => {
                let (round, updates) = (self.round, self.updates);
                if let Some(slot) = self.slots.get_mut(worker as usize) {
                    slot.read_round = round;
                    slot.read_updates = updates;
                }
                Ok(Ready::default())
            }
        }
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

    /// Sync: rounds applied so far. Other policies: the minimum live clock.
    pub fn applied_clock(&self) -> u64 {
        match self.policy {
            Policy::Sync { .. } => self.round,
            _ => self.min_live_clock().unwrap_or(0),
        }
    }

    /// The clock of `worker` (number of clocks it has pushed), if it exists.
    pub fn worker_clock(&self, worker: u32) -> Option<u64> {
        self.slots.get(worker as usize).map(|s| s.next)
    }

    /// The lowest clock `worker` may still pull here: sync, the round in
    /// progress (a clock the worker pushed reads exactly only while its
    /// round is open); with backup workers, the worker's own clock; other
    /// policies, 0 (any clock it reached).
    pub fn read_floor(&self, worker: u32) -> u64 {
        match self.policy {
            Policy::Sync { backup: 0 } => self.round,
            Policy::Sync { .. } => self.worker_clock(worker).unwrap_or(0),
            _ => 0,
        }
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

    /// The update counted but not yet applied, if any.
    pub fn pending(&self) -> Option<Update> {
        self.pending
    }

    /// The pulls waiting for their release rule.
    pub fn waiting(&self) -> impl Iterator<Item = PullId> + '_ {
        self.waiting.iter().map(|w| w.id)
    }

    /// Whether every live worker has completed `clock` clocks and their
    /// updates are in the values.
    pub fn reached(&self, clock: u64) -> bool {
        match self.policy {
            Policy::Sync { .. } => self.round >= clock,
            _ => self.pending.is_none() && self.min_live_clock().is_none_or(|m| m >= clock),
        }
    }

    /// The live workers whose pushes a pull at `clock` still waits for:
    /// sync, those that have not pushed the round in progress; ssp(s),
    /// those whose clock is below `clock - s`; async, none. Empty while an
    /// update is pending (the pull waits for that alone).
    pub fn holding_back(&self, clock: u64) -> Vec<u32> {
        if self.pending.is_some() {
            return Vec::new();
        }
        let waits_for = |s: &Slot| match self.policy {
            Policy::Sync { backup: 0 } => self.round < clock && !s.in_round && s.next <= self.round,
            Policy::Sync { .. } => !s.in_round,
            Policy::Ssp { staleness, .. } => s.next < clock.saturating_sub(u64::from(staleness)),
            Policy::Async { .. } => false,
        };
        (0..self.num_workers())
            .filter(|w| self.slots[*w as usize].live && waits_for(&self.slots[*w as usize]))
            .collect()
    }

    /// The live workers a barrier at `clock` ([`reached`](Self::reached))
    /// still waits for: sync, as a pull at `clock`; ssp and async, those
    /// that have not completed `clock` clocks. Empty while an update is
    /// pending.
    pub fn behind_barrier(&self, clock: u64) -> Vec<u32> {
        if matches!(self.policy, Policy::Sync { .. }) || self.pending.is_some() {
            return self.holding_back(clock);
        }
        (0..self.num_workers())
            .filter(|w| self.slots[*w as usize].live && self.slots[*w as usize].next < clock)
            .collect()
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

    fn idle(&self) -> Result<(), ClockError> {
        match self.pending {
            Some(_) => Err(ClockError::UpdatePending),
            None => Ok(()),
        }
    }

    /// A push of `worker` for `clock`. A clock below the worker's clock is
    /// a [`PushDecision::Duplicate`]: it was counted before, so a retried
    /// push is applied exactly once.
    fn push(&mut self, worker: u32, clock: u64, complete: bool) -> Result<Ready, ClockError> {
        self.idle()?;
        let slot = self.slot(worker)?;
        if clock < slot.next {
            return Ok(Ready { push: Some(PushDecision::Duplicate), ..Ready::default() });
        }
        if clock > slot.next {
            return Err(ClockError::PushGap { worker, expected: slot.next, got: clock });
        }
        let decision = match self.policy {
            Policy::Sync { backup: 0 } if clock != self.round => {
                return Err(ClockError::PushAhead { worker, round: self.round, got: clock });
            }
            Policy::Sync { backup: 0 } => PushDecision::Accumulate,
            // With backup workers a push counts for the round its worker
            // read, if that round is still open and has none of its pushes.
            Policy::Sync { .. } if slot.in_round || slot.read_round != self.round => PushDecision::Dropped,
            Policy::Sync { .. } => PushDecision::Accumulate,
            Policy::Ssp { .. } | Policy::Async { .. } => PushDecision::Apply,
        };
        let mut ready = Ready { push: Some(decision), ..Ready::default() };
        if !complete {
            return Ok(ready);
        }
        let updates = self.updates;
        let slot = &mut self.slots[worker as usize];
        slot.next = clock + 1;
        ready.update = match decision {
            PushDecision::Dropped => {
                // Settled: this clock of the worker will never be applied.
                slot.applied = slot.applied.max(clock as i64);
                None
            }
            PushDecision::Accumulate => {
                slot.in_round = true;
                self.close_round()
            }
            _ => Some(Update::Push { worker, clock, staleness: updates - slot.read_updates }),
        };
        self.pending = ready.update;
        Ok(ready)
    }

    /// Sync: the round to apply if every live worker has contributed or,
    /// with b backup workers, the first `min(W - b, live)` have.
    fn close_round(&self) -> Option<Update> {
        let contributors = self.slots.iter().filter(|s| s.in_round).count() as u32;
        let complete = match self.policy.backup_workers() {
            0 => !self.slots.iter().any(|s| s.live && !s.in_round && s.next <= self.round),
            backup => contributors >= self.quorum(backup),
        };
        if contributors == 0 || !complete {
            return None;
        }
        Some(Update::Round(RoundComplete { clock: self.round, contributors }))
    }

    /// With `backup` workers: the gradients a round closes on, `W - b`, or
    /// every live worker's if fewer are live (at least 1).
    fn quorum(&self, backup: u32) -> u32 {
        let live = self.slots.iter().filter(|s| s.live).count() as u32;
        self.num_workers().saturating_sub(backup).min(live).max(1)
    }

    /// The pending update is in the values: versions show it, and waiting
    /// pulls whose rule now holds are released.
    fn applied(&mut self) -> Ready {
        match self.pending.take() {
            None => return Ready::default(),
            Some(Update::Push { worker, clock, .. }) => {
                if let Some(slot) = self.slots.get_mut(worker as usize) {
                    slot.applied = slot.applied.max(clock as i64);
                }
            }
            Some(Update::Round(_)) => {
                // A contributor's clock in the round is its last pushed one
                // (the round's clock, without backup workers).
                for s in self.slots.iter_mut().filter(|s| s.in_round) {
                    s.applied = s.next as i64 - 1;
                    s.in_round = false;
                }
                self.round += 1;
            }
        }
        self.updates += 1;
        let mut ready = Ready { frontier: Some(self.applied_clock()), ..Ready::default() };
        self.release_into(&mut ready);
        ready
    }

    /// Whether `worker` may read at `clock` now, `Err` when it never will.
    ///
    /// Release rules, with `c` the pull's clock:
    /// - sync: the worker pulls its own clock and reads once rounds `0..c`
    ///   are applied; it may also pull the clock it just pushed while that
    ///   round is still open (the values are still exactly those of `c`).
    ///   With backup workers, it pulls exactly its own clock and reads once
    ///   the round its last push counted for is applied (at once after a
    ///   dropped push);
    /// - ssp(s): reads once every live worker's clock is `>= c - s`;
    /// - async: always reads.
    ///
    /// And under every policy, not while an update is pending: it goes first.
    ///
    /// Example, ssp(2) with live clocks `[5, 3, 4]`: pull(5) may read
    /// (`3 >= 5 - 2`), pull(6) waits for the worker at clock 3.
    fn may_read(&self, worker: u32, clock: u64) -> Result<bool, ClockError> {
        let slot = self.slot(worker)?;
        if clock > slot.next {
            return Err(ClockError::PullAhead { worker, completed: slot.next, got: clock });
        }
        let rule = match self.policy {
            // A clock the worker already pushed is still exact while its
            // round is open: nothing of it is in the values yet. A worker
            // killed after its step reached some shards but not others
            // resumes by reading it again.
            Policy::Sync { backup: 0 } if clock < slot.next && clock < self.round => {
                return Err(ClockError::PullBehind { worker, expected: slot.next, got: clock });
            }
            Policy::Sync { backup: 0 } => self.round >= clock,
            Policy::Sync { .. } if clock < slot.next => {
                return Err(ClockError::PullBehind { worker, expected: slot.next, got: clock });
            }
            Policy::Sync { .. } => !slot.in_round,
            Policy::Ssp { staleness, .. } => {
                self.min_live_clock().is_none_or(|min| min >= clock.saturating_sub(u64::from(staleness)))
            }
            Policy::Async { .. } => true,
        };
        Ok(rule && self.pending.is_none())
    }

    fn pull(&mut self, id: PullId, worker: Option<u32>, clock: u64) -> Result<Ready, ClockError> {
        let Some(worker) = worker else {
            return Ok(Ready { pull: Some(PullDecision::Ready), ..Ready::default() });
        };
        if self.may_read(worker, clock)? {
            return Ok(Ready { pull: Some(PullDecision::Ready), ..Ready::default() });
        }
        self.waiting.push(Waiter { id, worker, clock });
        Ok(Ready { pull: Some(PullDecision::Wait), ..Ready::default() })
    }

    /// Moves the waiting pulls whose rule now holds, or never will, into `ready`.
    fn release_into(&mut self, ready: &mut Ready) {
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &self.waiting[i];
            match self.may_read(w.worker, w.clock) {
                Ok(false) => i += 1,
                Ok(true) => ready.release.push(self.waiting.remove(i).id),
                Err(e) => ready.refuse.push((self.waiting.remove(i).id, e)),
            }
        }
    }

    /// Removes `worker` from the live set: no release rule waits for it any
    /// more, and its own waiting pulls are refused. Its counted pushes stay
    /// applied (or, in sync, stay in the round). May complete the sync
    /// round. Leaving twice is a no-op.
    fn leave(&mut self, worker: u32) -> Result<Ready, ClockError> {
        self.idle()?;
        let num_workers = self.num_workers();
        let slot =
            self.slots.get_mut(worker as usize).ok_or(ClockError::UnknownWorker { worker, num_workers })?;
        if !slot.live {
            return Ok(Ready::default());
        }
        slot.live = false;
        let mut ready = Ready::default();
        if self.policy.is_sync() {
            ready.update = self.close_round();
            self.pending = ready.update;
            if ready.update.is_none() {
                self.skip_empty_round();
            }
        }
        ready.frontier = Some(self.applied_clock());
        self.release_into(&mut ready);
        Ok(ready)
    }

    /// Makes `worker` live again; [`Ready::resumed_at`] is the clock it
    /// resumes at. A live worker keeps its clock; a worker that had left
    /// resumes at the current frontier (sync: the round in progress;
    /// others: the smallest live clock), or at its own clock if that is
    /// larger, so it never blocks others for clocks it missed and never
    /// pushes a clock twice; or one clock later, if it asks to skip the
    /// one it could not finish (sync: that round closes without it).
    fn join(&mut self, worker: u32, skip_to: u64) -> Result<Ready, ClockError> {
        self.idle()?;
        let num_workers = self.num_workers();
        let frontier = match self.policy {
            Policy::Sync { .. } => self.round,
            _ => self.min_live_clock().unwrap_or(0),
        };
        let (round, updates) = (self.round, self.updates);
        let slot =
            self.slots.get_mut(worker as usize).ok_or(ClockError::UnknownWorker { worker, num_workers })?;
        if !slot.live {
            slot.live = true;
            // Never below its own clock: a clock it pushed before leaving
            // stays pushed, so a rejoin cannot apply it twice.
            slot.next = slot.next.max(frontier);
            let skipped = skip_to == slot.next + 1;
            if skipped {
                slot.next = skip_to;
            }
            // The clocks it skipped have no updates: the version vector shows
            // them as applied, so readers see no staleness that isn't there.
            let settled = match self.policy {
                Policy::Sync { backup: 0 } if skipped => skip_to,
                Policy::Sync { backup: 0 } => frontier,
                _ => slot.next - u64::from(slot.in_round),
            };
            slot.applied = slot.applied.max(settled as i64 - 1);
            slot.read_round = round;
            slot.read_updates = updates;
        }
        let mut ready = Ready { resumed_at: Some(slot.next), ..Ready::default() };
        if self.skip_empty_round() {
            ready.frontier = Some(self.applied_clock());
            self.release_into(&mut ready);
        }
        Ok(ready)
    }

    /// Sync without backup workers: when every live worker gave up the
    /// round in progress and none contributed to it, the round passes with
    /// no update, so that no one waits for it forever. Says whether it did.
    fn skip_empty_round(&mut self) -> bool {
        let round = self.round;
        let given_up = self.slots.iter().filter(|s| s.live).all(|s| s.next > round);
        let anyone = self.slots.iter().any(|s| s.live);
        let contributed = self.slots.iter().any(|s| s.in_round);
        if self.policy != (Policy::Sync { backup: 0 }) || !anyone || contributed || !given_up {
            return false;
        }
        self.round += 1;
        true
    }
}

#[cfg(test)]
mod tests;
