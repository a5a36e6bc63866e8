//! `ps-bench`: end-to-end push/pull throughput and latency against real
//! `ps-server` processes, with the raw TCP loopback and memcpy baselines
//! measured in the same run.
//!
//! For every combination of tensor size, shard count, worker count and
//! policy it starts the shards as separate processes (the `ps-server` next
//! to this binary), runs each worker on its own thread of this process doing
//! push-then-pull of one tensor (one `PushPull` RPC per step from shared
//! gradients, or with `--steps separate` a `Push` then a `Pull`), and
//! reports GB/s of f32 payload moved (push bytes + pull bytes, all
//! workers), latency p50/p99 of one push+pull, the shards' peak RSS, and
//! the ratios to the baselines. The TCP baseline is measured right before
//! each configuration, as round trips of the tensor's size. For f16 and
//! bf16 a second pump, which encodes and decodes as every transport of that
//! encoding must, shows the most the encoding can gain on the machine.
//!
//! With `--models` each step moves a model's tensors instead of one tensor
//! (given as a list of shapes or a preset such as `resnet18`), so the cost
//! of many tensors per step shows against one tensor of the same bytes
//! (`one:resnet18`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use ps_benches::models::{Load, cpu_model};
use ps_proto::{ClusterSpec, WireDtype};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// End-to-end push/pull benchmark against real ps-server processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Tensor sizes in bytes of f32 (suffixes K, M and G are powers of 1024).
    #[arg(long, value_delimiter = ',', default_value = "4K,64K,1M,4M,64M,256M")]
    sizes: Vec<String>,
    /// Instead of --sizes, models whose tensors every step pushes and pulls
    /// together: `resnet18` (its 62 parameter tensors, 11.7 M f32), or
    /// COUNT*DIMS terms joined by + (`100*4096` is 100 tensors of 4,096
    /// f32; `2*64x64+1*10`); prefix `one:` for one tensor of the same total
    /// size (`one:resnet18`). Separate models with commas.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Shard counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    shards: Vec<u32>,
    /// Worker counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<u32>,
    /// Policies: sync, ssp, async.
    #[arg(long, value_delimiter = ',', default_value = "async,sync")]
    policies: Vec<String>,
    /// Wire encodings of pushes and pulls: f32, f16, bf16. Throughput is
    /// always counted in bytes of f32 payload, so f16 can show its gain.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    wire_dtypes: Vec<WireDtype>,
    /// Run every worker as a task of one runtime with this many threads
    /// (1: a current-thread runtime). By default each worker has its own
    /// thread and current-thread runtime, as separate `ps-worker`
    /// processes (each on a current-thread runtime) would.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    client_threads: Option<u16>,
    /// `--threads` of every shard (default: the shard's own default, 1).
    #[arg(long)]
    shard_threads: Option<u16>,
    /// How a worker's step talks to the shards: `push-pull` is
    /// `Worker::push_pull`, one Step request per shard whose reply carries
    /// the values of the next clock (one round trip); `separate` is a push
    /// and then a pull (two round trips); `step-into` is `Worker::step_into`
    /// as a user's loop calls it, gradients borrowed (`ArrayD`) and the
    /// previous step's arrays reused for the pulled values.
    #[arg(long, value_delimiter = ',', default_value = "push-pull")]
    steps: Vec<Step>,
    /// How the workers hold their gradients: `shared` (`ArcArray`, which a
    /// push-pull sends from its own memory when the wire dtype is f32) or
    /// `borrowed` (`ArrayD`, copied onto the wire). `separate` steps always
    /// borrow.
    #[arg(long, value_enum, default_value = "shared")]
    gradients: Gradients,
    /// Minimum timed push+pull iterations per worker and configuration. Each
    /// worker first runs 3 untimed warm-up steps, and timing runs for at
    /// least 1 s unless --seconds is shorter.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Stop timing a configuration after this many seconds (at least 3 timed iterations run).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Passed to every shard as --max-push-bytes-in-flight: how many bytes
    /// of decoded gradients a shard receives at once (default: the
    /// shard's, 64 MiB).
    #[arg(long)]
    push_budget: Option<u64>,
    /// Passed to every shard as --sync-piece-bytes: sync parts larger than
    /// this take each push in pieces of this many bytes (default: the
    /// shard's, 16 MiB / workers within 2-8 MiB; 0: whole pushes only).
    #[arg(long)]
    sync_piece_bytes: Option<u64>,
    /// Tensors with at least this many elements are split across the
    /// shards (ps-server's --split-threshold). Default: 1,024 with --sizes,
    /// so that every size is split over the shards of a multi-shard run;
    /// with --models, ps-server's own default (1,048,576), so the model is
    /// placed as on a cluster started with default flags.
    #[arg(long)]
    split_threshold: Option<u64>,
    /// A small, fast run for CI: 4K and 1M, one shard, one worker, async.
    #[arg(long)]
    quick: bool,
    /// Measure every configuration this many times, each with its own
    /// baseline right before it, and print the median and range of the
    /// throughput and of its ratio to TCP after the runs (every run is a
    /// row of the CSV). On a noisy machine one run can mislead.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// CSV output.
    #[arg(long, default_value = "target/ps-bench.csv")]
    csv: PathBuf,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let bytes = ps_proto::byte_size::parse(s)?;
    usize::try_from(bytes).map_err(|_| format!("size {s:?} is more than this machine can address"))
}

use ps_server::process::ShardProcess as Shard;

fn start_shards(
    n: u32,
    workers: u32,
    policy: &str,
    push_budget: Option<u64>,
    sync_piece_bytes: Option<u64>,
    threads: Option<u16>,
    split_threshold: u64,
) -> Result<(Vec<Shard>, ClusterSpec), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("ps-server");
    let (workers, push_budget, sync_piece_bytes, threads) = (
        workers.to_string(),
        push_budget.map(|b| format!("--max-push-bytes-in-flight={b}")),
        sync_piece_bytes.map(|b| format!("--sync-piece-bytes={b}")),
        threads.map(|t| format!("--threads={t}")),
    );
    let mut args = vec!["--metrics-listen", "off", "--workers", &workers, "--policy", policy];
    args.extend(["--max-message-bytes", "67108864"]);
    args.extend([&push_budget, &sync_piece_bytes, &threads].into_iter().flatten().map(String::as_str));
    ps_server::process::start_cluster(&exe, n, split_threshold, &args)
}

/// How the workers hand their gradients to `Worker::push_pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Gradients {
    /// `ArcArray`s, shared with the request.
    Shared,
    /// `ArrayD`s, borrowed and copied onto the wire.
    Borrowed,
}

impl Gradients {
    fn name(self) -> &'static str {
        match self {
            Gradients::Shared => "shared",
            Gradients::Borrowed => "borrowed",
        }
    }
}

/// How one timed step reaches the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Step {
    /// `Worker::push_pull`: one round trip per shard.
    PushPull,
    /// `Worker::push` then `Worker::pull`: two round trips per part.
    Separate,
    /// `Worker::step_into`, a user's loop through the public API: the
    /// gradients borrowed `ArrayD`s, the pulled values read into the
    /// previous step's arrays.
    #[value(name = "step-into")]
    Into,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::PushPull => "push-pull",
            Step::Separate => "separate",
            Step::Into => "step-into",
        }
    }

    /// Runs one step of `w`, with `grads` borrowed or, with `shared`, as
    /// shared `ArcArray`s (which a push-pull sends without a copy);
    /// `step-into` reads into `params`.
    async fn run(
        self,
        w: &mut Worker,
        grads: &BTreeMap<String, ndarray::ArrayD<f32>>,
        shared: Option<&BTreeMap<String, ndarray::ArcArray<f32, ndarray::IxDyn>>>,
        params: &mut ps_worker::Pulled,
    ) -> Result<(), ps_worker::WorkerError> {
        match self {
            Step::Into => w.step_into(grads, params).await,
            Step::PushPull => match shared {
                Some(shared) => w.push_pull(shared).await.map(drop),
                None => w.push_pull(grads).await.map(drop),
            },
            Step::Separate => {
                w.push(grads).await?;
                w.pull().await.map(drop)
            }
        }
    }
}

#[derive(Debug)]
struct Row {
    /// Which of the `--repeat` runs of its configuration this is (from 0).
    run: u32,
    step: Step,
    gradients: Gradients,
    /// The load's name (its size, or its model).
    load: String,
    /// Tensors per step.
    tensors: usize,
    size: usize,
    shards: u32,
    workers: u32,
    policy: String,
    dtype: WireDtype,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    tcp: f64,
    /// The TCP pump that encodes and decodes `dtype` (for f32, `tcp`).
    dtype_pump: f64,
    memcpy: f64,
    peak_rss: u64,
    /// The shards' memory bound for this tensor ([`memory_bound`]).
    bound: u64,
}

/// The memory the shards may hold for one tensor of `size` bytes: 1.15 x
/// (parameters + optimizer state (none: plain SGD) + one aggregation
/// buffer) + 64 MiB per shard, and under sync the gradients a round may
/// hold for their turn in its worker-ordered sum: at most `workers - 1`
/// of each piece, so `workers - 1` tensors' worth.
fn memory_bound(size: u64, shards: u32, workers: u32, policy: &str) -> u64 {
    let held = if policy == "sync" { u64::from(workers.saturating_sub(1)) * size } else { 0 };
    (1.15 * (2 * size) as f64) as u64 + u64::from(shards) * (64 << 20) + held
}

/// Runs `workers` workers against the cluster of `spec`, each doing
/// warm-up steps and then timed push+pull steps of one `size`-byte tensor,
/// and returns the aggregate f32 throughput and every step's latency.
///
/// With `runtime` (from `--client-threads`) the workers are tasks of that
/// runtime; without, each runs on its own thread with its own
/// current-thread runtime, as separate `ps-worker` processes would.
fn measure(
    runtime: Option<&tokio::runtime::Runtime>,
    spec: &ClusterSpec,
    load: &Load,
    workers: u32,
    dtype: WireDtype,
    step: Step,
    args: &Args,
) -> Result<(f64, Vec<Duration>), String> {
    let job = std::sync::Arc::new(WorkerJob {
        spec: spec.clone(),
        tensors: load.tensors.clone(),
        dtype,
        step,
        gradients: args.gradients,
        iterations: args.iterations,
        seconds: args.seconds,
        ready: tokio::sync::Barrier::new(workers as usize),
    });
    let results: Vec<Result<Timed, String>> = match runtime {
        // Tasks, so that a multi-thread runtime runs them in parallel.
        Some(rt) => rt.block_on(futures::future::join_all((0..workers).map(|id| {
            let job = std::sync::Arc::clone(&job);
            async move {
                tokio::spawn(async move { job.run(id).await })
                    .await
                    .unwrap_or_else(|e| Err(format!("worker {id}: {e}")))
            }
        }))),
        None => std::thread::scope(|scope| {
            let threads: Vec<_> = (0..workers)
                .map(|id| {
                    let job = &*job;
                    scope.spawn(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| e.to_string())?
                            .block_on(job.run(id))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|_| Err("a worker thread panicked".into())))
                .collect()
        }),
    };
    let mut all = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for result in results {
        let Timed { latencies, started, ended } = result?;
        all.extend(latencies);
        first = Some(first.map_or(started, |f| f.min(started)));
        last = Some(last.map_or(ended, |l| l.max(ended)));
    }
    let wall = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => return Err("no worker ran".into()),
    };
    Ok((2.0 * load.bytes() as f64 * all.len() as f64 / wall.as_secs_f64(), all))
}

/// What every worker of one configuration runs.
struct WorkerJob {
    spec: ClusterSpec,
    /// Names and shapes of the tensors every step moves.
    tensors: Vec<(String, Vec<usize>)>,
    dtype: WireDtype,
    step: Step,
    gradients: Gradients,
    iterations: usize,
    seconds: f64,
    /// Every worker warms up (first-touch page faults, connection windows
    /// growing, allocator caches) before any timing starts.
    ready: tokio::sync::Barrier,
}

/// One worker's timed steps.
struct Timed {
    latencies: Vec<Duration>,
    started: Instant,
    ended: Instant,
}

impl WorkerJob {
    /// Connects worker `id`, declares the tensors, and runs its steps.
    async fn run(&self, id: u32) -> Result<Timed, String> {
        let config = WorkerConfig { wire_dtype: self.dtype, ..WorkerConfig::new(self.spec.clone(), id) };
        let mut w = Worker::connect(config).await.map_err(|e| e.to_string())?;
        for (name, shape) in &self.tensors {
            w.declare(&TensorDecl::new(name, shape)).await.map_err(|e| e.to_string())?;
        }
        let grads: BTreeMap<String, ndarray::ArrayD<f32>> = self
            .tensors
            .iter()
            .map(|(name, shape)| (name.clone(), ndarray::ArrayD::<f32>::from_elem(shape.clone(), 1e-6)))
            .collect();
        let shared = (self.gradients == Gradients::Shared && self.step == Step::PushPull)
            .then(|| grads.iter().map(|(k, g)| (k.clone(), g.to_shared())).collect::<BTreeMap<_, _>>());
        let mut params = ps_worker::Pulled::default();
        for _ in 0..WARM_UP_STEPS {
            self.step.run(&mut w, &grads, shared.as_ref(), &mut params).await.map_err(|e| e.to_string())?;
        }
        self.ready.wait().await;
        let limit = Duration::from_secs_f64(self.seconds);
        let min = self.iterations;
        let mut latencies = Vec::new();
        let started = Instant::now();
        while latencies.len() < 3
            || ((latencies.len() < min || started.elapsed() < MIN_TIMED) && started.elapsed() < limit)
        {
            let t = Instant::now();
            self.step.run(&mut w, &grads, shared.as_ref(), &mut params).await.map_err(|e| e.to_string())?;
            latencies.push(t.elapsed());
        }
        let ended = Instant::now();
        w.leave().await.map_err(|e| e.to_string())?;
        Ok(Timed { latencies, started, ended })
    }
}

/// Untimed push+pull steps every worker runs first.
const WARM_UP_STEPS: usize = 3;
/// Timed steps continue at least this long (and at least `--iterations`),
/// unless `--seconds` runs out first.
const MIN_TIMED: Duration = Duration::from_secs(1);

/// Prints the median and range, over the runs of one configuration, of its
/// throughput and of each run's ratio to its own TCP baseline.
fn print_median(runs: &[Row]) {
    let median_range = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        (median, v[0], v[v.len() - 1])
    };
    let (gb, gb_lo, gb_hi) = median_range(runs.iter().map(|r| r.throughput / 1e9).collect());
    let (x, x_lo, x_hi) = median_range(runs.iter().map(|r| r.throughput / r.tcp).collect());
    print!(
        "          median of {} runs: {gb:.3} GB/s ({gb_lo:.3}-{gb_hi:.3}), {x:.2}x TCP ({x_lo:.2}-{x_hi:.2})",
        runs.len()
    );
    match runs[0].dtype {
        WireDtype::F32 => println!(),
        dtype => {
            let (p, p_lo, p_hi) = median_range(runs.iter().map(|r| r.dtype_pump / r.tcp).collect());
            println!("; the {dtype} pump moves {p:.2}x TCP ({p_lo:.2}-{p_hi:.2})");
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), String> {
    let mut args = Args::parse();
    if args.quick {
        args.sizes = vec!["4K".into(), "1M".into()];
        args.shards = vec![1];
        args.workers = vec![1];
        args.policies = vec!["async".into()];
        args.iterations = 5;
        args.seconds = 1.0;
    }
    let split_threshold = args.split_threshold.unwrap_or(if args.models.is_empty() {
        1024
    } else {
        ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD
    });
    let loads: Vec<Load> = if args.models.is_empty() {
        args.sizes.iter().map(|s| Ok(Load::one_tensor(s, parse_size(s)?))).collect::<Result<_, String>>()?
    } else {
        args.models.iter().map(|m| Load::parse(m)).collect::<Result<_, _>>()?
    };
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    // The baseline always runs on the same 2-thread runtime, whatever the
    // workers run on, so its figure does not move with --client-threads.
    let baseline_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let runtime = match args.client_threads {
        None => None,
        Some(1) => Some(tokio::runtime::Builder::new_current_thread().enable_all().build()),
        Some(n) => {
            Some(tokio::runtime::Builder::new_multi_thread().worker_threads(n.into()).enable_all().build())
        }
    }
    .transpose()
    .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for load in &loads {
        let size = load.bytes();
        let memcpy = ps_benches::baselines::memcpy(size);
        for &shards in &args.shards {
            for &workers in &args.workers {
                let mut configs = Vec::new();
                for &step in &args.steps {
                    for policy in &args.policies {
                        configs.extend(args.wire_dtypes.iter().map(|&dtype| (step, policy, dtype)));
                    }
                }
                for (step, policy, dtype) in configs {
                    let first = rows.len();
                    for run in 0..args.repeat {
                        // The baseline runs right before each configuration: this
                        // VM's loopback speed drifts by up to 2x over minutes, and
                        // a ratio should compare two measurements of one moment.
                        let tcp =
                            baseline_runtime.block_on(ps_benches::baselines::tcp_pump(size, WireDtype::F32));
                        let dtype_pump = match dtype {
                            WireDtype::F32 => tcp,
                            _ => baseline_runtime.block_on(ps_benches::baselines::tcp_pump(size, dtype)),
                        };
                        let (servers, spec) = start_shards(
                            shards,
                            workers,
                            policy,
                            args.push_budget,
                            args.sync_piece_bytes,
                            args.shard_threads,
                            split_threshold,
                        )?;
                        let (throughput, mut lat) =
                            measure(runtime.as_ref(), &spec, load, workers, dtype, step, &args)?;
                        let peak_rss = servers.iter().filter_map(Shard::peak_rss).sum();
                        drop(servers);
                        let bound = memory_bound(size as u64, shards, workers, policy);
                        let row = Row {
                            run,
                            step,
                            gradients: if step == Step::PushPull {
                                args.gradients
                            } else {
                                Gradients::Borrowed
                            },
                            load: load.name.clone(),
                            tensors: load.tensors.len(),
                            size,
                            shards,
                            workers,
                            policy: policy.clone(),
                            dtype,
                            throughput,
                            p50: pct(&mut lat, 0.5),
                            p99: pct(&mut lat, 0.99),
                            tcp,
                            dtype_pump,
                            memcpy,
                            peak_rss,
                            bound,
                        };
                        println!(
                            "{:<13} {:>3} tensor(s) {:>9} B  {} shard(s) {} worker(s) {:<9} {:<8} {:<5} {:<4}  {:>7.3} GB/s  {:>5.2}x TCP  {:>5.2}x {} pump  {:>6.3}x memcpy  p50 {:>9.1} us  p99 {:>9.1} us  shard RSS {:>6.1} MiB ({:.2}x bound)",
                            row.load,
                            row.tensors,
                            row.size,
                            row.shards,
                            row.workers,
                            row.step.name(),
                            row.gradients.name(),
                            row.policy,
                            row.dtype.name(),
                            row.throughput / 1e9,
                            row.throughput / row.tcp,
                            row.throughput / row.dtype_pump,
                            row.dtype.name(),
                            row.throughput / row.memcpy,
                            row.p50.as_secs_f64() * 1e6,
                            row.p99.as_secs_f64() * 1e6,
                            row.peak_rss as f64 / (1 << 20) as f64,
                            row.peak_rss as f64 / row.bound as f64
                        );
                        rows.push(row);
                    }
                    if args.repeat > 1 {
                        print_median(&rows[first..]);
                    }
                }
            }
        }
    }
    if let Some(dir) = args.csv.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let mut f = std::fs::File::create(&args.csv).map_err(|e| format!("{}: {e}", args.csv.display()))?;
    writeln!(f, "run,load,tensors,size_bytes,shards,workers,step,gradients,policy,wire_dtype,gb_per_s,vs_tcp,vs_memcpy,p50_us,p99_us,tcp_gb_per_s,memcpy_gb_per_s,shard_peak_rss_bytes,memory_bound_bytes,dtype_pump_gb_per_s,vs_dtype_pump")
        .map_err(|e| e.to_string())?;
    for r in &rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.1},{:.1},{:.4},{:.4},{},{},{:.4},{:.4}",
            r.run,
            r.load,
            r.tensors,
            r.size,
            r.shards,
            r.workers,
            r.step.name(),
            r.gradients.name(),
            r.policy,
            r.dtype.name(),
            r.throughput / 1e9,
            r.throughput / r.tcp,
            r.throughput / r.memcpy,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.tcp / 1e9,
            r.memcpy / 1e9,
            r.peak_rss,
            r.bound,
            r.dtype_pump / 1e9,
            r.throughput / r.dtype_pump
        )
        .map_err(|e| e.to_string())?;
    }
    println!("wrote {}", args.csv.display());
    Ok(())
}
