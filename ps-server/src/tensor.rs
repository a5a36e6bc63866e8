//! One tensor part held by a shard: its values, optimizer state, clocks and
//! aggregation buffer, updated atomically under the caller's lock.

use std::sync::Arc;

use crate::checkpoint::cut::TooLate;
use crate::checkpoint::{CutId, PartCuts, PartSnapshot};
use crate::config::Aggregation;
use crate::error::PsError;
use crate::init::Init;
pub use crate::meta::TensorMeta;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::readers::Readers;
use crate::sync::{ClockTable, Delivered, Policy, PullDecision, PushDecision, RoundComplete};

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
    /// The values; shared, never mutated after the snapshot is taken.
    pub values: Arc<Vec<f32>>,
    /// Per worker, the highest clock applied to `values` (-1 for none).
    pub versions: Vec<i64>,
    /// How long the reader waited for the release rule.
    pub waited: std::time::Duration,
}

/// The state of one tensor part. Not synchronised: the shard wraps it in a lock.
#[derive(Debug)]
pub struct TensorPart {
    meta: TensorMeta,
    values: Arc<Vec<f32>>,
    optimizer: Optimizer,
    clocks: ClockTable,
    aggregation: Aggregation,
    /// Sync only: the sum of the round's gradients so far. A piece's first
    /// gradient of the round is copied in and later ones added, so the sum
    /// is not zeroed between rounds. A part taking whole pushes only moves the round's
    /// first gradient in and frees the sum once the round is applied, so
    /// between rounds it holds no gradient buffer; a part taking pieces
    /// keeps it, rather than allocate it again every round.
    round_sum: Vec<f32>,
    /// Sync only, per piece: whether `round_sum` holds a gradient of this
    /// round there.
    round_filled: Vec<bool>,
    /// Sync only: the pieces of unfinished pushes that have arrived.
    delivered: Delivered,
    /// Checkpoints waiting for this part to reach their clock.
    cuts: PartCuts,
    /// The pull replies reading `values` (this allocation of them).
    readers: Arc<Readers>,
    /// Updates that copied `values` since [`take_copies`](Self::take_copies).
    copies: u64,
}

/// Pieces a push to a part described by `meta` may come in (1: whole pushes only).
fn piece_count(meta: &TensorMeta) -> usize {
    if meta.piece_len == 0 { 1 } else { meta.len.div_ceil(meta.piece_len).max(1) as usize }
}

/// `sum[i] += grad[i]`.
fn add(sum: &mut [f32], grad: &[f32]) {
    for (s, g) in sum.iter_mut().zip(grad) {
        *s += g;
    }
}

/// Applies `scale * grad` to `values` with `optimizer`, as one step.
fn apply_gradient(values: &mut Arc<Vec<f32>>, optimizer: &mut Optimizer, grad: &[f32], scale: f32) {
    optimizer.step(Arc::make_mut(values).as_mut_slice(), grad, scale);
}

/// The values to update in place: `values` itself when nothing else holds
/// them, else a copy. A copy has no readers yet, so `readers` starts over
/// for it, and the replies still reading the old values stop holding
/// updates back.
/// Counts the copy in `copies`.
fn values_to_update<'a>(
    values: &'a mut Arc<Vec<f32>>,
    readers: &mut Arc<Readers>,
    copies: &mut u64,
) -> &'a mut Vec<f32> {
    if Arc::get_mut(values).is_none() {
        std::mem::take(readers).retire();
        *copies += 1;
    }
    Arc::make_mut(values)
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
        let round_filled = vec![false; piece_count(&meta)];
        Self {
            values: Arc::new(init.fill(meta.offset, len)),
            optimizer: Optimizer::new(optimizer, len),
            clocks: ClockTable::new(meta.policy, num_workers),
            meta,
            aggregation,
            round_sum: Vec::new(),
            round_filled,
            delivered: Delivered::default(),
            cuts: PartCuts::default(),
            readers: Arc::default(),
            copies: 0,
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
        let round_filled = vec![false; piece_count(&meta)];
        Self {
            values: Arc::new(values),
            optimizer,
            clocks: ClockTable::resumed(meta.policy, num_workers, clock),
            meta,
            aggregation,
            round_sum: Vec::new(),
            round_filled,
            delivered: Delivered::default(),
            cuts: PartCuts::default(),
            readers: Arc::default(),
            copies: 0,
        }
    }

    /// Registers the checkpoint `cut`: the part will be captured exactly
    /// when it holds the updates of clocks `< cut.clock` and no later ones.
    /// Fails (changing nothing) when a later update is already applied.
    pub fn register_cut(&mut self, cut: CutId) -> Result<(), PsError> {
        let clock = cut.clock;
        self.cuts.register(cut, &self.clocks, &self.values, &self.optimizer).map_err(
            |TooLate { worker, clock: got }| PsError::CheckpointTooLate {
                tensor: self.meta.name.clone(),
                clock,
                worker,
                got,
                sync: self.meta.policy == Policy::Sync,
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

    /// Bytes held: values, optimizer state and the aggregation buffer.
    pub fn bytes_held(&self) -> usize {
        (self.values.len() + self.round_sum.capacity()) * 4 + self.optimizer.state_bytes()
    }

    fn clock_err(&self, source: crate::sync::ClockError) -> PsError {
        PsError::Clock { tensor: self.meta.name.clone(), source }
    }

    /// Applies, accumulates or (for a retry) ignores a validated gradient of
    /// `worker` for `clock`. Returns whether anything changed. On error
    /// nothing changed.
    pub fn push(&mut self, worker: u32, clock: u64, grad: Gradient) -> Result<bool, PsError> {
        let decision = self.clocks.check_push(worker, clock).map_err(|e| self.clock_err(e))?;
        match decision {
            PushDecision::Duplicate => return Ok(false),
            PushDecision::Apply => {
                let scale = match self.aggregation {
                    Aggregation::Mean => 1.0 / self.clocks.num_workers().max(1) as f32,
                    Aggregation::Sum => 1.0,
                };
                self.cuts.before_apply(clock, &self.values, &self.optimizer);
                let values = values_to_update(&mut self.values, &mut self.readers, &mut self.copies);
                self.optimizer.step(values, &grad.values, scale);
                for (values, optimizer) in self.cuts.shadows_for(clock) {
                    apply_gradient(values, optimizer, &grad.values, scale);
                }
            }
            PushDecision::Accumulate if self.round_sum.is_empty() && self.round_filled.len() == 1 => {
                self.round_sum = grad.values;
                self.round_filled[0] = true;
            }
            PushDecision::Accumulate => {
                // When some pieces of this push came first, the rest come from this one.
                for piece in self.delivered.missing(worker, clock, self.round_filled.len()) {
                    let range = self.piece_range(piece);
                    self.accumulate(piece, &grad.values[range]);
                }
                self.delivered.forget(worker);
            }
        }
        if let Some(round) = self.clocks.commit_push(worker, clock) {
            self.apply_round(round);
        }
        self.settle_cuts();
        Ok(true)
    }

    /// Sync: accepts piece `piece` of `worker`'s push for `clock` (its
    /// elements in `grad`, which the caller may reuse after), or ignores a
    /// retry of one already accepted.
    /// The push counts once all its pieces are in; the last piece of the
    /// round's last push applies the round. Returns whether anything
    /// changed. On error nothing changed.
    pub fn push_piece(
        &mut self,
        worker: u32,
        clock: u64,
        piece: usize,
        grad: &[f32],
    ) -> Result<bool, PsError> {
        let pieces = self.round_filled.len();
        let decision = self.clocks.check_push(worker, clock).map_err(|e| self.clock_err(e))?;
        if piece >= pieces || grad.len() != self.piece_range(piece).len() {
            return Err(PsError::InvalidArgument(format!(
                "tensor {:?}, worker {worker}: piece {piece} of {pieces} with {} elements",
                self.meta.name,
                grad.len()
            )));
        }
        match decision {
            PushDecision::Duplicate => return Ok(false),
            PushDecision::Apply => {
                return Err(PsError::InvalidArgument(format!(
                    "tensor {:?}, worker {worker}: only sync parts take pushes in pieces",
                    self.meta.name
                )));
            }
            PushDecision::Accumulate if self.delivered.has(worker, clock, piece) => return Ok(false),
            PushDecision::Accumulate => {}
        }
        self.accumulate(piece, grad);
        if self.delivered.record(worker, clock, piece, pieces)
            && let Some(round) = self.clocks.commit_push(worker, clock)
        {
            self.apply_round(round);
        }
        self.settle_cuts();
        Ok(true)
    }

    /// Adds `grad`, the elements of piece `piece`, to the round's sum:
    /// copied where the sum holds nothing of this round yet, added elsewhere.
    fn accumulate(&mut self, piece: usize, grad: &[f32]) {
        if self.round_sum.is_empty() {
            self.round_sum = vec![0.0; self.meta.len as usize];
        }
        let range = self.piece_range(piece);
        let sum = &mut self.round_sum[range];
        if std::mem::replace(&mut self.round_filled[piece], true) {
            add(sum, grad);
        } else {
            sum.copy_from_slice(grad);
        }
    }

    /// The elements of piece `piece` (below the number of pieces), relative to the part.
    fn piece_range(&self, piece: usize) -> std::ops::Range<usize> {
        let (len, piece_len) = (self.meta.len as usize, self.meta.piece_len as usize);
        if piece_len == 0 {
            return 0..len;
        }
        let start = (piece * piece_len).min(len);
        start..(start + piece_len).min(len)
    }

    /// Whether a push of `worker` for `clock` (the whole part, or piece
    /// `piece` of it) would change the values now: an applied push, or the
    /// last piece of the push that completes a sync round. Changes nothing.
    pub fn push_changes_values(&self, worker: u32, clock: u64, piece: Option<usize>) -> bool {
        match self.clocks.check_push(worker, clock) {
            Ok(PushDecision::Apply) => true,
            Ok(PushDecision::Accumulate) => {
                self.clocks.push_completes_round(worker)
                    && piece
                        .is_none_or(|i| self.delivered.completes(worker, clock, i, self.round_filled.len()))
            }
            Ok(PushDecision::Duplicate) | Err(_) => false,
        }
    }

    /// Applies a completed sync round's aggregate once and clears the buffer.
    fn apply_round(&mut self, round: RoundComplete) {
        let scale = match self.aggregation {
            Aggregation::Mean => 1.0 / round.contributors as f32,
            Aggregation::Sum => 1.0,
        };
        if self.round_sum.is_empty() {
            // Only when every contributor left before any piece arrived.
            self.round_sum = vec![0.0; self.meta.len as usize];
        }
        // Pieces that no contributor delivered (it left first) count as zeros.
        for piece in 0..self.round_filled.len() {
            if !std::mem::replace(&mut self.round_filled[piece], false) {
                let range = self.piece_range(piece);
                self.round_sum[range].fill(0.0);
            }
        }
        let values = values_to_update(&mut self.values, &mut self.readers, &mut self.copies);
        self.optimizer.step(values, &self.round_sum, scale);
        if self.round_filled.len() == 1 {
            self.round_sum = Vec::new();
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

    /// Whether a pull of `worker` (or an observer) for `clock` may read now.
    pub fn check_pull(&self, worker: Option<u32>, clock: u64) -> Result<PullDecision, PsError> {
        self.clocks.check_pull(worker, clock).map_err(|e| self.clock_err(e))
    }

    /// The current values and their version vector, read after waiting
    /// `waited`. Cheap: shares the values.
    pub fn snapshot(&self, waited: std::time::Duration) -> Snapshot {
        Snapshot { values: Arc::clone(&self.values), versions: self.clocks.versions(), waited }
    }

    /// Removes `worker` from the live set, applying a sync round it completes.
    ///
    /// A sync push of `worker` of which only some pieces arrived counts as
    /// its push for that round, with zeros for the missing pieces: the
    /// pieces are in the round's sum already, and sums cannot be undone.
    pub fn leave(&mut self, worker: u32) -> Result<(), PsError> {
        if let Some(clock) = self.delivered.forget(worker)
            && self.clocks.is_live(worker)
            && matches!(self.clocks.check_push(worker, clock), Ok(PushDecision::Accumulate))
            && let Some(round) = self.clocks.commit_push(worker, clock)
        {
            self.apply_round(round);
        }
        let round = self.clocks.leave(worker).map_err(|e| self.clock_err(e))?;
        if let Some(round) = round {
            self.apply_round(round);
        }
        self.settle_cuts();
        Ok(())
    }

    fn settle_cuts(&mut self) {
        if !self.cuts.is_empty() {
            self.cuts.settle(&self.clocks, &self.values, &self.optimizer);
        }
    }

    /// Makes `worker` live (again); returns the clock it resumes at.
    pub fn join(&mut self, worker: u32) -> Result<u64, PsError> {
        self.clocks.join(worker).map_err(|e| self.clock_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(policy: Policy, workers: u32, opt: OptimizerConfig) -> TensorPart {
        let meta = TensorMeta {
            name: "w".into(),
            shape: vec![3],
            offset: 0,
            len: 3,
            policy,
            allow_non_finite: false,
            piece_len: 0,
        };
        TensorPart::new(meta, Init::Constant(1.0), opt, workers, Aggregation::Mean)
    }

    fn grad(v: &[f32]) -> Gradient {
        Gradient { values: v.to_vec() }
    }

    #[test]
    fn sync_applies_the_mean_once_per_round() {
        let mut p = part(Policy::Sync, 2, OptimizerConfig::sgd(0.5));
        assert!(p.push(0, 0, grad(&[1.0, 2.0, 3.0])).unwrap());
        assert_eq!(
            *p.snapshot(Default::default()).values,
            vec![1.0; 3],
            "no update before the round completes"
        );
        assert!(p.push(1, 0, grad(&[3.0, 2.0, 1.0])).unwrap());
        // mean = [2, 2, 2]; 1 - 0.5 * 2 = 0
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
        assert_eq!(p.snapshot(Default::default()).versions, vec![0, 0]);
        // A retry changes nothing.
        assert!(!p.push(1, 0, grad(&[100.0, 100.0, 100.0])).unwrap());
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    #[test]
    fn async_applies_each_push_scaled_by_the_job_size() {
        let mut p = part(Policy::Async, 2, OptimizerConfig::sgd(1.0));
        p.push(0, 0, grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.5; 3]);
        assert_eq!(p.snapshot(Default::default()).versions, vec![0, -1]);
        // A worker leaving does not enlarge the others' steps.
        p.leave(1).unwrap();
        p.push(0, 1, grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    #[test]
    fn snapshot_is_not_changed_by_later_updates() {
        let mut p = part(Policy::Async, 1, OptimizerConfig::sgd(1.0));
        let before = p.snapshot(Default::default());
        p.push(0, 0, grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*before.values, vec![1.0; 3]);
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    fn cut(clock: u64) -> CutId {
        CutId { clock, name: format!("c{clock}") }
    }

    fn grad_for(worker: u32, clock: u64) -> Gradient {
        let v: Vec<f32> =
            (0..3).map(|i| ((worker * 7 + i) as f32 * 0.3 + clock as f32 * 0.11).sin()).collect();
        grad(&v)
    }

    #[test]
    fn sync_cut_is_captured_when_its_round_is_reached() {
        let mut p = part(Policy::Sync, 2, OptimizerConfig::adam(0.1));
        p.register_cut(cut(2)).unwrap();
        for clock in 0..2 {
            assert!(p.take_captured().is_empty(), "captured before round {clock} was applied");
            p.push(0, clock, grad_for(0, clock)).unwrap();
            p.push(1, clock, grad_for(1, clock)).unwrap();
        }
        let at_two = p.snapshot(Default::default()).values;
        // Round 2 in progress: contributions to it are not applied, let alone captured.
        p.push(0, 2, grad_for(0, 2)).unwrap();
        let snaps = p.take_captured();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].values, at_two);
        assert_eq!(snaps[0].optimizer.steps(), 2);
        p.push(1, 2, grad_for(1, 2)).unwrap();
        assert_ne!(p.snapshot(Default::default()).values, at_two);
        assert_eq!(snaps[0].values, at_two, "a snapshot never changes");
        // Registering at the round in progress captures at once; at a past one fails.
        p.register_cut(cut(3)).unwrap();
        assert_eq!(p.take_captured().len(), 1);
        let err = p.register_cut(cut(2)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("3 sync rounds are already applied"), "{err}");
    }

    #[test]
    fn async_cut_is_late_once_any_worker_passed_it() {
        let mut p = part(Policy::Async, 2, OptimizerConfig::sgd(0.1));
        for clock in 0..4 {
            p.push(1, clock, grad_for(1, clock)).unwrap();
        }
        let err = p.register_cut(cut(3)).unwrap_err();
        assert!(err.to_string().contains("worker 1 has already pushed clock 3"), "{err}");
        p.register_cut(cut(4)).unwrap();
    }

    /// Replays, on a fresh part, the pushes of `history` with clock below
    /// `below`, in their order.
    fn replay(policy: Policy, opt: OptimizerConfig, history: &[(u32, u64)], below: u64) -> TensorPart {
        let workers = history.iter().map(|(w, _)| w + 1).max().unwrap_or(1).max(3);
        let mut p = part(policy, workers, opt);
        for &(w, c) in history.iter().filter(|(_, c)| *c < below) {
            p.push(w, c, grad_for(w, c)).unwrap();
        }
        p
    }

    /// In ssp and async, with workers racing ahead of each other, a cut at
    /// `c` holds exactly the pushes of clocks `< c` applied in arrival order:
    /// bit-identical values and optimizer state to a replay of just those.
    #[test]
    fn ssp_and_async_cuts_equal_a_replay_of_the_earlier_clocks() {
        use rand::{Rng, SeedableRng};
        for policy in [Policy::Async, Policy::Ssp { staleness: 100 }] {
            for seed in 0..200u64 {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let opt = if seed % 2 == 0 { OptimizerConfig::adam(0.05) } else { OptimizerConfig::sgd(0.1) };
                let mut p = part(policy, 3, opt);
                let c = rng.random_range(1..6u64);
                // Worker 0 is fast, worker 2 slow: random interleavings up to clock 8.
                let mut next = [0u64; 3];
                let mut history = Vec::new();
                let mut registered = false;
                while next.iter().any(|n| *n < 8) {
                    if !registered
                        && (next.iter().all(|n| *n <= c) && rng.random_bool(0.3) || next.contains(&c))
                    {
                        p.register_cut(cut(c)).unwrap();
                        registered = true;
                    }
                    let w = [0u32, 0, 0, 1, 1, 2][rng.random_range(0..6)];
                    if next[w as usize] >= 8 {
                        continue;
                    }
                    let clock = next[w as usize];
                    if !registered && clock >= c {
                        continue;
                    }
                    p.push(w, clock, grad_for(w, clock)).unwrap();
                    history.push((w, clock));
                    next[w as usize] += 1;
                }
                let snaps = p.take_captured();
                assert_eq!(snaps.len(), 1, "seed {seed}: cut at {c} not captured exactly once");
                let expected = replay(policy, opt, &history, c);
                assert_eq!(
                    *snaps[0].values,
                    *expected.snapshot(Default::default()).values,
                    "seed {seed}, cut {c}"
                );
                assert_eq!(snaps[0].optimizer.slots(), expected.optimizer().slots(), "seed {seed}");
                assert_eq!(snaps[0].optimizer.steps(), expected.optimizer().steps());
                let live = replay(policy, opt, &history, u64::MAX);
                assert_eq!(p.snapshot(Default::default()).values, live.snapshot(Default::default()).values);
            }
        }
    }

    #[test]
    fn a_slow_worker_leaving_completes_an_async_cut() {
        let mut p = part(Policy::Async, 3, OptimizerConfig::sgd(0.1));
        p.register_cut(cut(2)).unwrap();
        for clock in 0..4 {
            p.push(0, clock, grad_for(0, clock)).unwrap();
        }
        assert!(p.take_captured().is_empty());
        assert!(p.checkpoint_shadow_bytes() > 0);
        p.leave(1).unwrap();
        assert!(p.take_captured().is_empty(), "worker 2 is still live and behind");
        p.leave(2).unwrap();
        let snaps = p.take_captured();
        assert_eq!(snaps.len(), 1);
        let expected = replay(Policy::Async, OptimizerConfig::sgd(0.1), &[(0, 0), (0, 1)], 2);
        assert_eq!(snaps[0].values, expected.snapshot(Default::default()).values);
        assert_eq!(p.checkpoint_shadow_bytes(), 0);
    }

    /// A sync part of 5 elements whose pushes may come in pieces of 2
    /// (pieces 0..2, 2..4 and 4..5), SGD with learning rate 1 and the mean.
    fn pieced(workers: u32) -> TensorPart {
        let meta = TensorMeta {
            name: "w".into(),
            shape: vec![5],
            offset: 0,
            len: 5,
            policy: Policy::Sync,
            allow_non_finite: false,
            piece_len: 2,
        };
        TensorPart::new(meta, Init::Constant(0.0), OptimizerConfig::sgd(1.0), workers, Aggregation::Mean)
    }

    fn values(p: &TensorPart) -> Vec<f32> {
        p.snapshot(Default::default()).values.to_vec()
    }

    #[test]
    fn a_push_in_pieces_counts_once_all_its_pieces_are_in_and_sums_like_a_whole_push() {
        let mut p = pieced(2);
        let g0 = [1.0, 2.0, 3.0, 4.0, 5.0];
        let g1 = [0.5, -2.0, 1.5, -0.0, 3.0];
        // Worker 0 in pieces, out of order; worker 1 whole.
        assert!(p.push_piece(0, 0, 2, &g0[4..]).unwrap());
        assert!(p.push_piece(0, 0, 0, &g0[..2]).unwrap());
        assert!(!p.push_piece(0, 0, 0, &g0[..2]).unwrap(), "a retried piece changes nothing");
        assert_eq!(p.clocks().worker_clock(0), Some(0), "the push is not complete yet");
        assert!(!p.push_changes_values(0, 0, Some(1)), "worker 1 has not pushed: no update yet");
        assert!(p.push_piece(0, 0, 1, &g0[2..4]).unwrap());
        assert_eq!(p.clocks().worker_clock(0), Some(1), "complete with its last piece");
        assert!(!p.push_piece(0, 0, 1, &g0[2..4]).unwrap(), "a piece of a complete push is a duplicate");
        assert_eq!(values(&p), vec![0.0; 5], "no update before the round completes");
        assert!(p.push_changes_values(1, 0, None));
        assert!(p.push(1, 0, grad(&g1)).unwrap());
        let mean: Vec<f32> = g0.iter().zip(&g1).map(|(a, b)| -(a + b) * 0.5).collect();
        assert_eq!(values(&p), mean);

        // The same round with whole pushes gives the same bits.
        let mut whole = pieced(2);
        whole.push(0, 0, grad(&g0)).unwrap();
        whole.push(1, 0, grad(&g1)).unwrap();
        assert_eq!(
            values(&p).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values(&whole).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_the_last_piece_of_the_rounds_last_push_changes_the_values() {
        let mut p = pieced(2);
        p.push(1, 0, grad(&[1.0; 5])).unwrap();
        assert!(!p.push_changes_values(0, 0, Some(0)));
        p.push_piece(0, 0, 0, &[1.0; 2]).unwrap();
        p.push_piece(0, 0, 2, &[1.0; 1]).unwrap();
        assert!(!p.push_changes_values(0, 0, Some(0)), "an arrived piece changes nothing");
        assert!(p.push_changes_values(0, 0, Some(1)));
        assert!(p.push_changes_values(0, 0, None), "a whole push brings the missing piece too");
        // A whole push after some pieces adds only the pieces still missing.
        p.push(0, 0, grad(&[1.0, 1.0, 7.0, 7.0, 1.0])).unwrap();
        assert_eq!(values(&p), vec![-1.0, -1.0, -4.0, -4.0, -1.0]);
        // The next round starts from an empty sum, though the part keeps its buffer.
        p.push_piece(0, 1, 0, &[2.0; 2]).unwrap();
        p.push_piece(0, 1, 1, &[2.0; 2]).unwrap();
        p.push_piece(0, 1, 2, &[2.0; 1]).unwrap();
        p.push(1, 1, grad(&[0.0; 5])).unwrap();
        assert_eq!(values(&p), vec![-2.0, -2.0, -5.0, -5.0, -2.0]);
    }

    #[test]
    fn a_refused_piece_changes_nothing() {
        let mut p = pieced(2);
        let bad_length = p.push_piece(0, 0, 1, &[1.0; 3]);
        assert!(matches!(bad_length, Err(PsError::InvalidArgument(_))), "{bad_length:?}");
        assert!(matches!(p.push_piece(0, 0, 3, &[1.0]), Err(PsError::InvalidArgument(_))), "no piece 3");
        assert!(matches!(p.push_piece(0, 1, 0, &[1.0; 2]), Err(PsError::Clock { .. })), "clock ahead");
        p.push_piece(0, 0, 0, &[1.0; 2]).unwrap();
        p.push_piece(0, 0, 1, &[1.0; 2]).unwrap();
        p.push_piece(0, 0, 2, &[1.0; 1]).unwrap();
        p.push(1, 0, grad(&[1.0; 5])).unwrap();
        assert_eq!(values(&p), vec![-1.0; 5], "the refused pieces left no trace in the sum");
    }

    #[test]
    fn a_worker_leaving_with_some_pieces_in_counts_with_zeros_for_the_rest() {
        let mut p = pieced(2);
        p.push(1, 0, grad(&[2.0; 5])).unwrap();
        p.push_piece(0, 0, 1, &[4.0; 2]).unwrap();
        p.leave(0).unwrap();
        // Mean of [2; 5] and [0, 0, 4, 4, 0] over the two contributors.
        assert_eq!(values(&p), vec![-1.0, -1.0, -3.0, -3.0, -1.0]);
        assert_eq!(p.clocks().applied_clock(), 1);
    }

    #[test]
    fn pieces_no_contributor_delivered_count_as_zeros() {
        let mut p = pieced(2);
        // A full round first, so the kept sum holds old values everywhere.
        p.push(0, 0, grad(&[8.0; 5])).unwrap();
        p.push(1, 0, grad(&[8.0; 5])).unwrap();
        assert_eq!(values(&p), vec![-8.0; 5]);
        p.push_piece(0, 1, 0, &[2.0; 2]).unwrap();
        p.leave(0).unwrap();
        assert_eq!(p.clocks().applied_clock(), 1, "worker 1 is still to push");
        p.push_piece(1, 1, 0, &[4.0; 2]).unwrap();
        p.leave(1).unwrap();
        assert_eq!(values(&p), vec![-11.0, -11.0, -8.0, -8.0, -8.0]);
    }

    /// Whatever the order in which workers' pieces arrive, with retries
    /// and some pushes finished by one whole push, each round applies every
    /// worker's gradient exactly once: the same bits as whole pushes, every
    /// retry refused, and the round complete exactly after its last piece.
    /// (Integer gradients, sums and a power-of-two learning rate keep every
    /// sum exact, so the order of the additions does not matter.)
    #[test]
    fn any_interleaving_of_pieces_retries_and_whole_pushes_applies_each_push_once() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        for seed in 0..300u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let workers = rng.random_range(2..5u32);
            let len = rng.random_range(1..12u64);
            let piece_len = rng.random_range(1..5u64);
            let part = |piece_len| {
                let meta = TensorMeta {
                    name: "w".into(),
                    shape: vec![len],
                    offset: 0,
                    len,
                    policy: Policy::Sync,
                    allow_non_finite: false,
                    piece_len,
                };
                TensorPart::new(
                    meta,
                    Init::Constant(0.0),
                    OptimizerConfig::sgd(0.5),
                    workers,
                    Aggregation::Sum,
                )
            };
            let (mut pieced, mut whole) = (part(piece_len), part(0));
            let pieces = ps_proto::placement::pieces(ps_proto::Part { shard: 0, offset: 0, len }, piece_len);
            for round in 0..3u64 {
                let g = |w: u32| -> Vec<f32> {
                    (0..len).map(|i| ((u64::from(w) * 7 + round * 3 + i) % 9) as f32 - 4.0).collect()
                };
                let mut events: Vec<(u32, Option<usize>)> =
                    (0..workers).flat_map(|w| (0..pieces.len()).map(move |i| (w, Some(i)))).collect();
                events.shuffle(&mut rng);
                // Some workers send their last piece as a whole push instead.
                for w in 0..workers {
                    if rng.random_bool(0.3)
                        && let Some(last) = events.iter().rposition(|(v, _)| *v == w)
                    {
                        events[last] = (w, None);
                    }
                }
                for (n, (w, piece)) in events.iter().copied().enumerate() {
                    let push = |p: &mut TensorPart| match piece {
                        Some(i) => {
                            let r = pieces[i].offset as usize..(pieces[i].offset + pieces[i].len) as usize;
                            p.push_piece(w, round, i, &g(w)[r])
                        }
                        None => p.push(w, round, Gradient { values: g(w) }),
                    };
                    assert!(push(&mut pieced).unwrap(), "seed {seed}: the first arrival counts");
                    if rng.random_bool(0.25) {
                        assert!(!push(&mut pieced).unwrap(), "seed {seed}: a retry changes nothing");
                    }
                    let last = n + 1 == events.len();
                    assert_eq!(pieced.clocks().applied_clock(), round + u64::from(last), "seed {seed}");
                }
                for w in 0..workers {
                    whole.push(w, round, Gradient { values: g(w) }).unwrap();
                }
                let bits = |p: &TensorPart| values(p).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&pieced), bits(&whole), "seed {seed}, round {round}");
            }
        }
    }
}
