//! `compare`: trains the same model under sync, ssp and async on a
//! parameter-server cluster, and against a compute-only baseline, then writes
//! a CSV, plots and the summary and consistency tables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ps_examples::job::data::{self, Splits};
use ps_examples::job::model::{Model, ModelKind};
use ps_examples::job::train::{Persistent, Stragglers, TrainConfig};
use ps_examples::report::{self, Outcome};
use ps_examples::run::{self, RunSpec};
use ps_examples::{baseline, plot};
use ps_proto::{ClusterSpec, OptimizerKind, Policy, WireDtype};
use ps_server::{LocalCluster, ShardConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A persistent straggler, written `worker=0,slowdown=3`.
#[derive(Clone, Copy, Debug)]
struct StragglerArg(Persistent);

impl std::str::FromStr for StragglerArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut worker, mut slowdown) = (None, None);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("worker", v)) => worker = v.parse().ok(),
                Some(("slowdown", v)) => slowdown = v.parse::<f64>().ok().filter(|x| *x >= 1.0),
                _ => return Err(format!("unknown straggler setting {kv:?}; expected worker=N,slowdown=X")),
            }
        }
        match (worker, slowdown) {
            (Some(worker), Some(slowdown)) => Ok(StragglerArg(Persistent { worker, slowdown })),
            _ => Err(format!("{s:?}: expected worker=N,slowdown=X with X >= 1")),
        }
    }
}

/// Compare sync, bounded-staleness and async training on a parameter server.
///
/// Trains the same model on Fashion-MNIST under each policy, with W workers
/// and S shards talking real gRPC over 127.0.0.1 (an embedded cluster, or
/// the one given by --shards), and once in a single process without the
/// server (the compute-only baseline). Workers are injected with seeded
/// stragglers, because without them the policies barely differ.
///
/// Writes to --out: steps.csv (every step and evaluation), accuracy_vs_time,
/// loss_vs_time and loss_vs_clock (.png and .svg), and summary.md with the
/// summary and consistency tables, which are also printed.
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Model to train.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelKind,

    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 128)]
    hidden: usize,

    /// Policies to run, comma-separated: sync, sync+backup(B) (B backup
    /// workers: rounds close on the first W-B gradients), ssp:N (or
    /// ssp(N), quoted), ssp:N:scaled, async, async(scaled) (updates scaled
    /// by min(1, (W-1)/staleness)) or async(inverse) (by 1/max(1,
    /// staleness)). Quote the parentheses in a shell.
    #[arg(long, value_delimiter = ',', default_value = "sync,ssp:1,ssp:3,ssp:10,async")]
    policies: Vec<Policy>,

    /// Workers W.
    #[arg(long, default_value_t = 4)]
    workers: u32,

    /// Shards S of the embedded cluster.
    #[arg(long, default_value_t = 2)]
    shards: u32,

    /// Use this running cluster (comma-separated shard addresses, started with --workers W) instead of an embedded one.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<String>>,

    /// Examples per worker per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,

    /// Passes over each worker's share of the training set.
    #[arg(long, default_value_t = 10)]
    epochs: u64,

    /// Stop each run after this many steps per worker.
    #[arg(long)]
    max_steps: Option<u64>,

    /// Server-side optimizer: sgd, adam or adagrad.
    #[arg(long, default_value = "sgd")]
    optimizer: OptimizerKind,

    /// Learning rate.
    #[arg(long, default_value_t = 0.3)]
    lr: f32,

    /// SGD momentum. Staleness itself acts like momentum, so explicit
    /// momentum changes ssp and async more than sync (see README).
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,

    /// Chance per step and worker of a transient straggler.
    #[arg(long, default_value_t = 0.1)]
    straggler_probability: f64,

    /// A transient straggler's step takes this many times its normal time.
    #[arg(long, default_value_t = 5.0)]
    straggler_factor: f64,

    /// A persistent straggler, e.g. worker=0,slowdown=3.
    #[arg(long)]
    straggler: Option<StragglerArg>,

    /// Turn off all injected stragglers.
    #[arg(long)]
    no_stragglers: bool,

    /// Test accuracy whose wall-clock time the summary reports [default: 0.80 softmax, 0.85 mlp].
    #[arg(long)]
    target_accuracy: Option<f32>,

    /// Seconds between parameter snapshots for the accuracy curves.
    #[arg(long, default_value_t = 0.1)]
    snapshot_every: f64,

    /// Test examples each curve point is evaluated on (the final accuracy uses all).
    #[arg(long, default_value_t = 2000)]
    eval_examples: usize,

    /// Seed of weights, data order and stragglers.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Directory with train-/t10k- images and labels in IDX format (optionally
    /// .gz, with SHA256SUMS) [default: the shipped Fashion-MNIST,
    /// examples/data/fashion-mnist under the working directory, or
    /// data/fashion-mnist when run from examples/].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Wire encoding of pushes and pulls: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    wire_dtype: WireDtype,

    /// Output directory [default: out/compare-<model>].
    #[arg(long)]
    out: Option<PathBuf>,

    /// Write consistent checkpoints of each policy's run under DIR/<policy> (embedded cluster only).
    #[arg(long, requires = "checkpoint_every")]
    checkpoint_dir: Option<PathBuf>,

    /// Checkpoint every this many clocks (with --checkpoint-dir, or an external --cluster whose shards have one).
    #[arg(long)]
    checkpoint_every: Option<u64>,

    /// Serve the shards' and workers' Prometheus metrics on this address while running (e.g. 127.0.0.1:9400).
    #[arg(long)]
    metrics_listen: Option<String>,

    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// A directory name for a policy label: `ssp(3)` becomes `ssp-3`.
fn policy_label_dir(label: &str) -> String {
    label.replace('(', "-").replace(')', "")
}

fn bar(multi: &MultiProgress, label: &str, len: u64) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} steps {per_sec:>12} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = multi.add(ProgressBar::new(len));
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    ps_server::logging::init(ps_server::logging::LogFormat::Text, "warn,compare=info");
    match run_all(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_all(args: &Args) -> Result<(), String> {
    if args.workers == 0 || args.shards == 0 || args.batch == 0 {
        return Err("--workers, --shards and --batch must be at least 1".into());
    }
    if args.checkpoint_every.is_some() && args.checkpoint_dir.is_none() && args.cluster.is_none() {
        return Err("--checkpoint-every needs --checkpoint-dir DIR for the embedded cluster".into());
    }
    if args.checkpoint_every == Some(0) {
        return Err("--checkpoint-every must be at least 1".into());
    }
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let splits = Arc::new(data::load(&dir).map_err(|e| e.to_string())?);
    let model = Model {
        kind: args.model,
        inputs: splits.train.features(),
        hidden: args.hidden,
        classes: data::CLASSES,
        seed: args.seed,
    };
    let stragglers = if args.no_stragglers {
        Stragglers::none()
    } else {
        Stragglers {
            transient_probability: args.straggler_probability,
            transient_factor: args.straggler_factor,
            persistent: args.straggler.map(|s| s.0),
            seed: args.seed,
        }
    };
    let job = TrainConfig {
        model,
        batch: args.batch,
        epochs: args.epochs,
        seed: args.seed,
        workers: args.workers,
        optimizer: Some(args.optimizer.with_defaults(Some(args.lr)).with_momentum(args.momentum)),
        stragglers,
        max_steps: args.max_steps,
        checkpoint_every: args.checkpoint_every,
    };
    let target = args.target_accuracy.unwrap_or(match args.model {
        ModelKind::Softmax => 0.80,
        ModelKind::Mlp => 0.85,
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("out/compare-{:?}", args.model).to_lowercase()));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let steps = job.total_steps(splits.train.len());
    let multi = MultiProgress::new();
    if args.quiet {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    tracing::info!(
        model = ?args.model, workers = args.workers, shards = args.shards, steps_per_worker = steps,
        stragglers = ?job.stragglers, "comparing {} policies", args.policies.len()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Tokio runtime: {e}"))?;
    let snapshot_every = Duration::from_secs_f64(args.snapshot_every.max(0.05));
    let board: Option<run::MetricsBoard> = match &args.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!("metrics on http://{local}/metrics");
            let board = run::MetricsBoard::default();
            let served = std::sync::Arc::clone(&board);
            runtime.spawn(ps_proto::exposition::serve(
                listener,
                move || served.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                std::future::pending(),
            ));
            Some(board)
        }
    };
    let bars: Vec<ProgressBar> = args
        .policies
        .iter()
        .map(|p| bar(&multi, &p.to_string(), steps * u64::from(args.workers)))
        .chain(std::iter::once(bar(&multi, "baseline", steps)))
        .collect();
    let mut outcomes = Vec::new();
    for (i, policy) in args.policies.iter().enumerate() {
        let (cluster, local) = match &args.cluster {
            Some(list) => (ClusterSpec::new(list.clone()), None),
            None => {
                let checkpoint_dir =
                    args.checkpoint_dir.as_ref().map(|d| d.join(policy_label_dir(&policy.to_string())));
                let config =
                    ShardConfig { num_workers: args.workers, checkpoint_dir, ..ShardConfig::default() }
                        .with_default_policy(*policy);
                let local = runtime
                    .block_on(LocalCluster::start(args.shards, config))
                    .map_err(|e| format!("cannot start the embedded cluster: {e}"))?;
                if let Some(board) = &board {
                    *board.lock().unwrap_or_else(|p| p.into_inner()) = local.registries().to_vec();
                }
                (local.spec().clone(), Some(local))
            }
        };
        let spec = RunSpec {
            policy: *policy,
            cluster,
            namespace: if args.cluster.is_some() {
                format!("compare-{}-{i}-{}", std::process::id(), policy)
            } else {
                String::new()
            },
            job: job.clone(),
            wire_dtype: args.wire_dtype,
            snapshot_every,
            board: board.clone(),
        };
        let result = run::run(&spec, &splits, &bars[i]).map_err(|e| format!("{}: {e}", policy))?;
        bars[i].finish();
        if let Some(local) = local {
            runtime.block_on(local.shutdown()).map_err(|e| format!("stopping the embedded cluster: {e}"))?;
        }
        let (curve, final_accuracy) =
            report::evaluate(&model, &result.snapshots, &splits.test, &splits.test, args.eval_examples);
        tracing::info!(policy = %policy.to_string(), wall_s = result.wall.as_secs_f64(), final_accuracy, "run done");
        let backup = policy.backup_workers();
        outcomes.push(Outcome {
            label: policy.to_string(),
            // With backup workers, worker clocks and rounds move apart:
            // rounds are checked instead of clock staleness.
            bound: policy.staleness_bound().filter(|_| backup == 0),
            quorum: (backup > 0).then(|| args.workers - backup),
            workers: args.workers,
            total_steps: result.steps.len() as u64,
            clocks: steps,
            steps: result.steps,
            curve,
            final_accuracy,
            wall: result.wall,
            baseline_loss: Vec::new(),
        });
    }
    let base = baseline::train(&job, &splits, snapshot_every, &bars[args.policies.len()]);
    bars[args.policies.len()].finish();
    let (curve, final_accuracy) =
        report::evaluate(&model, &base.snapshots, &splits.test, &splits.test, args.eval_examples);
    outcomes.insert(
        0,
        Outcome {
            label: "baseline".into(),
            bound: None,
            quorum: None,
            workers: 1,
            steps: Vec::new(),
            curve,
            final_accuracy,
            wall: base.wall,
            total_steps: steps * u64::from(args.workers),
            clocks: steps,
            baseline_loss: base.losses,
        },
    );
    let params: usize = job.tensors().iter().map(|t| t.shape().iter().product::<usize>()).sum();
    write_outputs(&out, &outcomes, target, &splits, args, params)
}

fn write_outputs(
    out: &std::path::Path,
    outcomes: &[Outcome],
    target: f32,
    splits: &Splits,
    args: &Args,
    params: usize,
) -> Result<(), String> {
    report::write_csv(&out.join("steps.csv"), outcomes)
        .map_err(|e| format!("{}: {e}", out.join("steps.csv").display()))?;
    let accuracy: Vec<plot::Series> = outcomes
        .iter()
        .map(|o| (o.label.clone(), o.curve.iter().map(|p| (p.wall, f64::from(p.accuracy))).collect()))
        .collect();
    plot::line_chart(
        &out.join("accuracy_vs_time"),
        "Test accuracy vs wall time",
        "seconds",
        "test accuracy",
        &accuracy,
    )?;
    let mut by_time = Vec::new();
    let mut by_clock = Vec::new();
    for o in outcomes {
        if o.steps.is_empty() {
            let n = o.baseline_loss.len().max(1) as f64;
            let per_clock: Vec<(f64, f64)> =
                o.baseline_loss.iter().enumerate().map(|(c, l)| (c as f64, f64::from(*l))).collect();
            by_time.push((
                o.label.clone(),
                plot::smooth(
                    &per_clock
                        .iter()
                        .map(|(c, l)| ((c + 1.0) / n * o.wall.as_secs_f64(), *l))
                        .collect::<Vec<_>>(),
                    50,
                ),
            ));
            by_clock.push((o.label.clone(), plot::smooth(&per_clock, 50)));
            continue;
        }
        let mut steps: Vec<(f64, f64)> =
            o.steps.iter().map(|s| (s.wall.as_secs_f64(), f64::from(s.loss))).collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        by_time.push((o.label.clone(), plot::smooth(&steps, 200)));
        let mut sums = vec![(0.0, 0u32); o.clocks as usize];
        for s in &o.steps {
            if let Some(slot) = sums.get_mut(s.clock as usize) {
                slot.0 += f64::from(s.loss);
                slot.1 += 1;
            }
        }
        let per_clock: Vec<(f64, f64)> = sums
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 > 0)
            .map(|(c, s)| (c as f64, s.0 / f64::from(s.1)))
            .collect();
        by_clock.push((o.label.clone(), plot::smooth(&per_clock, 50)));
    }
    plot::line_chart(
        &out.join("loss_vs_time"),
        "Training loss vs wall time",
        "seconds",
        "loss (smoothed)",
        &by_time,
    )?;
    plot::line_chart(
        &out.join("loss_vs_clock"),
        "Training loss vs clock",
        "clock",
        "loss (smoothed)",
        &by_clock,
    )?;

    let rows = report::summarize(outcomes, target);
    let summary = report::summary_table(&rows, target);
    let (consistency, _) = report::consistency_table(outcomes);
    let setup = format!(
        "model {:?}, {} workers, {} shards, batch {} per worker, {} epochs, {:?} lr {}, stragglers: {}, {} train / {} test examples",
        args.model,
        args.workers,
        if args.cluster.is_some() { "external".to_string() } else { args.shards.to_string() },
        args.batch,
        args.epochs,
        args.optimizer,
        args.lr,
        if args.no_stragglers {
            "none".to_string()
        } else {
            format!(
                "transient p = {} x{}{}",
                args.straggler_probability,
                args.straggler_factor,
                args.straggler
                    .map(|s| format!(", persistent worker {} x{}", s.0.worker, s.0.slowdown))
                    .unwrap_or_default()
            )
        },
        splits.train.len(),
        splits.test.len()
    );
    // Every worker step pushes and pulls every parameter once.
    let step_bytes = 2 * params * args.wire_dtype.size();
    let worker_steps: u64 = outcomes.iter().filter(|o| !o.steps.is_empty()).map(|o| o.total_steps).sum();
    let wire = format!(
        "Wire encoding {}: {:.1} KiB of tensor payload per worker step (push + pull of {params} parameters), {:.2} of f32; {:.1} MiB over the {worker_steps} worker steps of these runs ({:.1} MiB saved against f32).",
        args.wire_dtype.name(),
        step_bytes as f64 / 1024.0,
        args.wire_dtype.size() as f64 / 4.0,
        step_bytes as f64 * worker_steps as f64 / f64::from(1 << 20),
        (2 * params * (4 - args.wire_dtype.size())) as f64 * worker_steps as f64 / f64::from(1 << 20),
    );
    let text = format!(
        "Setup: {setup}\n\n{wire}\n\n{summary}\nConsistency, checked from every pull's version vectors:\n\n{consistency}"
    );
    std::fs::write(out.join("summary.md"), &text)
        .map_err(|e| format!("{}: {e}", out.join("summary.md").display()))?;
    println!(
        "\n{text}\nWrote {}/{{steps.csv, summary.md, accuracy_vs_time, loss_vs_time, loss_vs_clock}}",
        out.display()
    );
    Ok(())
}
