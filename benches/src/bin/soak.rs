//! `soak`: many workers against real shard processes for a long time, to
//! find deadlocks, leaks and errors that short tests miss.
//!
//! Starts `--shards` `ps-server` processes (the binary next to this one) and
//! runs `--workers` workers in this process, each doing pull → push steps on
//! a small model (three tensors, ~105 K floats, like the built-in MLP) for
//! `--duration`. Every `--sample` it prints each shard's resident memory and
//! the steps so far; at the end it reports steps/s, errors, and each shard's
//! RSS right after warm-up versus at the end. It stops by itself; any worker
//! error or a stalled interval (no step anywhere) is reported and fails it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ps_proto::ClusterSpec;
use ps_worker::{TensorDecl, Worker, WorkerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Soak test: many workers, real shard processes, a long run.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Workers (tasks in this process).
    #[arg(long, default_value_t = 64)]
    workers: u32,
    /// Shard processes.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Policy of the shards: sync, ssp or async.
    #[arg(long, default_value = "ssp")]
    policy: String,
    /// Run time in seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds of warm-up before the reference RSS is taken.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    sample: u64,
}

use ps_server::process::ShardProcess as Shard;

fn rss_mib(shard: &Shard) -> f64 {
    shard.rss().map_or(f64::NAN, |b| b as f64 / f64::from(1 << 20))
}

fn start(args: &Args) -> Result<(Vec<Shard>, ClusterSpec), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("ps-server");
    let workers = args.workers.to_string();
    let shard_args = ["--metrics-listen", "off", "--workers", &workers, "--policy", &args.policy];
    let staleness: &[&str] = if args.policy == "ssp" { &["--staleness", "3"] } else { &[] };
    let shard_args = [&shard_args[..], staleness, &["--worker-timeout", "30"]].concat();
    let split_threshold = ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD;
    ps_server::process::start_cluster(&exe, args.shards, split_threshold, &shard_args)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (shards, spec) = match start(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let steps = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let ok = runtime.block_on(async {
        let tensors = [("fc1", vec![784usize, 128]), ("fc2", vec![128, 10]), ("bias", vec![138])];
        let mut tasks = Vec::new();
        for id in 0..args.workers {
            let (spec, steps, errors, stop) =
                (spec.clone(), Arc::clone(&steps), Arc::clone(&errors), Arc::clone(&stop));
            let tensors = tensors.clone();
            tasks.push(tokio::spawn(async move {
                let run = async {
                    let mut w = Worker::connect(WorkerConfig::new(spec, id)).await?;
                    for (name, shape) in &tensors {
                        w.declare(&TensorDecl::new(*name, shape).normal(0.0, 0.01, 1)).await?;
                    }
                    let grads: BTreeMap<String, ndarray::ArrayD<f32>> = tensors
                        .iter()
                        .map(|(n, s)| (n.to_string(), ndarray::ArrayD::from_elem(s.clone(), 1e-4f32)))
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        w.pull().await?;
                        w.push(&grads).await?;
                        steps.fetch_add(1, Ordering::Relaxed);
                    }
                    w.leave().await
                };
                if let Err(e) = run.await {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("worker {id}: {e}");
                }
            }));
        }
        let mut after_warmup: Option<Vec<f64>> = None;
        let mut last_steps = 0;
        let mut stalled = false;
        println!("{:>6} {:>10} {:>10}  shard RSS (MiB)", "t (s)", "steps", "steps/s");
        while started.elapsed() < Duration::from_secs(args.duration) {
            tokio::time::sleep(Duration::from_secs(args.sample)).await;
            let now = steps.load(Ordering::Relaxed);
            let rss: Vec<f64> = shards.iter().map(rss_mib).collect();
            let t = started.elapsed().as_secs_f64();
            println!(
                "{t:>6.0} {now:>10} {:>10.0}  {}",
                (now - last_steps) as f64 / args.sample as f64,
                rss.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(" ")
            );
            stalled |= now == last_steps;
            last_steps = now;
            if after_warmup.is_none() && t >= args.warmup as f64 {
                after_warmup = Some(rss);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
        let end: Vec<f64> = shards.iter().map(rss_mib).collect();
        let total = steps.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{} workers, {} shards ({}), {:.0} s: {total} steps ({:.0}/s), {} worker errors, stalled interval: {stalled}",
            args.workers,
            args.shards,
            args.policy,
            secs,
            total as f64 / secs,
            errors.load(Ordering::Relaxed)
        );
        let warm = after_warmup.unwrap_or_else(|| end.clone());
        for (i, (w, e)) in warm.iter().zip(&end).enumerate() {
            println!("shard {i}: RSS {w:.1} MiB after warm-up, {e:.1} MiB at the end ({:+.1} MiB)", e - w);
        }
        errors.load(Ordering::Relaxed) == 0 && !stalled
    });
    drop(shards);
    if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}
