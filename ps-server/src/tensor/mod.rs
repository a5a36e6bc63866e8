//! One tensor part held by a shard: its values, optimizer state, clocks and
//! aggregation buffer, updated atomically under the caller's lock. A sync
//! round's gradients are summed in worker-id order (`round.rs`), so a job
//! run twice gives bit-identical values.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::ArcArray1;
use tokio::sync::oneshot;

use crate::array;
use crate::checkpoint::cut::TooLate;
use crate::checkpoint::{CutId, PartCuts, PartSnapshot};
use crate::config::Aggregation;
use crate::error::PsError;
use crate::init::Init;
pub use crate::meta::TensorMeta;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::readers::Readers;
use crate::sync::{
    ClockError, ClockTable, Delivered, Event, Policy, PullDecision, PullId, PushDecision, Ready,
    RoundComplete, Update,
};

mod round;

use round::RoundSum;

/// A gradient whose chunk sequence has been validated and decoded: exactly
/// the part's elements, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradient {
    /// The elements.
    pub values: Vec<f32>,
}

/// A consistent read of a tensor part: values and the version vector that describes them.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The values; shared with the part (not copied), never mutated after
    /// the snapshot is taken: an update of the part copies them first.
    pub values: ArcArray1<f32>,
    /// Per worker, the highest clock applied to `values` (-1 for none).
    pub versions: Vec<i64>,
    /// How long the reader waited for the release rule.
    pub waited: std::time::Duration,
    /// Sync: the rounds applied to `values`; other policies: 0.
    pub rounds: u64,
}

/// The state of one tensor part. Not synchronised: the shard wraps it in a lock.
#[derive(Debug)]
pub struct TensorPart {
    meta: TensorMeta,
    /// Shared copy-on-write with snapshots, shadows and pull replies.
    values: ArcArray1<f32>,
    optimizer: Optimizer,
    clocks: ClockTable,
    aggregation: Aggregation,
    /// Sync only: the sum of the round's gradients so far, folded in
    /// worker-id order, and the gradients that arrived before their turn.
    round: RoundSum,
    /// Sync only: the pieces of unfinished pushes that have arrived.
    delivered: Delivered,
    /// Checkpoints waiting for this part to reach their clock.
    cuts: PartCuts,
    /// The pull replies reading `values` (this allocation of them).
    readers: Arc<Readers>,
    /// Updates that copied `values` since [`take_copies`](Self::take_copies).
    copies: u64,
    /// The gradient of the pending ssp/async update ([`ClockTable::pending`]).
    pending_grad: Option<Vec<f32>>,
    /// Wakes each waiting pull when a step releases or refuses it.
    wakers: HashMap<PullId, oneshot::Sender<Result<(), ClockError>>>,
}

/// An empty round sum for a part described by `meta`, with `num_workers` workers.
fn round_sum(meta: &TensorMeta, num_workers: u32) -> RoundSum {
    RoundSum::new(meta.len as usize, meta.piece_len as usize, num_workers)
}

/// Applies `scale * grad` to `values` with `optimizer`, as one step.
fn apply_gradient(values: &mut ArcArray1<f32>, optimizer: &mut Optimizer, grad: &[f32], scale: f32) {
    optimizer.step(array::make_mut(values), grad, scale);
}

/// The values to update in place: `values` itself when nothing else holds
/// them, else a copy. A copy has no readers yet, so `readers` starts over
/// for it, and the replies still reading the old values stop holding
/// updates back.
/// Counts the copy in `copies`.
fn values_to_update<'a>(
    values: &'a mut ArcArray1<f32>,
    readers: &mut Arc<Readers>,
    copies: &mut u64,
) -> &'a mut [f32] {
    if !values.is_unique() {
        std::mem::take(readers).retire();
        *copies += 1;
    }
    array::make_mut(values)
}

impl TensorPart {
    /// A fresh part with initial values, optimizer state and all workers live at clock 0.
    pub fn new(
        meta: TensorMeta,
        init: Init,
        optimizer: OptimizerConfig,
        num_workers: u32,
        aggregation: Aggregation,
    ) -> Self {
        let len = meta.len as usize;
        let round = round_sum(&meta, num_workers);
        Self {
            values: array::shared(init.fill(meta.offset, len)),
            optimizer: Optimizer::new(optimizer, len),
            clocks: ClockTable::new(meta.policy, num_workers),
            meta,
            aggregation,
            round,
            delivered: Delivered::default(),
            cuts: PartCuts::default(),
            readers: Arc::default(),
            copies: 0,
            pending_grad: None,
            wakers: HashMap::new(),
        }
    }

    /// A part restored from a checkpoint at `clock`: every worker live and
    /// resuming at `clock`.
    pub fn restored(
        meta: TensorMeta,
        values: Vec<f32>,
        optimizer: Optimizer,
        num_workers: u32,
        aggregation: Aggregation,
        clock: u64,
    ) -> Self {
        let round = round_sum(&meta, num_workers);
        Self {
            values: array::shared(values),
            optimizer,
            clocks: ClockTable::resumed(meta.policy, num_workers, clock),
            meta,
            aggregation,
            round,
            delivered: Delivered::default(),
            cuts: PartCuts::default(),
            readers: Arc::default(),
            copies: 0,
            pending_grad: None,
            wakers: HashMap::new(),
        }
    }

    /// Registers the checkpoint `cut`: the part will be captured exactly
    /// when it holds the updates of clocks `< cut.clock` and no later ones.
    /// Fails (changing nothing) when a later update is already applied.
    pub fn register_cut(&mut self, cut: CutId) -> Result<(), PsError> {
        self.finish_update();
        let clock = cut.clock;
        self.cuts.register(cut, &self.clocks, &self.values, &self.optimizer).map_err(
            |TooLate { worker, clock: got }| PsError::CheckpointTooLate {
                tensor: self.meta.name.clone(),
                clock,
                worker,
                got,
                sync: self.meta.policy.is_sync(),
            },
        )
    }

    /// Forgets checkpoint `name` on this part (undoes [`register_cut`](Self::register_cut)).
    pub fn cancel_cut(&mut self, name: &str) {
        self.cuts.cancel(name);
    }

    /// Snapshots captured for checkpoints since the last call.
    pub fn take_captured(&mut self) -> Vec<PartSnapshot> {
        self.cuts.take_captured()
    }

    /// Bytes held by copies kept for checkpoints not yet captured.
    pub fn checkpoint_shadow_bytes(&self) -> usize {
        self.cuts.shadow_bytes()
    }

    /// How [`checkpoint_shadow_bytes`](Self::checkpoint_shadow_bytes)
    /// changed since the last call, for the held-bytes metric.
    pub fn take_checkpoint_shadow_change(&mut self) -> i64 {
        self.cuts.take_shadow_change()
    }

    /// What this part is.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// Its clocks.
    pub fn clocks(&self) -> &ClockTable {
        &self.clocks
    }

    /// Its optimizer and state.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Bytes held: values, optimizer state, the aggregation buffer and the
    /// sync gradients held for their turn in it.
    pub fn bytes_held(&self) -> usize {
        let pending = self.pending_grad.as_ref().map_or(0, Vec::capacity);
        (self.values.len() + pending) * 4 + self.round.bytes() + self.optimizer.state_bytes()
    }

    /// Sync: gradients (of one piece each) that arrived before their turn
    /// in the round's sum and wait for it.
    pub fn held_gradients(&self) -> usize {
        self.round.held()
    }

    /// How the bytes of the sync gradients held for their turn (and their
    /// spare buffers) changed since the last call, for the held-bytes
    /// metric; a part about to be dropped reports `-held_gradient_bytes()`
    /// after this.
    pub fn take_held_gradient_change(&mut self) -> i64 {
        self.round.take_held_change()
    }

    /// Bytes of the sync gradients held for their turn, as last reported by
    /// [`take_held_gradient_change`](Self::take_held_gradient_change).
    pub fn held_gradient_bytes(&self) -> usize {
        self.round.held_bytes()
    }

    fn clock_err(&self, source: ClockError) -> PsError {
        PsError::Clock { tensor: self.meta.name.clone(), source }
    }

    /// Counts, accumulates or (for a retry) ignores a validated gradient of
    /// `worker` for `clock`, and applies the update it completes unless
    /// pull replies still read the values ([`Pushed::pending`]). On error
    /// nothing changed.
    pub fn push(&mut self, worker: u32, clock: u64, grad: Gradient) -> Result<Pushed, PsError> {
        let ready =
            self.clocks.step(Event::Push { worker, clock, complete: true }).map_err(|e| self.clock_err(e))?;
        match ready.push {
            None | Some(PushDecision::Duplicate) => return Ok(Pushed::DUPLICATE),
            Some(PushDecision::Dropped) => return Ok(Pushed::DROPPED),
            Some(PushDecision::Apply) => self.pending_grad = Some(grad.values),
            Some(PushDecision::Accumulate) => {
                // When some pieces of this push came first, the rest come from this one.
                let missing = self.delivered.missing(worker, clock, self.round.pieces());
                let clocks = &self.clocks;
                self.round.offer_whole(worker, grad.values, &missing, |w| clocks.is_live(w));
                self.delivered.forget(worker);
            }
        }
        Ok(self.counted(ready))
    }

    /// Sync: accepts piece `piece` of `worker`'s push for `clock` (its
    /// elements in `grad`), or ignores a retry of one already accepted.
    /// A piece folded into the round's sum at once leaves `grad` to the
    /// caller to reuse; one that must wait for its turn (a lower worker's
    /// piece is still to come) takes its buffer, leaving `grad` empty.
    /// The push counts once all its pieces are in; the last piece of the
    /// round's last push completes the round. On error nothing changed.
    pub fn push_piece(
        &mut self,
        worker: u32,
        clock: u64,
        piece: usize,
        grad: &mut Vec<f32>,
    ) -> Result<Pushed, PsError> {
        let pieces = self.round.pieces();
        if self.meta.policy != Policy::SYNC {
            return Err(PsError::InvalidArgument(format!(
                "tensor {:?}, worker {worker}: only sync parts without backup workers take pushes in pieces",
                self.meta.name
            )));
        }
        if piece >= pieces || grad.len() != self.round.piece_range(piece).len() {
            return Err(PsError::InvalidArgument(format!(
                "tensor {:?}, worker {worker}: piece {piece} of {pieces} with {} elements",
                self.meta.name,
                grad.len()
            )));
        }
        if self.delivered.has(worker, clock, piece) {
            return Ok(Pushed::DUPLICATE);
        }
        let complete = self.delivered.completes(worker, clock, piece, pieces);
        let ready =
            self.clocks.step(Event::Push { worker, clock, complete }).map_err(|e| self.clock_err(e))?;
        if ready.push != Some(PushDecision::Accumulate) {
            return Ok(Pushed::DUPLICATE);
        }
        self.delivered.record(worker, clock, piece, pieces);
        let clocks = &self.clocks;
        self.round.offer_piece(worker, piece, grad, |w| clocks.is_live(w));
        Ok(self.counted(ready))
    }

    /// The buffers of pieces that waited for their turn and were folded
    /// since the last call: for the shard's piece pool, so that holding a
    /// piece costs no allocation later.
    pub fn take_spare_buffers(&mut self) -> Vec<Vec<f32>> {
        self.round.take_spare()
    }

    /// After a counted push: applies the update it completed, unless pull
    /// replies still read the values, and acts on the rest of `ready`.
    fn counted(&mut self, ready: Ready) -> Pushed {
        let (round, staleness) = match ready.update {
            Some(Update::Round(round)) => (Some(round), None),
            Some(Update::Push { staleness, .. }) => (None, Some(staleness)),
            None => (None, None),
        };
        let pending = ready.update.is_some() && self.readers.reading() > 0;
        if ready.update.is_some() && !pending {
            self.finish_update();
        }
        self.settle(ready);
        Pushed { counted: true, round, pending, dropped: false, staleness }
    }

    /// Whether an update is counted but not yet in the values: pulls wait
    /// for it, and the next push, join or leave applies it first.
    pub fn update_pending(&self) -> bool {
        self.clocks.pending().is_some()
    }

    /// Applies the pending update, if any (copying the values if pull
    /// replies still read them), and releases the pulls it lets read.
    pub fn finish_update(&mut self) {
        let Some(update) = self.clocks.pending() else { return };
        match update {
            Update::Push { clock, staleness, .. } => {
                let grad = self.pending_grad.take().unwrap_or_default();
                self.apply_push(clock, staleness, &grad);
            }
            Update::Round(round) => self.apply_round(round),
        }
        // Stepping `Applied` with an update pending cannot fail.
        if let Ok(ready) = self.clocks.step(Event::Applied) {
            self.settle(ready);
        }
    }

    /// Applies one ssp/async gradient of `clock` and staleness τ, to the
    /// values and to the copies kept for checkpoint cuts above `clock`.
    /// The gradient is multiplied by the aggregation's factor (1/W for a
    /// mean) and by the policy's staleness scaling of τ.
    fn apply_push(&mut self, clock: u64, staleness: u64, grad: &[f32]) {
        let scale = match self.aggregation {
            Aggregation::Mean => 1.0 / self.clocks.num_workers().max(1) as f32,
            Aggregation::Sum => 1.0,
        } * self.meta.policy.scaling().factor(staleness, self.clocks.num_workers());
        self.cuts.before_apply(clock, &self.values, &self.optimizer);
        let values = values_to_update(&mut self.values, &mut self.readers, &mut self.copies);
        self.optimizer.step(values, grad, scale);
        for (values, optimizer) in self.cuts.shadows_for(clock) {
            apply_gradient(values, optimizer, grad, scale);
        }
    }

    /// Applies a completed sync round's aggregate once and clears the buffer.
    fn apply_round(&mut self, round: RoundComplete) {
        let scale = match self.aggregation {
            Aggregation::Mean => 1.0 / round.contributors as f32,
            Aggregation::Sum => 1.0,
        };
        // Pieces that no contributor delivered (it left first) count as zeros.
        let sum = self.round.complete();
        let values = values_to_update(&mut self.values, &mut self.readers, &mut self.copies);
        self.optimizer.step(values, sum, scale);
        self.round.finish();
    }

    /// Acts on what a step decided: wakes the released and refused pulls,
    /// and captures the checkpoint cuts that became complete.
    fn settle(&mut self, ready: Ready) {
        for id in ready.release {
            if let Some(waker) = self.wakers.remove(&id) {
                let _ = waker.send(Ok(()));
            }
        }
        for (id, e) in ready.refuse {
            if let Some(waker) = self.wakers.remove(&id) {
                let _ = waker.send(Err(e));
            }
        }
        if ready.frontier.is_some() && !self.cuts.is_empty() {
            self.cuts.settle(&self.clocks, &self.values, &self.optimizer);
        }
    }

    /// The pull replies reading the current values: take a lease with each
    /// snapshot a reply sends.
    pub fn readers(&self) -> &Arc<Readers> {
        &self.readers
    }

    /// How many updates copied the values (because something still held
    /// them) since the last call.
    pub fn take_copies(&mut self) -> u64 {
        std::mem::take(&mut self.copies)
    }

    /// Pull `id` of `worker` (or an observer) at `clock`: read now, or wait
    /// for the receiver to say the rule holds (`Ok`) or never will (`Err`).
    pub fn pull(&mut self, id: PullId, worker: Option<u32>, clock: u64) -> Result<PullStart, PsError> {
        let ready = self.clocks.step(Event::Pull { id, worker, clock }).map_err(|e| self.clock_err(e))?;
        if ready.pull == Some(PullDecision::Ready) {
            return Ok(PullStart::Read);
        }
        let (waker, released) = oneshot::channel();
        self.wakers.insert(id, waker);
        Ok(PullStart::Wait(released))
    }

    /// Pull `id` stopped waiting; nothing if it was released already.
    pub fn cancel_pull(&mut self, id: PullId) {
        if self.wakers.remove(&id).is_some() {
            let _ = self.clocks.step(Event::Cancel { id });
        }
    }

    /// Drops every waiting pull's receiver: they see the part is gone.
    pub fn drop_waiters(&mut self) {
        self.wakers.clear();
    }

    /// The current values and their version vector, read after waiting
    /// `waited`. Cheap: shares the values. A read of a worker (not an
    /// observer) is what that worker's next push is computed from: it sets
    /// the round a backup-workers push counts for and the base of the
    /// push's staleness.
    pub fn read(&mut self, worker: Option<u32>, waited: std::time::Duration) -> Snapshot {
        if let Some(worker) = worker {
            // A read changes no state a step could refuse.
            let _ = self.clocks.step(Event::Read { worker });
        }
        self.snapshot(waited)
    }

    /// The current values and their version vector, read after waiting
    /// `waited`, as an observer reads them. Cheap: shares the values.
    pub fn snapshot(&self, waited: std::time::Duration) -> Snapshot {
        let rounds = if self.meta.policy.is_sync() { self.clocks.applied_clock() } else { 0 };
        Snapshot { values: self.values.clone(), versions: self.clocks.versions(), waited, rounds }
    }

    /// Removes `worker` from the live set, applying a sync round it completes.
    ///
    /// A sync push of `worker` of which only some pieces arrived counts as
    /// its push for that round, with zeros for the missing pieces: the
    /// pieces are in the round's sum already, and sums cannot be undone.
    pub fn leave(&mut self, worker: u32) -> Result<(), PsError> {
        self.finish_update();
        if let Some(clock) = self.delivered.forget(worker)
            && self.clocks.is_live(worker)
            && let Ok(ready) = self.clocks.step(Event::Push { worker, clock, complete: true })
        {
            if ready.update.is_some() {
                self.finish_update();
            }
            self.settle(ready);
        }
        let before = self.clocks.applied_clock();
        let ready = self.clocks.step(Event::Leave { worker }).map_err(|e| self.clock_err(e))?;
        // The gradients held behind `worker` need not wait for it now.
        let clocks = &self.clocks;
        self.round.settle(|w| clocks.is_live(w));
        if ready.update.is_some() {
            self.finish_update();
        }
        self.finish_empty_round(before, &ready);
        self.settle(ready);
        Ok(())
    }

    /// A sync round that every live worker gave up passed with no update
    /// (see [`Event::Join`]): the next round's sum starts afresh, every
    /// worker's turn back at the start, as after an applied round.
    fn finish_empty_round(&mut self, before: u64, ready: &Ready) {
        if self.clocks.policy().is_sync() && ready.update.is_none() && self.clocks.applied_clock() > before {
            self.round.finish();
        }
    }

    /// Makes `worker` live (again); returns the clock it resumes at. A
    /// worker that had left may skip the one clock it could not finish
    /// (`skip_to`, see [`Event::Join`]).
    pub fn join(&mut self, worker: u32, skip_to: u64) -> Result<u64, PsError> {
        self.finish_update();
        let before = self.clocks.applied_clock();
        let ready = self.clocks.step(Event::Join { worker, skip_to }).map_err(|e| self.clock_err(e))?;
        let resumed_at = ready.resumed_at.unwrap_or(0);
        self.finish_empty_round(before, &ready);
        self.settle(ready);
        Ok(resumed_at)
    }
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Whether it was counted: false for a retry of a counted push.
    pub counted: bool,
    /// The sync round it completed.
    pub round: Option<RoundComplete>,
    /// Whether the update it completed waits for the pull replies still
    /// reading the values: wait for them (or not), then
    /// [`finish_update`](TensorPart::finish_update).
    pub pending: bool,
    /// Sync with backup workers: its round closed first, so it was
    /// dropped (not counted, nothing changed but the worker's clock).
    pub dropped: bool,
    /// ssp, async: its staleness τ (updates applied since the worker's last read).
    pub staleness: Option<u64>,
}

impl Pushed {
    const DUPLICATE: Self =
        Self { counted: false, round: None, pending: false, dropped: false, staleness: None };
    const DROPPED: Self = Self { dropped: true, ..Self::DUPLICATE };
}

/// What became of a push, as its sender is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Counted: applied, or in its round's aggregate.
    Counted,
    /// A retry of a push counted before: nothing changed.
    Duplicate,
    /// Sync with backup workers: its round closed first; discarded.
    Dropped,
}

/// How a pull goes on.
#[derive(Debug)]
pub enum PullStart {
    /// Read the current values now.
    Read,
    /// Wait: `Ok` once the release rule holds, `Err` when it never will;
    /// a closed channel means the part was replaced.
    Wait(oneshot::Receiver<Result<(), ClockError>>),
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod order_tests;
