//! `checkpoint-cost`: how long a checkpoint stalls training versus how long
//! its write takes, for a large model.
//!
//! One worker trains a single tensor (default 256 Mi f32 = 1 GiB, split over
//! two embedded shards, sync policy) and requests a checkpoint at one step.
//! Reported, with a memcpy of the model measured in the same run as the
//! baseline:
//! - normal step time (pull + push of the whole model);
//! - the checkpoint request (registration RPC; the capture itself is O(1));
//! - the extra time of the step after the request, which pays for the
//!   copy-on-write copies of parameters and optimizer state;
//! - the time from the request until the checkpoint is complete on disk
//!   (safetensors files fsynced, SHA-256, manifest).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use ps_server::{LocalCluster, OptimizerConfig, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the training stall of a checkpoint against its write time.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Model size in f32 elements [default: 256 Mi = 1 GiB].
    #[arg(long, default_value_t = 256 << 20)]
    elements: usize,
    /// Server-side optimizer: sgd (no state) or adam (two state slots, 3x the bytes to save).
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// Checkpoint root (deleted and recreated).
    #[arg(long, default_value = "target/checkpoint-bench")]
    dir: PathBuf,
    /// Normal steps measured before the checkpoint.
    #[arg(long, default_value_t = 3)]
    steps: usize,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn step(worker: &mut Worker, grads: &BTreeMap<String, ndarray::ArrayD<f32>>) -> Duration {
    let started = Instant::now();
    worker.pull().await.expect("pull");
    worker.push(grads).await.expect("push");
    started.elapsed()
}

fn main() {
    let args = Args::parse();
    let optimizer = match args.optimizer.as_str() {
        "adam" => OptimizerConfig::adam(1e-3),
        _ => OptimizerConfig::sgd(0.01),
    };
    let bytes = args.elements * 4;
    let state_bytes = if args.optimizer == "adam" { 2 * bytes } else { 0 };
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("create the checkpoint root");

    // Baseline: one memcpy of the model (best of 3).
    let src = vec![1.0f32; args.elements];
    let mut dst = vec![0.0f32; args.elements];
    let memcpy = (0..3)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed()
        })
        .min()
        .unwrap_or_default();
    drop((src, dst));

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let config = ShardConfig {
            num_workers: 1,
            policy: PolicyName::Sync,
            optimizer,
            checkpoint_dir: Some(args.dir.clone()),
            keep_checkpoints: 1,
            ..ShardConfig::default()
        };
        let cluster = LocalCluster::start(2, config).await.expect("start two embedded shards");
        let mut worker =
            Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
        worker.declare(&TensorDecl::new("model", &[args.elements])).await.expect("declare");
        let grads =
            BTreeMap::from([("model".to_string(), ndarray::ArrayD::from_elem(vec![args.elements], 1e-3f32))]);
        step(&mut worker, &grads).await; // warm-up
        let mut normal: Vec<Duration> = Vec::new();
        for _ in 0..args.steps {
            normal.push(step(&mut worker, &grads).await);
        }
        normal.sort();
        let normal = normal[normal.len() / 2];

        let requested = Instant::now();
        let name = worker.checkpoint(worker.clock()).await.expect("checkpoint");
        let request = requested.elapsed();
        let after = step(&mut worker, &grads).await;
        let done = worker.wait_checkpoint(&name).await.expect("checkpoint completes");
        let write = requested.elapsed();
        let stall = request + after.saturating_sub(normal);
        // The same write with no training step competing for the 2 cores.
        let alone_started = Instant::now();
        let name = worker.checkpoint(worker.clock()).await.expect("checkpoint");
        worker.wait_checkpoint(&name).await.expect("checkpoint completes");
        let alone = alone_started.elapsed();
        let quiet_step = step(&mut worker, &grads).await;

        println!(
            "model {:.2} GiB + optimizer state {:.2} GiB, 2 shards, sync, 1 worker",
            bytes as f64 / f64::from(1 << 30),
            state_bytes as f64 / f64::from(1 << 30)
        );
        println!("memcpy of the model (baseline)   {:>9.3} s", secs(memcpy));
        println!("normal step (pull + push)        {:>9.3} s", secs(normal));
        println!("checkpoint request               {:>9.6} s", secs(request));
        println!("step after the request           {:>9.3} s", secs(after));
        println!(
            "stall = request + extra step time {:>8.3} s  ({:.2}x a memcpy of the model)",
            secs(stall),
            secs(stall) / secs(memcpy).max(1e-9)
        );
        println!(
            "write (request to complete)      {:>9.3} s  ({} bytes on disk, {:.2} GB/s)",
            secs(write),
            done.bytes,
            done.bytes as f64 / secs(write).max(1e-9) / 1e9
        );
        println!("stall / write                    {:>9.3}", secs(stall) / secs(write).max(1e-9));
        println!("write with no step running       {:>9.3} s", secs(alone));
        println!("step after that write (no copy)  {:>9.3} s", secs(quiet_step));
        drop(worker);
        cluster.shutdown().await.expect("shutdown");
    });
    let _ = std::fs::remove_dir_all(&args.dir);
}
