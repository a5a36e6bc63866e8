//! `ps-worker`: one worker of the built-in training job (Fashion-MNIST by
//! default) against a running cluster of `ps-server` shards, and the
//! operator's `ps-worker checkpoint`. Arguments and signals only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use ps_examples::access::AccessArgs;
use ps_examples::job::data;
use ps_examples::job::model::{Model, ModelKind};
use ps_examples::job::train::{self, Persistent, Stragglers, TrainConfig};
use ps_proto::{ClusterSpec, WireDtype};
use ps_server::logging::{self, LogFormat};
use ps_worker::{Worker, WorkerConfig, WorkerError};

/// How long a worker that finished training waits for the checkpoints it
/// asked for to complete or fail.
const CHECKPOINT_PATIENCE: Duration = Duration::from_secs(30);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run one worker of the built-in training job against a running cluster.
///
/// Start the shards first (see `ps-server --help`), then one ps-worker per
/// worker id 0..W with the same shard list. Each worker trains on its own
/// disjoint share of the data, pulls parameters, pushes gradients, and at the
/// end prints the test accuracy of the final parameters.
///
/// Example, worker 0 of a 2-shard cluster:
///
///   ps-worker --shards 127.0.0.1:7070,127.0.0.1:7071 --worker 0
///
/// The optimizer (kind, learning rate, momentum) is the shards' setting
/// (`ps-server --optimizer --lr --momentum`): workers declare the tensors
/// without one, so a cluster has one source of truth for it.
///
/// `ps-worker checkpoint --shards ...` asks a running cluster for a
/// checkpoint instead (see `ps-worker checkpoint --help`).

#[derive(Debug, Parser)]
#[command(
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Comma-separated addresses of all shards, in shard-id order.
    #[arg(long, value_delimiter = ',', required_unless_present = "cluster")]
    shards: Option<Vec<String>>,

    /// TOML cluster spec: `shards = ["host:port", ...]`, optionally `split_threshold = N`.
    #[arg(long, conflicts_with = "shards")]
    cluster: Option<PathBuf>,

    /// Tensors with at least this many elements are split over all shards; must match the shards.
    #[arg(long, default_value_t = ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD)]
    split_threshold: u64,

    /// This worker's id, 0..W (W is the shards' --workers).
    #[arg(long, required = true)]
    worker: Option<u32>,

    /// Model to train.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelKind,

    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 128)]
    hidden: usize,

    /// Examples per step on this worker.
    #[arg(long, default_value_t = 32)]
    batch: usize,

    /// Passes over this worker's share of the training set (with the
    /// shards' default optimizer, 5 reach about 0.86 test accuracy with 4
    /// workers under every policy).
    #[arg(long, default_value_t = 5)]
    epochs: u64,

    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,

    /// Seed of the weights and the data shuffle (the same on every worker).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Directory with train-/t10k- images and labels in IDX format (optionally
    /// .gz, with SHA256SUMS) [default: the shipped Fashion-MNIST,
    /// examples/data/fashion-mnist under the working directory, or
    /// data/fashion-mnist when run from examples/].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Chance per step that this worker is delayed (injected transient straggler).
    #[arg(long, default_value_t = 0.0)]
    straggler_probability: f64,

    /// A delayed step takes this many times its normal time.
    #[arg(long, default_value_t = 5.0)]
    straggler_factor: f64,

    /// This worker is always this many times slower (injected persistent straggler).
    #[arg(long, default_value_t = 1.0)]
    slowdown: f64,

    /// Request a checkpoint at every clock that is a multiple of this (the
    /// shards need --checkpoint-dir). Every worker should use the same value.
    #[arg(long)]
    checkpoint_every: Option<u64>,

    /// After training, write the final parameters this worker pulled to
    /// DIR/<tensor>.f32 (raw little-endian f32, row-major) with shapes in
    /// DIR/tensors.json, e.g. to compare with a checkpoint.
    #[arg(long)]
    dump_dir: Option<PathBuf>,

    #[command(flatten)]
    access: AccessArgs,

    /// Seconds a request that fails transiently (shard not up yet,
    /// unreachable or restarting) is retried before the worker gives up,
    /// with exponential backoff and jitter of up to 2 s between attempts.
    /// The worker logs the wait every 5 s, naming the shard.
    #[arg(long, default_value_t = ps_worker::retry::DEFAULT_GIVE_UP_AFTER.as_secs_f64())]
    retry_for: f64,

    /// Give up on a request after this many attempts, even within --retry-for [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,

    /// Wire encoding of pushes and pulls.
    #[arg(long, default_value = "f32")]
    wire_dtype: WireDtype,

    /// Address of the HTTP endpoint serving /metrics (Prometheus) and /healthz while training; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: String,

    /// Log a progress line every this many steps.
    #[arg(long, default_value_t = 100)]
    log_every: u64,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Operator commands against a running cluster.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Take a consistent checkpoint of a running cluster and wait until it is complete.
    ///
    /// Without --clock, picks the highest clock any worker is at (in sync,
    /// the round in progress), so the checkpoint completes as soon as the
    /// slowest worker gets there. Every shard must have been started with
    /// --checkpoint-dir. Prints the checkpoint's directory.
    Checkpoint {
        /// Comma-separated addresses of all shards, in shard-id order.
        #[arg(long, value_delimiter = ',', required_unless_present = "cluster")]
        shards: Option<Vec<String>>,
        /// TOML cluster spec: `shards = ["host:port", ...]`.
        #[arg(long, conflicts_with = "shards")]
        cluster: Option<PathBuf>,
        /// The checkpoint holds exactly the updates of clocks below this.
        #[arg(long)]
        clock: Option<u64>,
        /// Return once every shard knows the checkpoint, without waiting for it to be written.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        access: AccessArgs,
    },
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

fn cluster_spec(
    shards: Option<&Vec<String>>,
    cluster: Option<&PathBuf>,
    split_threshold: u64,
) -> Result<ClusterSpec, Failure> {
    if let Some(list) = shards {
        return Ok(ClusterSpec { shards: list.clone(), split_threshold });
    }
    let path = cluster.ok_or_else(|| Failure::Usage("give --shards or --cluster".into()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::Usage(format!("invalid cluster spec {}: {e}", path.display())))
}

/// Refuses job settings that make no sense, naming the flag.
fn check_job(args: &Args) -> Result<(), String> {
    let at_least_one =
        [("--batch", args.batch as u64), ("--hidden", args.hidden as u64), ("--epochs", args.epochs)];
    for (flag, value) in at_least_one {
        if value == 0 {
            return Err(format!("{flag} must be at least 1, got 0"));
        }
    }
    if !(args.retry_for.is_finite() && args.retry_for >= 0.0) {
        return Err(format!("--retry-for must be a number of seconds >= 0, got {}", args.retry_for));
    }
    if args.checkpoint_every == Some(0) {
        return Err("--checkpoint-every must be at least 1 (or left out for no checkpoints)".into());
    }
    if !(0.0..=1.0).contains(&args.straggler_probability) {
        return Err(format!("--straggler-probability must be in [0, 1], got {}", args.straggler_probability));
    }
    for (flag, value) in [("--straggler-factor", args.straggler_factor), ("--slowdown", args.slowdown)] {
        if !(value.is_finite() && value >= 1.0) {
            return Err(format!("{flag} must be a factor of at least 1, got {value}"));
        }
    }
    Ok(())
}

/// Refuses `--checkpoint-every` when a shard writes no checkpoints: each
/// request would fail, and the job would go on without any.
async fn checkpoints_possible(worker: &Worker, every: u64) -> Result<(), Failure> {
    let statuses = worker.status().await?;
    match statuses.iter().find(|s| !s.checkpoints) {
        None => Ok(()),
        Some(s) => Err(Failure::Usage(format!(
            "--checkpoint-every {every} asks for checkpoints, but shard {} ({}) was started without \
             --checkpoint-dir: start every ps-server with the same --checkpoint-dir DIR, or drop \
             --checkpoint-every",
            s.shard,
            worker.cluster().shards.get(s.shard as usize).map_or("?", String::as_str),
        ))),
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let spec = cluster_spec(args.shards.as_ref(), args.cluster.as_ref(), args.split_threshold)?;
    spec.validate().map_err(Failure::Usage)?;
    let id = args.worker.ok_or_else(|| Failure::Usage("give --worker ID".into()))?;
    check_job(&args).map_err(Failure::Usage)?;
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let splits = data::load(&dir)?;
    let metrics = std::sync::Arc::new(ps_worker::metrics::WorkerMetrics::new(id, None));
    if args.metrics_listen != "off" {
        let listener = tokio::net::TcpListener::bind(&args.metrics_listen).await.map_err(|e| {
            Failure::Usage(format!("cannot listen for metrics on {}: {e}", args.metrics_listen))
        })?;
        let addr = listener.local_addr().map_err(|e| Failure::Usage(e.to_string()))?;
        announce(&format!("ps-worker {} metrics on http://{addr}/metrics", id));
        let registry = metrics.registry().clone();
        tokio::spawn(async move {
            let served =
                ps_proto::exposition::serve(listener, move || vec![registry.clone()], std::future::pending());
            if let Err(e) = served.await {
                tracing::error!("metrics endpoint failed: {e}");
            }
        });
    }
    let config = WorkerConfig {
        wire_dtype: args.wire_dtype,
        metrics: Some(std::sync::Arc::clone(&metrics)),
        retry: ps_worker::RetryPolicy {
            max_attempts: args.max_attempts.unwrap_or(u32::MAX),
            give_up_after: Duration::from_secs_f64(args.retry_for),
            ..Default::default()
        },
        ..WorkerConfig::new(spec, id)
    };
    let config = args.access.apply(config).map_err(Failure::Usage)?;
    let mut worker = Worker::connect(config).await?;
    if let Some(every) = args.checkpoint_every {
        checkpoints_possible(&worker, every).await?;
    }
    let cfg = TrainConfig {
        model: Model {
            kind: args.model,
            inputs: splits.train.features(),
            hidden: args.hidden,
            classes: data::CLASSES,
            seed: args.seed,
        },
        batch: args.batch,
        epochs: args.epochs,
        seed: args.seed,
        workers: worker.num_workers(),
        optimizer: None,
        stragglers: Stragglers {
            transient_probability: args.straggler_probability,
            transient_factor: args.straggler_factor,
            persistent: (args.slowdown > 1.0).then_some(Persistent { worker: id, slowdown: args.slowdown }),
            seed: args.seed,
        },
        max_steps: args.max_steps,
        checkpoint_every: args.checkpoint_every,
    };
    train::declare(&mut worker, &cfg).await?;
    let total = cfg.total_steps(splits.train.len());
    let optimizer = worker.default_optimizer().map_or_else(|| "unknown".to_string(), |o| o.to_string());
    let policy = worker.default_policy().map_or_else(|| "unknown".to_string(), |p| p.to_string());
    tracing::info!(
        worker = id, workers = cfg.workers, clock = worker.clock(), steps = total, %policy, %optimizer,
        "training (policy and optimizer are the shards')"
    );
    let started = Instant::now();
    let log_every = args.log_every.max(1);
    let mut blocked = Duration::ZERO;
    let mut records = Vec::new();
    let mut recoveries = 0;
    let mut checkpoints = ps_worker::CheckpointWatch::new();
    // A shard may restart after this worker's last step but before its final
    // read: then its steps after the checkpoint are undone, so train again.
    let params = loop {
        records.extend(
            train::train(&mut worker, &cfg, &splits.train, started, &mut checkpoints, &mut |r| {
                blocked += r.blocked;
                if (r.clock + 1) % log_every == 0 {
                    tracing::info!(clock = r.clock, loss = r.loss, staleness = r.staleness, "step");
                }
            })
            .await?,
        );
        match worker.pull().await {
            Err(WorkerError::ShardRestarted { restart, .. }) if recoveries < train::MAX_RECOVERIES => {
                recoveries += 1;
                let clock = worker.recover(&restart).await?;
                records.retain(|r| r.clock < clock);
            }
            other => break other?,
        }
    };
    if let Some(dir) = &args.dump_dir {
        dump(dir, &params.values, worker.clock())?;
    }
    let accuracy = cfg.model.accuracy(&params.values, splits.test.images.view(), &splits.test.labels);
    metrics.accuracy(accuracy);
    match checkpoints.finish(&worker, CHECKPOINT_PATIENCE).await {
        Ok(failures) => {
            for f in failures {
                tracing::warn!(checkpoint = %f.name, shard = f.shard, error = %f.error, "checkpoint failed");
            }
            if !checkpoints.pending().is_empty() {
                tracing::warn!(
                    pending = ?checkpoints.pending(),
                    "checkpoints still not complete after {CHECKPOINT_PATIENCE:?}; not waiting for them"
                );
            }
        }
        Err(e) => tracing::warn!("cannot learn how the checkpoints this worker asked for ended: {e}"),
    }
    worker.leave().await?;
    let elapsed = started.elapsed();
    announce(&format!(
        "worker {} done: {} steps in {:.1}s ({:.1} steps/s), blocked {:.1}s, final loss {:.4}, test accuracy {:.4}",
        id,
        records.len(),
        elapsed.as_secs_f64(),
        records.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        blocked.as_secs_f64(),
        records.last().map_or(f32::NAN, |r| r.loss),
        accuracy
    ));
    if checkpoints.all_failed() {
        return Err(Failure::Usage(format!(
            "every checkpoint this worker asked for failed ({} of {})",
            checkpoints.failed(),
            checkpoints.failed() + checkpoints.complete()
        )));
    }
    Ok(())
}

/// `ps-worker checkpoint`: requests a checkpoint and waits for it.
async fn checkpoint_command(
    shards: Option<Vec<String>>,
    cluster: Option<PathBuf>,
    clock: Option<u64>,
    no_wait: bool,
    access: AccessArgs,
) -> Result<(), Failure> {
    let spec = cluster_spec(shards.as_ref(), cluster.as_ref(), ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD)?;
    let config = access.apply(WorkerConfig::new(spec, 0)).map_err(Failure::Usage)?;
    let mut observer = Worker::observer(config).await?;
    // Without a clock: the highest clock any worker is at (sync: the round in
    // progress), which no update has passed yet; retried further ahead if the
    // workers overtake the request.
    let mut attempt = 0u32;
    let name = loop {
        let target = match clock {
            Some(c) => c,
            None => {
                let statuses = observer.status().await?;
                let highest = statuses
                    .iter()
                    .flat_map(|s| s.tensors.iter())
                    .flat_map(|t| t.versions.iter().map(|v| (v + 1).max(0) as u64).chain([t.applied_clock]))
                    .max()
                    .unwrap_or(0);
                highest + u64::from(attempt) * 4
            }
        };
        match observer.checkpoint(target).await {
            Ok(name) => break name,
            Err(e) if clock.is_none() && attempt < 5 && e.code() == Some(tonic::Code::FailedPrecondition) => {
                tracing::info!("workers overtook clock {target}, trying a later one: {e}");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if no_wait {
        announce(&format!("checkpoint {name} requested"));
        return Ok(());
    }
    let done = observer.wait_checkpoint(&name).await?;
    announce(&format!("checkpoint complete at clock {}: {} ({} bytes)", done.clock, done.dir, done.bytes));
    Ok(())
}

/// Writes each tensor as raw little-endian f32 plus a JSON index of shapes.
fn dump(
    dir: &std::path::Path,
    values: &std::collections::BTreeMap<String, ndarray::ArrayD<f32>>,
    clock: u64,
) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::Usage(format!("cannot write to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut shapes = std::collections::BTreeMap::new();
    for (name, value) in values {
        let bytes: Vec<u8> = value.iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = dir.join(format!("{}.f32", name.replace('/', "_")));
        std::fs::write(&file, bytes).map_err(fail)?;
        shapes.insert(name.clone(), value.shape().to_vec());
    }
    let index = serde_json::json!({ "clock": clock, "shapes": shapes });
    std::fs::write(dir.join("tensors.json"), index.to_string()).map_err(fail)
}

/// Prints a line to stdout; a closed stdout is not a reason to stop training.
fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ps-worker: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let done = match args.command {
        Some(Command::Checkpoint { shards, cluster, clock, no_wait, access }) => {
            runtime.block_on(checkpoint_command(shards, cluster, clock, no_wait, access))
        }
        None => runtime.block_on(run(args)),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ps-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
