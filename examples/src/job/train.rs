//! One worker's training loop: pull → compute → push, with optional injected
//! stragglers, recording what every step cost and what it read. Each push
//! but the last is a `push_pull` that brings back the next step's read in
//! the same round trip.

use std::time::{Duration, Instant};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::data::{Dataset, worker_batches};
use super::model::Model;
use ps_worker::TensorDecl;
use ps_worker::WorkerError;
use ps_worker::{OptimizerConfig, Worker};

/// A persistent straggler: one worker always `slowdown` times slower.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Persistent {
    /// The slow worker.
    pub worker: u32,
    /// Its step time as a multiple of the normal one (>= 1).
    pub slowdown: f64,
}

/// Injected slowness, seeded and reproducible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stragglers {
    /// Per step and worker, the chance of a transient delay (a GC pause, a noisy neighbour).
    pub transient_probability: f64,
    /// A delayed step takes this many times its normal time.
    pub transient_factor: f64,
    /// A worker that is always slow.
    pub persistent: Option<Persistent>,
    /// Seed of the delay draws.
    pub seed: u64,
}

impl Stragglers {
    /// No injected delays.
    pub fn none() -> Self {
        Self { transient_probability: 0.0, transient_factor: 1.0, persistent: None, seed: 0 }
    }

    /// The extra sleep of one step of `worker` whose normal (undelayed,
    /// unblocked) duration is `normal`.
    fn delay(&self, worker: u32, rng: &mut ChaCha8Rng, normal: Duration) -> Duration {
        let mut factor = 1.0;
        if let Some(p) = self.persistent.filter(|p| p.worker == worker) {
            factor *= p.slowdown.max(1.0);
        }
        if self.transient_probability > 0.0 && rng.random_bool(self.transient_probability.clamp(0.0, 1.0)) {
            factor *= self.transient_factor.max(1.0);
        }
        normal.mul_f64(factor - 1.0)
    }
}

/// What one training job is.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// The model.
    pub model: Model,
    /// Examples per worker per step.
    pub batch: usize,
    /// Passes over each worker's share of the data.
    pub epochs: u64,
    /// Seed of the data shuffle.
    pub seed: u64,
    /// Number of workers sharing the data.
    pub workers: u32,
    /// Server-side optimizer the tensors are declared with; `None`: the
    /// shards' default (`ps-server --optimizer`), the one source of truth
    /// for a cluster of processes.
    pub optimizer: Option<OptimizerConfig>,
    /// Injected slowness.
    pub stragglers: Stragglers,
    /// Stop after this many steps even if epochs remain.
    pub max_steps: Option<u64>,
    /// Request a checkpoint at every clock that is a positive multiple of
    /// this (except the clock the worker resumed at, which it was restored from).
    pub checkpoint_every: Option<u64>,
}

impl TrainConfig {
    /// The model's tensors with the job's optimizer, if it sets one.
    pub fn tensors(&self) -> Vec<TensorDecl> {
        let tensors = self.model.tensors().into_iter();
        match self.optimizer {
            Some(o) => tensors.map(|t| t.optimizer(o)).collect(),
            None => tensors.collect(),
        }
    }

    /// Steps each worker takes in one epoch over `train_len` examples.
    pub fn steps_per_epoch(&self, train_len: usize) -> u64 {
        (train_len / self.workers.max(1) as usize / self.batch.max(1)) as u64
    }

    /// Steps each worker takes in all.
    pub fn total_steps(&self, train_len: usize) -> u64 {
        let all = self.steps_per_epoch(train_len) * self.epochs;
        self.max_steps.map_or(all, |m| m.min(all))
    }
}

/// One step of one worker.
#[derive(Clone, Debug)]
pub struct StepRecord {
    /// Worker id.
    pub worker: u32,
    /// The clock of the step (the pull's clock).
    pub clock: u64,
    /// When the step ended, since the job started.
    pub wall: Duration,
    /// Training loss on the step's minibatch.
    pub loss: f32,
    /// Clocks of updates missing from the read: `max_w (clock - 1 - version_w)`, at least 0.
    pub staleness: i64,
    /// When the step's read was sent and when its reply was complete, since the job started
    /// (for a read made by the previous step's `push_pull`, that call's start and end).
    pub read: (Duration, Duration),
    /// Time the pull waited for the policy on the shards.
    pub blocked: Duration,
    /// Time of the step's own pull; zero when the previous step's `push_pull` made the read.
    pub pull: Duration,
    /// Time of the gradient computation, including injected delay.
    pub compute: Duration,
    /// Time of the push (with the next step's read, when it is a `push_pull`).
    pub push: Duration,
    /// The version vector of every tensor read.
    pub versions: Versions,
    /// Sync tensors: the rounds applied to the value read (the clock,
    /// unless the tensor has backup workers).
    pub rounds: std::collections::BTreeMap<String, u64>,
    /// Backup workers: the tensors whose push of this step was dropped
    /// (their round closed first); `None` when not known (the last step).
    pub dropped: Option<std::collections::BTreeSet<String>>,
}

/// Version vectors by tensor name.
pub type Versions = std::collections::BTreeMap<String, Vec<i64>>;

/// Staleness of a read at `clock`: the largest number of clocks of any
/// worker's updates missing from it.
pub fn staleness(clock: u64, versions: &Versions) -> i64 {
    versions.values().flatten().map(|v| (clock as i64 - 1 - v).max(0)).max().unwrap_or(0)
}

/// Declares the job's tensors through `worker`.
pub async fn declare(worker: &mut Worker, cfg: &TrainConfig) -> Result<(), WorkerError> {
    worker.declare_all(&cfg.tensors()).await
}

/// Shard restarts one run survives; past this a restart is an error.
pub const MAX_RECOVERIES: u32 = 16;

/// Runs `worker`'s share of the job from its current clock to the last step,
/// calling `on_step` after every step. Compute runs inline: give each worker
/// its own thread. When a shard restarts from a checkpoint, every shard is
/// rewound to it ([`Worker::recover`]) and the job goes on from its clock:
/// the records of the undone steps are dropped.
pub async fn train(
    worker: &mut Worker,
    cfg: &TrainConfig,
    data: &Dataset,
    started: Instant,
    checkpoints: &mut ps_worker::CheckpointWatch,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<Vec<StepRecord>, WorkerError> {
    let id = worker.id();
    let per_epoch = cfg.steps_per_epoch(data.len()).max(1);
    let total = cfg.total_steps(data.len());
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.stragglers.seed ^ (u64::from(id) << 40));
    let mut batches: Option<(u64, Vec<Vec<usize>>)> = None;
    let mut records = Vec::new();
    // Exponential moving average of this worker's step time without injected
    // delay or policy blocking: the "normal step time" stragglers multiply.
    let mut normal: Option<Duration> = None;
    let mut resumed_at = worker.clock();
    let mut recoveries = 0;
    // The read for the current clock, when the previous step's `Worker::step`
    // already made it (with when that call started and ended).
    let mut prefetched: Option<(ps_worker::Pulled, Instant, Instant)> = None;
    // Rounds applied to the values last read: with backup workers a round
    // closes without the slowest pushes, so the job is done once `total`
    // rounds are, though a slow worker has taken fewer steps (without
    // backup workers, rounds are the clock).
    let mut rounds_read = 0;
    while worker.clock() < total && rounds_read < total {
        let clock = worker.clock();
        let every = cfg.checkpoint_every.unwrap_or(0);
        let epoch = clock / per_epoch;
        if batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
            batches = Some((epoch, worker_batches(data.len(), id, cfg.workers, cfg.batch, cfg.seed, epoch)));
        }
        let indices = &batches.as_ref().map(|(_, b)| b).expect("set above")[(clock % per_epoch) as usize];
        let step = async {
            if every > 0 && clock > 0 && clock.is_multiple_of(every) && clock != resumed_at {
                match worker.checkpoint(clock).await {
                    Ok(name) => checkpoints.requested(name),
                    Err(e @ WorkerError::ShardRestarted { .. }) => return Err(e),
                    // Too many checkpoints still wait for slower workers, or a
                    // faster one already passed this clock (async): this one
                    // is skipped, and training goes on.
                    Err(e)
                        if matches!(
                            e.code(),
                            Some(tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition)
                        ) =>
                    {
                        tracing::warn!(clock, "checkpoint skipped: {e}");
                    }
                    Err(e) => return Err(e),
                }
                match checkpoints.poll(worker).await {
                    Ok(failures) => {
                        for f in failures {
                            tracing::warn!(checkpoint = %f.name, shard = f.shard, error = %f.error, "checkpoint failed; training goes on");
                        }
                    }
                    // Not knowing how a checkpoint stands is no reason to stop training.
                    Err(e) => tracing::warn!("cannot learn how the requested checkpoints stand: {e}"),
                }
            }
            // The read: made by the previous step's push_pull, or now.
            // `own_wait`: what this step itself spent blocked in a pull (a
            // prefetched read's wait was spent in the previous step's call).
            let (pulled, t0, t1, pull_time, own_wait) = match prefetched.take() {
                Some((pulled, t0, t1)) => (pulled, t0, t1, Duration::ZERO, Duration::ZERO),
                None => {
                    let t0 = Instant::now();
                    let pulled = worker.pull().await?;
                    let t1 = Instant::now();
                    let waited = pulled.waited;
                    (pulled, t0, t1, t1 - t0, waited)
                }
            };
            let computing = Instant::now();
            let (x, y) = data.gather(indices);
            let (loss, grads) = cfg.model.loss_and_grads(&pulled.values, x.view(), &y);
            let work = computing.elapsed();
            let extra = cfg.stragglers.delay(id, &mut rng, normal.unwrap_or(work));
            if !extra.is_zero() {
                tokio::time::sleep(extra).await;
            }
            let t2 = Instant::now();
            // The push, and with it the next step's read in the same round
            // trip (the last step only pushes).
            let mut next_wait = Duration::ZERO;
            let mut dropped = None;
            if clock + 1 < total {
                // Shared, the gradients go out from their own memory.
                let shared: std::collections::BTreeMap<_, _> =
                    grads.into_iter().map(|(k, g)| (k, g.into_shared())).collect();
                let next = worker.step(&shared).await?;
                if worker.clock() != clock + 1 {
                    // A shard restarted: `step` rewound every shard to its
                    // checkpoint and read the values there, the next read.
                    prefetched = Some((next, t2, Instant::now()));
                    return Ok(None);
                }
                next_wait = next.waited;
                dropped = Some(next.dropped.clone());
                prefetched = Some((next, t2, Instant::now()));
            } else {
                worker.push(&grads).await?;
            }
            let t3 = Instant::now();
            // The step's time without injected delay or policy blocking, in
            // this step's pull or in the read its push_pull made.
            let step = (pull_time + (t3 - computing)).saturating_sub(extra + own_wait + next_wait);
            normal = Some(normal.map_or(step, |n| n.mul_f64(0.9) + step.mul_f64(0.1)));
            Ok::<_, WorkerError>(Some(StepRecord {
                worker: id,
                clock,
                wall: t3 - started,
                loss,
                staleness: staleness(clock, &pulled.versions),
                read: (t0 - started, t1 - started),
                blocked: pulled.waited,
                pull: pull_time,
                compute: t2 - computing,
                push: t3 - t2,
                versions: pulled.versions,
                rounds: pulled.rounds,
                dropped,
            }))
        };
        let record = match step.await {
            Ok(Some(record)) => record,
            Ok(None) if recoveries < MAX_RECOVERIES => {
                recoveries += 1;
                resumed_at = worker.clock();
                records.retain(|r: &StepRecord| r.clock < resumed_at);
                continue;
            }
            Ok(None) => {
                return Err(WorkerError::Cluster(format!(
                    "worker {id}: gave up after {MAX_RECOVERIES} shard restarts in one run"
                )));
            }
            Err(WorkerError::ShardRestarted { restart, .. }) if recoveries < MAX_RECOVERIES => {
                recoveries += 1;
                prefetched = None;
                resumed_at = worker.recover(&restart).await?;
                // The steps from the checkpoint on are undone on every shard.
                records.retain(|r: &StepRecord| r.clock < resumed_at);
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(m) = worker.metrics() {
            m.step(clock, record.loss, record.pull, record.compute, record.push, record.blocked);
        }
        if let Some((next, ..)) = &prefetched {
            rounds_read = next.rounds.values().copied().min().unwrap_or(0);
        }
        on_step(&record);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_missing_clocks() {
        let v = Versions::from([("a".to_string(), vec![4, 2, 5]), ("b".to_string(), vec![4, 3, 5])]);
        assert_eq!(staleness(6, &v), 3);
        assert_eq!(staleness(0, &Versions::from([("a".to_string(), vec![-1, -1])])), 0);
    }

    #[test]
    fn stragglers_are_seeded_and_scale_compute() {
        let s = Stragglers {
            transient_probability: 0.5,
            transient_factor: 5.0,
            persistent: Some(Persistent { worker: 1, slowdown: 3.0 }),
            seed: 1,
        };
        let ms = Duration::from_millis(10);
        let draw = |w| {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            (0..200).map(|_| s.delay(w, &mut rng, ms)).collect::<Vec<_>>()
        };
        let w0 = draw(0);
        assert_eq!(w0, draw(0), "not reproducible");
        assert!(w0.iter().all(|d| *d == Duration::ZERO || *d == ms * 4));
        let delayed = w0.iter().filter(|d| !d.is_zero()).count();
        assert!((60..140).contains(&delayed), "{delayed} of 200 delayed at p = 0.5");
        assert!(draw(1).iter().all(|d| *d == ms * 2 || *d == ms * 14));
        assert!(Stragglers::none().delay(0, &mut ChaCha8Rng::seed_from_u64(0), ms).is_zero());
    }
}
