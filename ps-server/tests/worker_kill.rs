//! A sync worker process killed with SIGKILL mid-run is evicted after the
//! worker timeout; the other workers finish, and the final parameters equal
//! a replay of exactly the updates that were applied.
//!
//! The killed worker is this test binary re-run as a child process (only its
//! `child_worker` test, which does nothing unless `PS_TEST_CHILD_SHARDS` is
//! set), so it is a real process that dies without saying goodbye.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ps_proto::ClusterSpec;
use ps_worker::{TensorDecl, Worker, WorkerConfig};

const LR: f32 = 0.05;
const STEPS: u64 = 30;
const KILL_AT: u64 = 10;
const CHILD_ENV: &str = "PS_TEST_CHILD_SHARDS";

async fn connect(spec: &ClusterSpec, id: u32) -> Worker {
    connect_with(WorkerConfig::new(spec.clone(), id)).await
}

/// A worker connected with `cfg` that declared the model's tensors.
async fn connect_with(cfg: WorkerConfig) -> Worker {
    let mut w = Worker::connect(cfg).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[DIM]).normal(0.0, 0.1, 11)).await.expect("declare w");
    w.declare(&TensorDecl::new("b", &[1])).await.expect("declare b");
    w
}

/// Worker 3, run in a child process: trains and prints `pushed <clock>`
/// after each push; after clock `KILL_AT - 1` it waits on its stdin (which
/// never delivers) until it is killed, so it dies between two steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_worker() {
    let Ok(shards) = std::env::var(CHILD_ENV) else { return };
    let spec = ClusterSpec { shards: shards.split(',').map(String::from).collect(), split_threshold: 8 };
    let mut worker = connect(&spec, 3).await;
    for step in 0..STEPS {
        let (w, b) = unpack(&worker.pull().await.expect("pull").values);
        worker.push(&grad_map(&w, b, 3, step)).await.expect("push");
        println!("pushed {step}");
        if step == KILL_AT - 1 {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_worker_killed_with_sigkill_is_evicted_and_the_others_finish() {
    let (_servers, spec) =
        spawn_cluster(2, 8, &["--workers", "4", "--policy", "sync", "--lr", "0.05", "--worker-timeout", "1"]);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_worker", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, spec.shards.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child worker");
    let mut tasks = Vec::new();
    for id in 0..3 {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = connect(&spec, id).await;
            for step in 0..STEPS {
                let (w, b) = unpack(&worker.pull().await.expect("pull").values);
                worker.push(&grad_map(&w, b, id, step)).await.expect("push");
            }
        }));
    }
    // Kill the child once it has pushed clock KILL_AT - 1 (it then idles).
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let killed = tokio::task::spawn_blocking(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line == format!("pushed {}", KILL_AT - 1) {
                child.kill().expect("SIGKILL the child worker");
                let _ = child.wait();
                return Instant::now();
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child worker stopped before clock {KILL_AT}");
    })
    .await
    .expect("kill task");
    let all = async {
        for t in tasks {
            t.await.expect("worker task");
        }
    };
    // Liveness guard, not a timing assertion: the run must not hang.
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("the others hung after the kill");
    eprintln!(
        "the others finished {:.2} s after the kill (worker timeout 1 s)",
        killed.elapsed().as_secs_f64()
    );

    let mut observer = Worker::observer(WorkerConfig::new(spec.clone(), 0)).await.expect("observer");
    observer.declare(&TensorDecl::new("w", &[DIM]).normal(0.0, 0.1, 11)).await.expect("declare");
    observer.declare(&TensorDecl::new("b", &[1])).await.expect("declare");
    let (served_w, versions) = observer.observe("w").await.expect("observe");
    let last = versions[3];
    assert_eq!(last, KILL_AT as i64 - 1, "the killed worker's last applied clock");
    assert_eq!(&versions[..3], &[STEPS as i64 - 1; 3]);
    let (w, b) = reference_sgd(STEPS, LR, |step| if step as i64 <= last { 4 } else { 3 });
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from the replay of the applied updates by {max_diff}");
    let (served_b, _) = observer.observe("b").await.expect("observe b");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs replay {b}", served_b[[0]]);
}

/// The step in which worker 0 dies in the mid-step tests.
const DIED_AT: u64 = 6;

/// Runs `steps` sync steps of workers 0 and 1 in one task, in lockstep.
async fn lockstep(workers: &mut [Worker; 2], steps: std::ops::Range<u64>) {
    for step in steps {
        for (id, worker) in workers.iter_mut().enumerate() {
            assert_eq!(worker.clock(), step);
            let (w, b) = unpack(&worker.pull().await.expect("pull").values);
            worker.push(&grad_map(&w, b, id as u32, step)).await.expect("push");
        }
    }
}

/// Workers 0 and 1 train in sync on 2 shards until worker 0 dies in step
/// `DIED_AT`, after its gradient of `b` (one shard) got out and before
/// that of `w` (both shards) did; worker 1 has pushed that step already
/// when `survivor_first`. A relaunched worker 0 joins and both finish.
/// Returns the served `w` and `b`, and where the relaunched worker resumed.
async fn die_mid_step_and_relaunch(survivor_first: bool) -> (ndarray::ArrayD<f32>, f32, u64) {
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "2", "--policy", "sync", "--lr", "0.05"]);
    let mut workers = [connect(&spec, 0).await, connect(&spec, 1).await];
    lockstep(&mut workers, 0..DIED_AT).await;
    let [dead, mut survivor] = workers;
    let (w, b) = unpack(&dead.pull().await.expect("pull").values);
    if survivor_first {
        let (w, b) = unpack(&survivor.pull().await.expect("pull").values);
        survivor.push(&grad_map(&w, b, 1, DIED_AT)).await.expect("push");
    }
    let grads = grad_map(&w, b, 0, DIED_AT);
    dead.push_tensor("b", DIED_AT, &grads["b"]).await.expect("push b");
    drop(dead);
    let metrics = std::sync::Arc::new(ps_worker::metrics::WorkerMetrics::new(0, None));
    let mut cfg = WorkerConfig::new(spec.clone(), 0);
    cfg.metrics = Some(std::sync::Arc::clone(&metrics));
    let relaunched = connect_with(cfg).await;
    let resumed = relaunched.clock();
    assert_eq!(clocks_given_up(&metrics), u64::from(survivor_first), "ps_worker_clocks_given_up_total");
    let mut workers = [relaunched, survivor];
    lockstep(&mut workers, resumed..STEPS).await;
    let (served_w, versions) = workers[0].observe("w").await.expect("observe w");
    assert_eq!(versions, vec![STEPS as i64 - 1; 2]);
    let (served_b, _) = workers[0].observe("b").await.expect("observe b");
    (served_w, served_b[[0]], resumed)
}

/// The worker's `ps_worker_clocks_given_up_total`, as scraped.
fn clocks_given_up(metrics: &ps_worker::metrics::WorkerMetrics) -> u64 {
    let text = ps_proto::exposition::encode(std::slice::from_ref(metrics.registry()));
    let line = text.lines().find(|l| l.starts_with("ps_worker_clocks_given_up_total{"));
    let value = line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok());
    value.unwrap_or_else(|| panic!("no ps_worker_clocks_given_up_total in {text}"))
}

/// Single-process SGD of workers 0 and 1, where worker 0's gradient of `w`
/// is missing at step `without_w0` (`None`: nowhere).
fn reference_two_workers(without_w0: Option<u64>) -> (ndarray::Array1<f32>, f32) {
    let mut w: ndarray::Array1<f32> =
        ps_server::init::Init::Normal { mean: 0.0, std: 0.1, seed: 11 }.fill(0, DIM).into();
    let mut b = 0.0f32;
    for step in 0..STEPS {
        let g: Vec<_> = (0..2)
            .map(|id| {
                let (x, y) = batch(id, step);
                gradients(&w, b, &x, &y)
            })
            .collect();
        let from: &[usize] = if Some(step) == without_w0 { &[1] } else { &[0, 1] };
        w = &w - &(mean_rows(&from.iter().map(|&i| g[i].0.clone()).collect::<Vec<_>>()) * LR);
        b -= LR * (g[0].1 + g[1].1) / 2.0;
    }
    (w, b)
}

fn assert_served(served: (ndarray::ArrayD<f32>, f32), expected: (ndarray::Array1<f32>, f32)) {
    let max_diff = served.0.iter().zip(expected.0.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from the reference by {max_diff}");
    assert!((served.1 - expected.1).abs() <= 1e-5, "b: served {} vs reference {}", served.1, expected.1);
}

/// A worker that dies after its step reached some tensors (here `b`'s
/// shard) but not the others joins again at the lowest clock, reads that
/// clock again while its round is still open on every tensor, and the run
/// ends where an uninterrupted one does: `b`'s push is not applied twice
/// and `w`'s is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_worker_that_died_mid_step_resumes_and_the_run_equals_an_uninterrupted_one() {
    let (w, b, resumed) = die_mid_step_and_relaunch(false).await;
    assert_eq!(resumed, DIED_AT);
    assert_served((w, b), reference_two_workers(None));
}

/// The same, but `b`'s round of the step closed (worker 1 had pushed it)
/// before the relaunch: that clock cannot be read again exactly, so the
/// relaunched worker gives it up where it did not arrive. `b`'s round has
/// both gradients, `w`'s closes with worker 1's alone, and both workers go
/// on from the next clock: nothing is applied twice and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_worker_whose_half_step_was_applied_gives_it_up_where_it_did_not_arrive() {
    let (w, b, resumed) = die_mid_step_and_relaunch(true).await;
    assert_eq!(resumed, DIED_AT + 1);
    assert_served((w, b), reference_two_workers(Some(DIED_AT)));
}
