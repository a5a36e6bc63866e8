//! The compute-only reference: the same model, data order and optimizer,
//! trained in one process with no server. Step `c` uses the union of the
//! workers' step-`c` batches, so it is what sync computes, minus the
//! parameter server; no distributed run on the same cores can beat its time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::job::data::{Splits, worker_batches};
use crate::job::model::Tensors;
use crate::job::train::TrainConfig;
use indicatif::ProgressBar;
use ps_server::optim::Optimizer;

use crate::run::Snapshot;

/// What the baseline recorded.
#[derive(Clone, Debug)]
pub struct BaselineResult {
    /// Parameter snapshots in time order; the last is the final model.
    pub snapshots: Vec<Snapshot>,
    /// Training time.
    pub wall: Duration,
    /// Loss on the global batch of every clock.
    pub losses: Vec<f32>,
}

/// Trains `job` in this thread; snapshots the parameters every `snapshot_every`.
pub fn train(
    job: &TrainConfig,
    data: &Splits,
    snapshot_every: Duration,
    progress: &ProgressBar,
) -> BaselineResult {
    let mut params: Tensors = BTreeMap::new();
    let mut optimizers = BTreeMap::new();
    for t in job.tensors() {
        let init = ps_server::convert::init(t.spec()).expect("the job's initializers are valid");
        let len = t.shape().iter().product();
        let values =
            ndarray::ArrayD::from_shape_vec(t.shape(), init.fill(0, len)).expect("shape matches length");
        params.insert(t.name().to_string(), values);
        // A job without its own optimizer uses the shards' default.
        optimizers.insert(t.name().to_string(), Optimizer::new(job.optimizer.unwrap_or_default(), len));
    }
    let per_epoch = job.steps_per_epoch(data.train.len()).max(1);
    let total = job.total_steps(data.train.len());
    let started = Instant::now();
    let mut snapshots = vec![Snapshot { wall: Duration::ZERO, clock: 0, params: params.clone() }];
    let mut next_snapshot = snapshot_every;
    let mut losses = Vec::with_capacity(total as usize);
    let mut epoch_batches: Option<(u64, Vec<Vec<Vec<usize>>>)> = None;
    for clock in 0..total {
        let epoch = clock / per_epoch;
        if epoch_batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let all = (0..job.workers)
                .map(|w| worker_batches(data.train.len(), w, job.workers, job.batch, job.seed, epoch))
                .collect();
            epoch_batches = Some((epoch, all));
        }
        let batches = &epoch_batches.as_ref().expect("set above").1;
        let indices: Vec<usize> =
            batches.iter().flat_map(|b| b[(clock % per_epoch) as usize].iter().copied()).collect();
        let (x, y) = data.train.gather(&indices);
        let (loss, grads) = job.model.loss_and_grads(&params, x.view(), &y);
        losses.push(loss);
        for (name, g) in &grads {
            let p = params.get_mut(name).expect("same names");
            let opt = optimizers.get_mut(name).expect("same names");
            opt.step(p.as_slice_mut().expect("contiguous"), g.as_slice().expect("contiguous"), 1.0);
        }
        progress.inc(1);
        if started.elapsed() >= next_snapshot {
            snapshots.push(Snapshot { wall: started.elapsed(), clock: clock + 1, params: params.clone() });
            next_snapshot += snapshot_every;
        }
    }
    let wall = started.elapsed();
    snapshots.push(Snapshot { wall, clock: total, params });
    BaselineResult { snapshots, wall, losses }
}
