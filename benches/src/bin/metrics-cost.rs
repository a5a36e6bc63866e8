//! `metrics-cost`: what Prometheus metrics cost on the hot path.
//!
//! Runs the same small push-then-pull loop (one worker, one shard, a 4 KiB
//! tensor, async policy) against two embedded shards, one recording metrics
//! and one not, in alternating rounds so both see the same machine state,
//! and reports the median time per push+pull of each and their ratio. It
//! also times the recorder calls one step makes, without any RPC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use ps_server::metrics::{Rpc, ShardMetrics};
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure the cost of shard metrics: push+pull with metrics on vs off.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Alternating rounds per configuration.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Push+pull iterations per round.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Tensor elements (f32).
    #[arg(long, default_value_t = 1024)]
    elements: usize,
}

async fn setup(metrics: bool, elements: usize) -> (LocalCluster, Worker) {
    let config = ShardConfig { num_workers: 1, policy: PolicyName::Async, metrics, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("start an embedded shard");
    let mut worker = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    worker.declare(&TensorDecl::new("t", &[elements])).await.expect("declare");
    (cluster, worker)
}

async fn round(worker: &mut Worker, grads: &BTreeMap<String, ndarray::ArrayD<f32>>, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        worker.push(grads).await.expect("push");
        worker.pull().await.expect("pull");
    }
    started.elapsed() / n as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let grads = BTreeMap::from([("t".to_string(), ndarray::ArrayD::<f32>::ones(vec![args.elements]))]);
    let (on, off) = runtime.block_on(async {
        let (_on_cluster, mut on_worker) = setup(true, args.elements).await;
        let (_off_cluster, mut off_worker) = setup(false, args.elements).await;
        // Warm up both.
        round(&mut on_worker, &grads, 200).await;
        round(&mut off_worker, &grads, 200).await;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            on.push(round(&mut on_worker, &grads, args.iterations).await);
            off.push(round(&mut off_worker, &grads, args.iterations).await);
        }
        (median(on), median(off))
    });

    // The recorder calls of one push and one pull, without any RPC.
    let metrics = ShardMetrics::new(0, 1, ps_server::Policy::ASYNC, true);
    let live = [true];
    let n = 1_000_000u64;
    let started = Instant::now();
    for i in 0..n {
        metrics.rpcs().record(Rpc::Push, Duration::from_micros(50), 4096, Ok(()));
        metrics.push_applied(0, i, Duration::from_micros(5), false, &live);
        metrics.rpcs().record(Rpc::Pull, Duration::from_micros(50), 4096, Ok(()));
        metrics.pulled(Some(0), Duration::ZERO);
    }
    let recorder = started.elapsed() / n as u32;

    let cpu = ps_benches::models::cpu_model();
    println!("machine: {} cores, {cpu}", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!(
        "push+pull of {} f32 ({} B), 1 worker, 1 embedded shard, async, median of {} rounds x {}:",
        args.elements,
        args.elements * 4,
        args.rounds,
        args.iterations
    );
    println!("  metrics on : {:>8.1} us", on.as_secs_f64() * 1e6);
    println!("  metrics off: {:>8.1} us", off.as_secs_f64() * 1e6);
    println!("  on / off   : {:>8.3}", on.as_secs_f64() / off.as_secs_f64());
    println!(
        "recorder calls of one push+pull, no RPC: {:.0} ns ({:.2}% of a push+pull with metrics off)",
        recorder.as_nanos(),
        recorder.as_secs_f64() / off.as_secs_f64() * 100.0
    );
}
