//! Elastic scale-out against real `ps-server` processes started with
//! `--workers 2 --max-workers 3`: workers 0 and 1 run without waiting for
//! worker 2, which then joins the running job at its current clock, in every
//! policy, and from then on its updates count like the others'.

mod common;

use std::time::Duration;

use common::*;
use ps_worker::{TensorDecl, Worker, WorkerConfig};

const LR: f32 = 0.05;
const JOIN: u64 = 10;
const STEPS: u64 = 30;

async fn connect(spec: &ps_proto::ClusterSpec, id: u32) -> Worker {
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[DIM]).normal(0.0, 0.1, 11)).await.expect("declare w");
    w.declare(&TensorDecl::new("b", &[1])).await.expect("declare b");
    w
}

/// Trains `worker` up to clock `until`; returns the largest staleness it read:
/// `max_w (clock - 1 - version_w)` over the entries of workers `0..live`
/// (an id that has not joined yet has no updates to wait for).
async fn train(mut worker: Worker, id: u32, until: u64, live: usize) -> (Worker, i64) {
    let mut worst = 0;
    while worker.clock() < until {
        let step = worker.clock();
        let pulled = worker.pull().await.expect("pull");
        let stale = pulled.versions["w"][..live].iter().map(|v| step as i64 - 1 - v).max().unwrap_or(0);
        worst = worst.max(stale);
        let (w, b) = unpack(&pulled.values);
        worker.push(&grad_map(&w, b, id, step)).await.expect("push");
    }
    (worker, worst)
}

/// Runs workers 0 and 1 to `JOIN` (bounded: if worker 2 held them back this
/// fails instead of hanging), lets worker 2 join, runs all three to `STEPS`,
/// and returns the cluster (alive), an observer and the worst staleness read.
async fn scale_out(args: &[&str]) -> (Vec<ShardProcess>, Worker, i64) {
    let args = [&["--workers", "2", "--max-workers", "3", "--lr", "0.05"][..], args].concat();
    let (servers, spec) = spawn_cluster(2, 8, &args);
    let first: Vec<_> = (0..2)
        .map(|id| {
            let spec = spec.clone();
            tokio::spawn(async move { train(connect(&spec, id).await, id, JOIN, 2).await })
        })
        .collect();
    let mut running = Vec::new();
    for t in first {
        let done = tokio::time::timeout(Duration::from_secs(60), t).await;
        running.push(done.expect("workers 0 and 1 waited for a worker that never joined").expect("task"));
    }
    let late = connect(&spec, 2).await;
    assert_eq!(late.clock(), JOIN, "a joining worker starts at the running job's clock");
    let status = late.status().await.expect("status");
    assert!(status.iter().all(|s| s.live_workers == vec![0, 1, 2]), "{status:?}");
    running.push((late, 0));
    let tasks: Vec<_> = running
        .into_iter()
        .enumerate()
        .map(|(id, (w, worst))| {
            tokio::spawn(async move {
                let (w, more) = train(w, id as u32, STEPS, 3).await;
                (w, worst.max(more))
            })
        })
        .collect();
    let mut worst = 0;
    for t in tasks {
        let (_, w) = t.await.expect("task");
        worst = worst.max(w);
    }
    let observer = connect(&spec, 0).await;
    let (_, versions) = observer.observe("w").await.expect("observe");
    assert_eq!(versions, vec![STEPS as i64 - 1; 3], "every worker's last clock is applied");
    (servers, observer, worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_counts_a_joining_worker_from_the_round_it_joins() {
    let (_servers, observer, worst) = scale_out(&["--policy", "sync"]).await;
    assert_eq!(worst, 0, "sync reads are never stale");
    let (w, b) = reference_sgd(STEPS, LR, |step| if step < JOIN { 2 } else { 3 });
    let (served_w, _) = observer.observe("w").await.expect("observe w");
    let (served_b, _) = observer.observe("b").await.expect("observe b");
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from SGD with 2 then 3 workers by {max_diff}");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs reference {b}", served_b[[0]]);
}

/// A sync round closes on each tensor on its own, so a worker may join
/// when the round of the job's clock is applied on some tensors and not on
/// others. It cannot read that clock exactly any more, so it joins at the
/// next one, and the rounds still open close without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_admits_a_worker_joining_between_two_tensors_rounds_at_the_next_clock() {
    let args = ["--workers", "2", "--max-workers", "3", "--lr", "0.05", "--policy", "sync"];
    let (_servers, spec) = spawn_cluster(2, 8, &args);
    let mut first = Vec::new();
    for id in 0..2 {
        first.push(train(connect(&spec, id).await, id, JOIN, 2));
    }
    let mut first: Vec<Worker> = futures::future::join_all(first).await.into_iter().map(|(w, _)| w).collect();
    // Both pull clock JOIN and push `b` only: `b`'s round of JOIN is applied, `w`'s is open.
    let mut grads = Vec::new();
    for (id, worker) in first.iter().enumerate() {
        let (w, b) = unpack(&worker.pull().await.expect("pull").values);
        let g = grad_map(&w, b, id as u32, JOIN);
        worker.push_tensor("b", JOIN, &g["b"]).await.expect("push b");
        grads.push(g);
    }
    let late = connect(&spec, 2).await;
    assert_eq!(late.clock(), JOIN + 1, "the joining worker cannot read clock {JOIN} of `b` any more");
    for (worker, g) in first.iter_mut().zip(&grads) {
        worker.push(g).await.expect("the rest of the step");
    }
    first.push(late);
    let tasks: Vec<_> = first
        .into_iter()
        .enumerate()
        .map(|(id, w)| tokio::spawn(async move { train(w, id as u32, STEPS, 3).await }))
        .collect();
    for t in tasks {
        let (_, worst) = tokio::time::timeout(Duration::from_secs(60), t).await.expect("hung").expect("task");
        assert_eq!(worst, 0, "sync reads are never stale");
    }
    let observer = connect(&spec, 0).await;
    let (served_w, versions) = observer.observe("w").await.expect("observe w");
    assert_eq!(versions, vec![STEPS as i64 - 1; 3]);
    let (served_b, _) = observer.observe("b").await.expect("observe b");
    let (w, b) = reference_sgd(STEPS, LR, |step| if step <= JOIN { 2 } else { 3 });
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from SGD with 2 then 3 workers by {max_diff}");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs reference {b}", served_b[[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssp_admits_a_joining_worker_within_the_staleness_bound() {
    let (_servers, _, worst) = scale_out(&["--policy", "ssp", "--staleness", "2"]).await;
    assert!(worst <= 2, "a read was {worst} clocks stale with bound 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_admits_a_joining_worker() {
    let (_servers, observer, _) = scale_out(&["--policy", "async"]).await;
    let (w, _) = observer.observe("w").await.expect("observe w");
    let (b, _) = observer.observe("b").await.expect("observe b");
    let (w, b) = (w.into_dimensionality().expect("1-D"), b[[0]]);
    let (x, y) = batch(99, 0);
    let initial = ps_server::init::Init::Normal { mean: 0.0, std: 0.1, seed: 11 }.fill(0, DIM);
    assert!(
        loss(&w, b, &x, &y) < loss(&initial.into(), 0.0, &x, &y),
        "training with 3 workers made no progress"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_beyond_max_workers_are_refused() {
    let (_servers, spec) = spawn_cluster(1, 8, &["--workers", "1", "--max-workers", "2"]);
    let Err(err) = Worker::connect(WorkerConfig::new(spec, 2)).await else {
        panic!("id 2 of 0..2 was accepted");
    };
    assert!(err.to_string().contains("unknown worker 2"), "{err}");
}
