//! One run of the training job under one policy: W worker threads (each
//! with its own single-threaded runtime, so compute never stalls another
//! worker's I/O) and an observer that snapshots the parameters periodically.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crate::job::data::Splits;
use crate::job::model::Tensors;
use crate::job::train::{self, StepRecord, TrainConfig};
use indicatif::ProgressBar;
use ps_proto::Policy;
use ps_proto::{ClusterSpec, WireDtype};
use ps_worker::metrics::WorkerMetrics;
use ps_worker::{TensorDecl, Worker, WorkerConfig, WorkerError};
use tokio::sync::watch;

/// Parameters observed at one moment of a run.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Since the run started.
    pub wall: Duration,
    /// The smallest clock every tensor's value fully contains (min version + 1).
    pub clock: u64,
    /// The parameters.
    pub params: Tensors,
}

/// Everything a run recorded.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The policy.
    pub policy: Policy,
    /// Every step of every worker.
    pub steps: Vec<StepRecord>,
    /// Parameter snapshots in time order; the last is the final model.
    pub snapshots: Vec<Snapshot>,
    /// From the first step to the last worker's end.
    pub wall: Duration,
}

/// The registries a metrics endpoint serves; a run adds its workers' to it.
pub type MetricsBoard = Arc<std::sync::Mutex<Vec<prometheus::Registry>>>;

/// How to run one policy.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The policy, declared per tensor.
    pub policy: Policy,
    /// The shards.
    pub cluster: ClusterSpec,
    /// Tensor-name prefix on the shards, unique per run.
    pub namespace: String,
    /// The job.
    pub job: TrainConfig,
    /// Wire encoding.
    pub wire_dtype: WireDtype,
    /// How often the observer snapshots the parameters.
    pub snapshot_every: Duration,
    /// Where to publish the workers' metrics (labelled with the policy), if anywhere.
    pub board: Option<MetricsBoard>,
}

/// Runs the job under one policy; blocks until every worker is done.
pub fn run(spec: &RunSpec, data: &Arc<Splits>, progress: &ProgressBar) -> Result<RunResult, WorkerError> {
    let workers = spec.job.workers;
    let barrier = Barrier::new(workers as usize + 1);
    let started: OnceLock<Instant> = OnceLock::new();
    let (done, done_rx) = watch::channel(false);
    let label = spec.policy.to_string();
    let metrics: Vec<Option<Arc<WorkerMetrics>>> = (0..workers)
        .map(|id| spec.board.as_ref().map(|_| Arc::new(WorkerMetrics::new(id, Some(&label)))))
        .collect();
    if let Some(board) = &spec.board {
        let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
        board.extend(metrics.iter().flatten().map(|m| m.registry().clone()));
    }
    let config = |id: u32| WorkerConfig {
        wire_dtype: spec.wire_dtype,
        namespace: spec.namespace.clone(),
        metrics: metrics.get(id as usize).cloned().flatten(),
        ..WorkerConfig::new(spec.cluster.clone(), id)
    };
    let tensors: Vec<TensorDecl> = spec.job.tensors().into_iter().map(|t| t.policy(spec.policy)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|id| {
                let (barrier, started, tensors, config) = (&barrier, &started, &tensors, config(id));
                scope.spawn(move || {
                    single_thread_runtime().block_on(async {
                        let connected = Worker::connect(config).await;
                        barrier.wait();
                        let mut worker = connected?;
                        worker.declare_all(tensors).await?;
                        let t0 = *started.get_or_init(Instant::now);
                        let steps = train::train(
                            &mut worker,
                            &spec.job,
                            &data.train,
                            t0,
                            &mut ps_worker::CheckpointWatch::new(),
                            &mut |_| progress.inc(1),
                        )
                        .await?;
                        worker.leave().await?;
                        Ok::<_, WorkerError>(steps)
                    })
                })
            })
            .collect();
        let observer = scope.spawn(|| {
            single_thread_runtime().block_on(observe(
                WorkerConfig { metrics: None, ..config(0) },
                &tensors,
                &barrier,
                &started,
                done_rx,
                spec.snapshot_every,
            ))
        });
        let mut steps = Vec::new();
        let mut first_error = None;
        for h in handles {
            match h.join().expect("worker thread panicked") {
                Ok(s) => steps.extend(s),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        done.send_replace(true);
        let wall = started.get().map(Instant::elapsed).unwrap_or_default();
        let snapshots = observer.join().expect("observer thread panicked")?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(RunResult { policy: spec.policy, steps, snapshots, wall }),
        }
    })
}

fn single_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime")
}

/// Snapshots the parameters every `every` until `done` turns true, then once more.
async fn observe(
    config: WorkerConfig,
    tensors: &[TensorDecl],
    barrier: &Barrier,
    started: &OnceLock<Instant>,
    mut done: watch::Receiver<bool>,
    every: Duration,
) -> Result<Vec<Snapshot>, WorkerError> {
    let connected = Worker::observer(config).await;
    barrier.wait();
    let mut observer = connected?;
    observer.declare_all(tensors).await?;
    let t0 = *started.get_or_init(Instant::now);
    let mut snapshots = Vec::new();
    loop {
        let finished = *done.borrow_and_update();
        let mut params = BTreeMap::new();
        let mut clock = u64::MAX;
        for t in tensors {
            let (value, versions) = observer.observe(t.name()).await?;
            clock = clock.min(versions.iter().min().map_or(0, |v| (v + 1) as u64));
            params.insert(t.name().to_string(), value);
        }
        snapshots.push(Snapshot { wall: t0.elapsed(), clock, params });
        if finished {
            return Ok(snapshots);
        }
        // Sample again after `every`, or at once when the workers are done.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.changed() => {}
        }
    }
}
