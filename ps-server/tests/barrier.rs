//! Barriers and shutdown on an embedded cluster.

use std::time::Duration;

use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_waits_for_every_live_worker_on_every_shard() {
    let config = ShardConfig { num_workers: 2, policy: PolicyName::Async, ..ShardConfig::default() };
    let cluster = LocalCluster::start(2, config).await.expect("cluster");
    let mut fast = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let mut slow = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 1)).await.expect("connect");
    for w in [&mut fast, &mut slow] {
        // Two tensors so that (by name hash) both shards are likely involved.
        for name in ["a", "b", "c", "d"] {
            w.declare(&TensorDecl::new(name, &[3])).await.expect("declare");
        }
    }
    let grads = |v: f32| {
        ["a", "b", "c", "d"].iter().map(|n| (n.to_string(), ndarray::arr1(&[v; 3]).into_dyn())).collect()
    };
    for _ in 0..3 {
        fast.push(&grads(1.0)).await.expect("push");
    }
    let waiting = tokio::time::timeout(Duration::from_millis(300), fast.barrier(2)).await;
    assert!(waiting.is_err(), "the barrier returned while worker 1 was at clock 0");
    let barrier = {
        let fast = fast.clone();
        tokio::spawn(async move { fast.barrier(2).await })
    };
    slow.push(&grads(1.0)).await.expect("push");
    slow.push(&grads(1.0)).await.expect("push");
    barrier.await.expect("task").expect("barrier released");
    // Leaving releases a barrier too.
    let barrier = {
        let fast = fast.clone();
        tokio::spawn(async move { fast.barrier(3).await })
    };
    slow.leave().await.expect("leave");
    barrier.await.expect("task").expect("barrier released by leave");
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_waiting_pulls_with_unavailable() {
    let config = ShardConfig { num_workers: 2, policy: PolicyName::Sync, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig {
        retry: ps_worker::RetryPolicy::never(),
        ..WorkerConfig::new(cluster.spec().clone(), 0)
    })
    .await
    .expect("connect");
    w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    w.push(&[("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())].into()).await.expect("push");
    // This pull waits for worker 1, which never comes.
    let pull = tokio::spawn(async move { w.pull().await });
    // Shut down only once the shard reports the pull as waiting (bounded poll of observable state).
    let waiting =
        |text: &str| text.lines().any(|l| l.starts_with("ps_server_pulls_waiting{") && l.ends_with(" 1"));
    let mut polls = 0;
    while !waiting(&ps_server::metrics::encode(cluster.registries())) {
        polls += 1;
        assert!(polls < 10_000, "the pull never started waiting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cluster.shutdown().await.expect("shutdown");
    let err = pull.await.expect("task").expect_err("the pull cannot complete");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_step_stops_waiting_once_its_worker_is_gone() {
    let config = ShardConfig { num_workers: 2, policy: PolicyName::Sync, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    let waiting = |n: u32| {
        let line = format!(" {n}");
        move |text: &str| {
            text.lines().any(|l| l.starts_with("ps_server_pulls_waiting{") && l.ends_with(&line))
        }
    };
    // The step's pull at clock 1 waits for worker 1, which never comes.
    let step = tokio::spawn(async move {
        w.step(&[("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())].into()).await
    });
    let mut polls = 0;
    while !waiting(1)(&ps_server::metrics::encode(cluster.registries())) {
        polls += 1;
        assert!(polls < 10_000, "the step's pull never started waiting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The worker goes away (its step and connection dropped): the shard
    // stops waiting on its behalf, rather than until worker 1 comes.
    step.abort();
    assert!(step.await.expect_err("aborted").is_cancelled());
    let mut polls = 0;
    while !waiting(0)(&ps_server::metrics::encode(cluster.registries())) {
        polls += 1;
        assert!(polls < 10_000, "the gone worker's pull still waits");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_workers_a_pull_or_a_barrier_waits_for() {
    use ps_proto::pb;
    let config =
        ShardConfig { num_workers: 2, policy: PolicyName::Ssp, staleness: 1, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    for _ in 0..3 {
        w.push(&[("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())].into()).await.expect("push");
    }
    let addr = format!("http://{}", cluster.spec().shards[0]);
    let mut client =
        pb::parameter_server_client::ParameterServerClient::connect(addr).await.expect("connect");
    let mut held = async |pull_clock, barrier_clock| {
        let reply = client.status(pb::StatusRequest { pull_clock, barrier_clock }).await?.into_inner();
        Ok::<_, tonic::Status>(
            reply.tensors.into_iter().map(|t| (t.name, t.holding_back)).collect::<Vec<_>>(),
        )
    };
    let w_held_by = |workers: Vec<u32>| vec![("w".to_string(), workers)];
    // Worker 0 has completed 3 clocks, worker 1 none: under ssp(1) a pull
    // at 3 needs worker 1 at clock 2, one at 1 needs nothing; a barrier
    // at 1 needs every worker to have completed clock 0.
    assert_eq!(held(Some(3), None).await.expect("status"), w_held_by(vec![1]));
    assert_eq!(held(Some(1), None).await.expect("status"), w_held_by(vec![]));
    assert_eq!(held(None, Some(1)).await.expect("status"), w_held_by(vec![1]));
    assert_eq!(held(None, None).await.expect("status"), w_held_by(vec![]));
    let both = held(Some(1), Some(1)).await.expect_err("a pull's and a barrier's clock at once");
    assert_eq!(both.code(), tonic::Code::InvalidArgument, "{both:?}");
    cluster.shutdown().await.expect("shutdown");
}
