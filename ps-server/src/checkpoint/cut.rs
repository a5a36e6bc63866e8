//! Capturing one tensor part at a checkpoint's clock: a pure state machine
//! driven by the part's own updates, without I/O.
//!
//! The snapshot of cut `c` must hold exactly the updates of clocks `< c`:
//! - sync: updates arrive as whole rounds, so the part is captured the moment
//!   round `c - 1` is applied (or at once if that already happened and round
//!   `c` has not);
//! - ssp and async: a fast worker may push clock `c` or later before a slow
//!   one has pushed `c - 1`. The first such push forks a *shadow* (values and
//!   optimizer state as they are before it); from then on updates of clocks
//!   `< c` go to both the live copy and the shadow, later ones only to the
//!   live copy. Once every live worker has pushed clock `c - 1` the shadow is
//!   the snapshot.
//!
//! Copies are copy-on-write (shared arrays, [`crate::array`]): capturing is
//! O(1) under the part's lock; the first update after it pays for one copy
//! of what it changes.

use ndarray::ArcArray1;

use crate::optim::Optimizer;
use crate::sync::{ClockTable, Policy};

/// Identifies one checkpoint: its clock and directory name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CutId {
    /// The snapshot holds the updates of clocks `< clock`.
    pub clock: u64,
    /// Directory name of the checkpoint.
    pub name: String,
}

/// A tensor part as of a cut: never changed after capture.
#[derive(Clone, Debug)]
pub struct PartSnapshot {
    /// The cut.
    pub cut: CutId,
    /// The part's values, shared with the part until it next changes them.
    pub values: ArcArray1<f32>,
    /// The part's optimizer (hyper-parameters, state, step count).
    pub optimizer: Optimizer,
}

/// Why a cut cannot be taken on a part: its clock has already been passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLate {
    /// The worker that is past the cut's clock (sync: any, reported as the first).
    pub worker: u32,
    /// That worker's clock (sync: rounds applied).
    pub clock: u64,
}

#[derive(Debug)]
struct Pending {
    cut: CutId,
    /// Values and optimizer without any update of clock `>= cut.clock`;
    /// forked at the first such update (ssp and async only).
    shadow: Option<(ArcArray1<f32>, Optimizer)>,
}

/// The cuts of one tensor part that are not yet captured, and the snapshots
/// captured but not yet collected.
#[derive(Debug, Default)]
pub struct PartCuts {
    pending: Vec<Pending>,
    captured: Vec<PartSnapshot>,
    /// Shadow bytes as last reported by [`take_shadow_change`](Self::take_shadow_change).
    reported: usize,
}

impl PartCuts {
    /// Registers `cut`. Fails when an update of clock `>= cut.clock` has
    /// already been applied: the snapshot could no longer be exact. Captures
    /// at once when the part is exactly at the cut.
    pub fn register(
        &mut self,
        cut: CutId,
        clocks: &ClockTable,
        values: &ArcArray1<f32>,
        optimizer: &Optimizer,
    ) -> Result<(), TooLate> {
        match clocks.policy() {
            Policy::Sync { .. } if clocks.applied_clock() > cut.clock => {
                return Err(TooLate { worker: 0, clock: clocks.applied_clock() });
            }
            Policy::Sync { .. } => {}
            _ => {
                let (worker, clock) = clocks.max_clock();
                if clock > cut.clock {
                    return Err(TooLate { worker, clock });
                }
            }
        }
        self.pending.push(Pending { cut, shadow: None });
        self.settle(clocks, values, optimizer);
        Ok(())
    }

    /// Whether no cut waits for this part.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Call before applying an update of `clock` to the live copy (ssp,
    /// async): forks a shadow for every cut this update must not reach.
    pub fn before_apply(&mut self, clock: u64, values: &ArcArray1<f32>, optimizer: &Optimizer) {
        for p in self.pending.iter_mut().filter(|p| clock >= p.cut.clock && p.shadow.is_none()) {
            p.shadow = Some((values.clone(), optimizer.clone()));
        }
    }

    /// The shadows an update of `clock` must also be applied to: those of
    /// cuts above `clock`.
    pub fn shadows_for(&mut self, clock: u64) -> impl Iterator<Item = (&mut ArcArray1<f32>, &mut Optimizer)> {
        self.pending
            .iter_mut()
            .filter(move |p| clock < p.cut.clock)
            .filter_map(|p| p.shadow.as_mut().map(|(v, o)| (v, o)))
    }

    /// Call after every change of the part's clocks: captures each cut the
    /// part has now completed.
    pub fn settle(&mut self, clocks: &ClockTable, values: &ArcArray1<f32>, optimizer: &Optimizer) {
        let mut i = 0;
        while i < self.pending.len() {
            let clock = self.pending[i].cut.clock;
            let complete = match clocks.policy() {
                // Rounds are applied one at a time and this runs after each.
                Policy::Sync { .. } => clocks.applied_clock() == clock,
                _ => clocks.cut_complete(clock),
            };
            if complete {
                let p = self.pending.remove(i);
                let (values, optimizer) = p.shadow.unwrap_or_else(|| (values.clone(), optimizer.clone()));
                self.captured.push(PartSnapshot { cut: p.cut, values, optimizer });
            } else {
                i += 1;
            }
        }
    }

    /// Forgets cut `name` (pending or captured): undoes a registration that
    /// failed on another part.
    pub fn cancel(&mut self, name: &str) {
        self.pending.retain(|p| p.cut.name != name);
        self.captured.retain(|s| s.cut.name != name);
    }

    /// The snapshots captured since the last call.
    pub fn take_captured(&mut self) -> Vec<PartSnapshot> {
        std::mem::take(&mut self.captured)
    }

    /// How [`shadow_bytes`](Self::shadow_bytes) changed since the last call
    /// (the first call: since the part was created), so a shard can keep a
    /// running total of the bytes its shadows hold.
    pub fn take_shadow_change(&mut self) -> i64 {
        let now = self.shadow_bytes();
        let change = now as i64 - self.reported as i64;
        self.reported = now;
        change
    }

    /// Bytes held by shadows (extra copies kept for pending cuts).
    pub fn shadow_bytes(&self) -> usize {
        self.pending
            .iter()
            .filter_map(|p| p.shadow.as_ref())
            .map(|(v, o)| v.len() * 4 + o.state_bytes())
            .sum()
    }
}
