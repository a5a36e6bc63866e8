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
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
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

/// A worker that dies after its step reached some tensors (here `b`'s
/// shard) but not the others joins again at the lowest clock, reads that
/// clock again while its round is still open on every tensor, and the run
/// ends where an uninterrupted one does: `b`'s push is not applied twice
/// and `w`'s is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_worker_that_died_mid_step_resumes_and_the_run_equals_an_uninterrupted_one() {
    const DIED_AT: u64 = 6;
    let (_servers, spec) = spawn_cluster(2, 8, &["--workers", "2", "--policy", "sync", "--lr", "0.05"]);
    let mut workers = [connect(&spec, 0).await, connect(&spec, 1).await];
    lockstep(&mut workers, 0..DIED_AT).await;
    // Worker 0's last step: only `b`'s gradient gets out before it dies.
    let (w, b) = unpack(&workers[0].pull().await.expect("pull").values);
    let grads = grad_map(&w, b, 0, DIED_AT);
    workers[0].push_tensor("b", DIED_AT, &grads["b"]).await.expect("push b");
    let [dead, survivor] = workers;
    drop(dead);
    let relaunched = connect(&spec, 0).await;
    assert_eq!(relaunched.clock(), DIED_AT, "the relaunched worker resumes at the clock it did not finish");
    let mut workers = [relaunched, survivor];
    lockstep(&mut workers, DIED_AT..STEPS).await;

    let (served_w, versions) = workers[0].observe("w").await.expect("observe w");
    assert_eq!(versions, vec![STEPS as i64 - 1; 2]);
    let (served_b, _) = workers[0].observe("b").await.expect("observe b");
    let (w, b) = reference_sgd(STEPS, LR, |_| 2);
    let max_diff = served_w.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff <= 1e-5, "w differs from uninterrupted SGD by {max_diff}");
    assert!((served_b[[0]] - b).abs() <= 1e-5, "b: served {} vs uninterrupted {b}", served_b[[0]]);
}
