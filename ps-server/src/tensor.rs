//! One tensor part held by a shard: its values, optimizer state, clocks and
//! aggregation buffer, updated atomically under the caller's lock.

use std::sync::Arc;

use bytes::Bytes;
use ps_proto::wire::{self, WireDtype};

use crate::config::Aggregation;
use crate::error::PsError;
use crate::init::Init;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::sync::{ClockTable, Policy, PullDecision, PushDecision, RoundComplete};

/// What a tensor part is: fixed at declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// Shape of the whole tensor.
    pub shape: Vec<u64>,
    /// First element of the whole tensor held here.
    pub offset: u64,
    /// Elements held here.
    pub len: u64,
    /// Synchronisation policy.
    pub policy: Policy,
    /// Whether NaN/Inf gradients are accepted.
    pub allow_non_finite: bool,
}

/// A gradient payload whose chunk sequence has been validated: the chunks
/// hold exactly the part's elements, in order, in `dtype`.
#[derive(Clone, Debug)]
pub struct Gradient {
    /// Encoding of the chunks.
    pub dtype: WireDtype,
    /// The payload, in element order.
    pub chunks: Vec<Bytes>,
}

impl Gradient {
    /// The first non-finite element, as (index, value).
    pub fn first_non_finite(&self) -> Option<(u64, f32)> {
        let mut base = 0u64;
        for chunk in &self.chunks {
            if let Some(i) = wire::first_non_finite(chunk, self.dtype) {
                let mut v = [0f32];
                let size = self.dtype.size();
                wire::decode_into(&mut v, &chunk[i * size..(i + 1) * size], self.dtype);
                return Some((base + i as u64, v[0]));
            }
            base += (chunk.len() / self.dtype.size()) as u64;
        }
        None
    }

    /// Calls `f(element_offset, chunk)` for each chunk.
    fn for_each_chunk(&self, mut f: impl FnMut(usize, &Bytes)) {
        let mut base = 0;
        for chunk in &self.chunks {
            f(base, chunk);
            base += chunk.len() / self.dtype.size();
        }
    }
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
    /// Sync only: the sum of the round's gradients so far. Allocated at the
    /// first contribution and reused; the only per-tensor gradient buffer.
    round_sum: Vec<f32>,
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
        Self {
            values: Arc::new(init.fill(meta.offset, len)),
            optimizer: Optimizer::new(optimizer, len),
            clocks: ClockTable::new(meta.policy, num_workers),
            meta,
            aggregation,
            round_sum: Vec::new(),
        }
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
    pub fn push(&mut self, worker: u32, clock: u64, grad: &Gradient) -> Result<bool, PsError> {
        let decision = self.clocks.check_push(worker, clock).map_err(|e| self.clock_err(e))?;
        match decision {
            PushDecision::Duplicate => return Ok(false),
            PushDecision::Apply => {
                let scale = match self.aggregation {
                    Aggregation::Mean => 1.0 / self.clocks.num_workers().max(1) as f32,
                    Aggregation::Sum => 1.0,
                };
                let values = Arc::make_mut(&mut self.values);
                let optimizer = &mut self.optimizer;
                optimizer.begin_step();
                grad.for_each_chunk(|base, chunk| {
                    wire::for_each_block(chunk, grad.dtype, |off, block| {
                        let start = base + off;
                        optimizer.update(start, &mut values[start..start + block.len()], block, scale);
                    });
                });
            }
            PushDecision::Accumulate => {
                if self.round_sum.len() != self.values.len() {
                    self.round_sum = vec![0.0; self.values.len()];
                }
                let sum = &mut self.round_sum;
                grad.for_each_chunk(|base, chunk| {
                    let n = chunk.len() / grad.dtype.size();
                    wire::add_into(&mut sum[base..base + n], chunk, grad.dtype);
                });
            }
        }
        if let Some(round) = self.clocks.commit_push(worker, clock) {
            self.apply_round(round);
        }
        Ok(true)
    }

    /// Applies a completed sync round's aggregate once and clears the buffer.
    fn apply_round(&mut self, round: RoundComplete) {
        let scale = match self.aggregation {
            Aggregation::Mean => 1.0 / round.contributors as f32,
            Aggregation::Sum => 1.0,
        };
        let values = Arc::make_mut(&mut self.values);
        self.optimizer.step(values, &self.round_sum, scale);
        self.round_sum.fill(0.0);
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
    pub fn leave(&mut self, worker: u32) -> Result<(), PsError> {
        let round = self.clocks.leave(worker).map_err(|e| self.clock_err(e))?;
        if let Some(round) = round {
            self.apply_round(round);
        }
        Ok(())
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
        };
        TensorPart::new(meta, Init::Constant(1.0), opt, workers, Aggregation::Mean)
    }

    fn grad(v: &[f32]) -> Gradient {
        Gradient { dtype: WireDtype::F32, chunks: vec![wire::encode(v, WireDtype::F32)] }
    }

    #[test]
    fn sync_applies_the_mean_once_per_round() {
        let mut p = part(Policy::Sync, 2, OptimizerConfig::sgd(0.5));
        assert!(p.push(0, 0, &grad(&[1.0, 2.0, 3.0])).unwrap());
        assert_eq!(
            *p.snapshot(Default::default()).values,
            vec![1.0; 3],
            "no update before the round completes"
        );
        assert!(p.push(1, 0, &grad(&[3.0, 2.0, 1.0])).unwrap());
        // mean = [2, 2, 2]; 1 - 0.5 * 2 = 0
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
        assert_eq!(p.snapshot(Default::default()).versions, vec![0, 0]);
        // A retry changes nothing.
        assert!(!p.push(1, 0, &grad(&[100.0, 100.0, 100.0])).unwrap());
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    #[test]
    fn async_applies_each_push_scaled_by_the_job_size() {
        let mut p = part(Policy::Async, 2, OptimizerConfig::sgd(1.0));
        p.push(0, 0, &grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.5; 3]);
        assert_eq!(p.snapshot(Default::default()).versions, vec![0, -1]);
        // A worker leaving does not enlarge the others' steps.
        p.leave(1).unwrap();
        p.push(0, 1, &grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    #[test]
    fn snapshot_is_not_changed_by_later_updates() {
        let mut p = part(Policy::Async, 1, OptimizerConfig::sgd(1.0));
        let before = p.snapshot(Default::default());
        p.push(0, 0, &grad(&[1.0, 1.0, 1.0])).unwrap();
        assert_eq!(*before.values, vec![1.0; 3]);
        assert_eq!(*p.snapshot(Default::default()).values, vec![0.0; 3]);
    }

    #[test]
    fn chunked_gradient_equals_whole() {
        let mut a = part(Policy::Async, 1, OptimizerConfig::adam(0.1));
        let mut b = part(Policy::Async, 1, OptimizerConfig::adam(0.1));
        let g = [0.3f32, -1.0, 2.0];
        a.push(0, 0, &grad(&g)).unwrap();
        let chunks = vec![wire::encode(&g[..1], WireDtype::F32), wire::encode(&g[1..], WireDtype::F32)];
        b.push(0, 0, &Gradient { dtype: WireDtype::F32, chunks }).unwrap();
        assert_eq!(a.snapshot(Default::default()).values, b.snapshot(Default::default()).values);
    }

    #[test]
    fn finds_non_finite_across_chunks() {
        let g = Gradient {
            dtype: WireDtype::F32,
            chunks: vec![
                wire::encode(&[1.0, 2.0], WireDtype::F32),
                wire::encode(&[3.0, f32::NAN], WireDtype::F32),
            ],
        };
        let (i, v) = g.first_non_finite().unwrap();
        assert_eq!(i, 3);
        assert!(v.is_nan());
    }
}
