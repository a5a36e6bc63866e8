//! A silent worker is evicted after the worker timeout; the others go on,
//! workers blocked in a pull are not mistaken for silent ones, and the
//! evicted worker is told so and may join again.

use std::collections::BTreeMap;
use std::time::Duration;

use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{RetryPolicy, TensorDecl, Worker, WorkerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_evicted_and_sync_goes_on_without_it() {
    let config = ShardConfig {
        num_workers: 3,
        policy: PolicyName::Sync,
        worker_timeout_ms: 1000,
        ..ShardConfig::default()
    };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let connect = |id| {
        let spec = cluster.spec().clone();
        async move {
            let mut w =
                Worker::connect(WorkerConfig { retry: RetryPolicy::never(), ..WorkerConfig::new(spec, id) })
                    .await
                    .expect("connect");
            w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
            w
        }
    };
    let grads = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]);
    // Everyone joins first, so no lease is stale before the job starts.
    let mut workers = vec![connect(0).await, connect(1).await];
    let mut silent = connect(2).await;
    // Worker 2 does one step, then falls silent while staying connected.
    silent.pull().await.expect("pull");
    silent.push(&grads).await.expect("push");

    let mut tasks = Vec::new();
    for mut w in workers.drain(..) {
        let grads = grads.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                w.pull().await.expect("pull (a worker blocked here must not be evicted)");
                w.push(&grads).await.expect("push");
            }
            w
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("workers hung").expect("task"),
        );
    }
    let (_, versions) = done[0].observe("w").await.expect("observe");
    assert_eq!(versions, vec![4, 4, 0], "rounds 1..4 went on without worker 2");

    let text = ps_server::metrics::encode(cluster.registries());
    let evictions =
        text.lines().find(|l| l.starts_with("ps_server_evictions_total{")).expect("evictions metric");
    assert!(evictions.ends_with(" 1"), "{evictions}");

    let err = silent.push(&grads).await.expect_err("an evicted worker is refused");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("worker 2 was evicted after 1000 ms"), "{err}");
    assert_eq!(silent.join().await.expect("rejoin"), 5, "it resumes at the round in progress");
    cluster.shutdown().await.expect("shutdown");
}

async fn two_sync_workers(loss: ps_server::WorkerLoss) -> (LocalCluster, Worker, Worker) {
    let config = ShardConfig {
        num_workers: 2,
        policy: PolicyName::Sync,
        worker_timeout_ms: 300,
        on_worker_loss: loss,
        ..ShardConfig::default()
    };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut ws = Vec::new();
    for id in 0..2 {
        let cfg = WorkerConfig {
            retry: RetryPolicy::never(),
            wait_timeout: Duration::from_secs(3),
            ..WorkerConfig::new(cluster.spec().clone(), id)
        };
        let mut w = Worker::connect(cfg).await.expect("connect");
        w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
        ws.push(w);
    }
    let b = ws.pop().expect("worker 1");
    let a = ws.pop().expect("worker 0");
    (cluster, a, b)
}

fn gauge(cluster: &LocalCluster, name: &str) -> f64 {
    let text = ps_server::metrics::encode(cluster.registries());
    text.lines()
        .find(|l| l.split(['{', ' ']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_worker_loss_wait_keeps_waiting_and_shows_it_then_resumes() {
    let (cluster, mut a, mut b) = two_sync_workers(ps_server::WorkerLoss::Wait).await;
    let grads = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]);
    a.pull().await.expect("pull 0");
    a.push(&grads).await.expect("push 0");
    // Worker 1 stays silent: worker 0's pull of clock 1 waits past the
    // timeout (until its own 3 s deadline) instead of going on without it.
    let err = a.pull().await.expect_err("sync must wait for the silent worker");
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert_eq!(gauge(&cluster, "ps_server_silent_workers"), 1.0);
    assert_eq!(gauge(&cluster, "ps_server_evictions_total"), 0.0);
    // It comes back: the round completes and both go on.
    b.pull().await.expect("pull 0");
    b.push(&grads).await.expect("push 0");
    let pulled = a.pull().await.expect("pull 1 once the round is complete");
    assert_eq!(pulled.versions["w"], vec![0, 0]);
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_worker_loss_fail_stops_the_job_with_a_clear_error() {
    let (cluster, mut a, _silent) = two_sync_workers(ps_server::WorkerLoss::Fail).await;
    let grads = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]);
    a.pull().await.expect("pull 0");
    a.push(&grads).await.expect("push 0");
    // The blocked pull is released with ABORTED naming the lost worker...
    let err = a.pull().await.expect_err("the job stopped");
    assert_eq!(err.code(), Some(tonic::Code::Aborted), "{err}");
    assert!(err.to_string().contains("worker 1 sent nothing for 300 ms"), "{err}");
    // ...and so is every later request.
    let err = a.push(&grads).await.expect_err("the job stopped");
    assert_eq!(err.code(), Some(tonic::Code::Aborted), "{err}");
    cluster.shutdown().await.expect("shutdown");
}

/// With default flags (no `--worker-timeout`), a sync pull waiting for a
/// worker that stopped pushing is not silent: the shard process logs the
/// wait, naming the worker it waits for, within `WAIT_LOG_EVERY` (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_waiting_on_a_silent_worker_is_logged_naming_it() {
    let line = wait_logged("stopped", true).await;
    assert!(line.contains("for workers [1] to push"), "names worker 1: {line}");
    assert!(line.contains("if one has stopped, restart it"), "says what to do: {line}");
    assert!(line.contains("--worker-timeout"), "says what to do: {line}");
    assert!(!line.contains("sent nothing"), "worker 1 did contact the shard: {line}");
}

/// A worker that was never started is told apart from one that stopped:
/// the wait log says the shard has heard nothing from it, and to start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_waiting_on_a_worker_never_started_says_to_start_it() {
    let line = wait_logged("never", false).await;
    assert!(line.contains("for workers [1] to push"), "names worker 1: {line}");
    assert!(
        line.contains("worker 1 has sent nothing to this shard since it started: start it"),
        "says what to do: {line}"
    );
    assert!(!line.contains("if one has stopped"), "worker 1 never ran: {line}");
}

/// Starts a real sync shard for 2 workers; worker 0 pushes clock 0 and
/// waits for the round, while worker 1 (connected if `second_connects`)
/// never pushes. Returns the shard's first wait log line.
async fn wait_logged(case: &str, second_connects: bool) -> String {
    let dir = std::env::temp_dir().join(format!("ps-wait-log-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log = dir.join("shard.log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "sync", "--metrics-listen", "off"])
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).expect("log file"));
    let shard = ps_server::process::ShardProcess::start(command, ps_server::process::START_TIMEOUT)
        .expect("shard starts");
    let spec = ps_proto::ClusterSpec::new(vec![shard.addr().to_string()]);
    let grads = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]);
    let mut workers = Vec::new();
    for id in 0..if second_connects { 2 } else { 1 } {
        let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
        w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
        w.pull().await.expect("pull");
        workers.push(w);
    }
    // Worker 0 pushes clock 0 and waits for round 0; worker 1 never pushes.
    let mut waiting = workers.remove(0);
    waiting.push(&grads).await.expect("push");
    let started = std::time::Instant::now();
    let blocked = tokio::spawn(async move { waiting.pull().await });
    let line = loop {
        let text = std::fs::read_to_string(&log).expect("read log");
        if let Some(line) = text.lines().find(|l| l.contains("a pull has waited")) {
            break line.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no wait logged within 30 s: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(started.elapsed() < Duration::from_secs(10), "logged after {:?}", started.elapsed());
    assert!(!blocked.is_finished(), "the pull still waits");
    blocked.abort();
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
    line
}

/// The metric that says which worker the job waits for: pulls waiting on
/// a silent worker count seconds against it, and only against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_a_wait_is_for_is_named_in_a_metric() {
    let config = ShardConfig { num_workers: 2, policy: PolicyName::Sync, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let grads = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]);
    let mut workers = Vec::new();
    for id in 0..2 {
        let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), id)).await.expect("connect");
        w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
        w.pull().await.expect("pull");
        workers.push(w);
    }
    let waited = |worker: u32| {
        let text = ps_server::metrics::encode(cluster.registries());
        let series = "ps_server_waited_on_worker_seconds_total{";
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains(&format!("worker=\"{worker}\"")))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no waited-on series for worker {worker} in\n{text}"))
    };
    assert_eq!((waited(0), waited(1)), (0.0, 0.0), "both exist at 0 from the start");
    let mut waiting = workers.remove(0);
    waiting.push(&grads).await.expect("push");
    let blocked = tokio::spawn(async move { waiting.pull().await });
    let started = std::time::Instant::now();
    while waited(1) == 0.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no wait counted within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waited(0), 0.0, "worker 0 holds nothing back");
    blocked.abort();
    drop(workers);
    cluster.shutdown().await.expect("shutdown");
}
