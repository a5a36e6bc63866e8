//! Backup workers and staleness scaling through the gRPC service and the
//! worker library: what a worker is told, what the values hold, and what
//! the metrics count.

use std::collections::BTreeMap;

use ndarray::ArrayD;
use ps_proto::{Policy, Scaling};
use ps_server::{LocalCluster, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

fn grad(v: f32) -> BTreeMap<String, ArrayD<f32>> {
    BTreeMap::from([("w".to_string(), ndarray::arr1(&[v; 4]).into_dyn())])
}

fn sample(cluster: &LocalCluster, name: &str) -> f64 {
    let text = ps_server::metrics::encode(cluster.registries());
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn workers(cluster: &LocalCluster, n: u32, decl: &TensorDecl) -> Vec<Worker> {
    let mut out = Vec::new();
    for id in 0..n {
        let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), id)).await.expect("connect");
        w.declare(decl).await.expect("declare");
        out.push(w);
    }
    out
}

/// With 3 workers and 1 backup, the first two pushes of a round close it;
/// the third is acknowledged as dropped (not an error), changes nothing,
/// is counted, and its worker reads the closed round at once. Its next
/// push, of that round's values, counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_push_is_dropped_and_its_worker_goes_on() {
    let config = ShardConfig { num_workers: 3, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let decl = TensorDecl::new("w", &[4]).policy(Policy::Sync { backup: 1 }).sgd(1.0, 0.0);
    let mut w = workers(&cluster, 3, &decl).await;
    for worker in &w {
        assert_eq!(worker.pull().await.expect("pull").rounds["w"], 0);
    }
    let (w0, rest) = w.split_first_mut().expect("3 workers");
    let (w1, rest) = rest.split_first_mut().expect("3 workers");
    let (g1, g3) = (grad(1.0), grad(3.0));
    let (a, b) = tokio::join!(w0.step(&g1), w1.step(&g3));
    let (a, b) = (a.expect("step"), b.expect("step"));
    for p in [&a, &b] {
        assert_eq!(p.values["w"].as_slice().expect("contiguous"), &[-2.0; 4], "the mean of 1 and 3");
        assert_eq!((p.rounds["w"], p.dropped.is_empty()), (1, true));
    }
    let late = rest[0].step(&grad(100.0)).await.expect("a dropped push is not an error");
    assert!(late.dropped.contains("w"), "{:?}", late.dropped);
    assert_eq!(late.values["w"].as_slice().expect("contiguous"), &[-2.0; 4], "nothing of it applied");
    assert_eq!(late.versions["w"], vec![0, 0, 0], "its clock 0 is settled");
    assert_eq!(sample(&cluster, "ps_server_dropped_pushes_total"), 1.0);
    // Round 1: worker 2 (of round 1's values now) and worker 0 close it.
    let (g5, g7) = (grad(5.0), grad(7.0));
    let (c, d) = tokio::join!(rest[0].step(&g5), w0.step(&g7));
    let (c, d) = (c.expect("step"), d.expect("step"));
    assert!(c.dropped.is_empty() && d.dropped.is_empty());
    assert_eq!(c.values["w"].as_slice().expect("contiguous"), &[-8.0; 4], "-2 - mean(5, 7)");
    assert_eq!(c.rounds["w"], 2);
    assert_eq!(sample(&cluster, "ps_server_dropped_pushes_total"), 1.0);
    cluster.shutdown().await.expect("shutdown");
}

/// Under async with staleness scaling, each push's staleness is observed
/// and scales its update: `relative` spares the W - 1 = 1 update another
/// worker may make in between, and halves a push 2 updates stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_async_updates_shrink_with_their_staleness() {
    let config = ShardConfig { num_workers: 2, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let decl = TensorDecl::new("w", &[4]).policy(Policy::Async { scaling: Scaling::Relative }).sgd(1.0, 0.0);
    let mut w = workers(&cluster, 2, &decl).await;
    w[0].pull().await.expect("pull");
    w[1].pull().await.expect("pull");
    // Worker 1 pushes twice on its first read: tau 0 then 1; worker 0's
    // push, on the same read, has tau 2 (factor 1/2). Mean over 2 workers.
    w[1].push(&grad(2.0)).await.expect("push");
    w[1].push(&grad(2.0)).await.expect("push");
    let after = w[0].step(&grad(4.0)).await.expect("step");
    assert_eq!(after.values["w"].as_slice().expect("contiguous"), &[-3.0; 4], "-(1 + 1 + 2 * 1/2)");
    assert_eq!(sample(&cluster, "ps_server_push_staleness_updates_count"), 3.0);
    assert_eq!(sample(&cluster, "ps_server_push_staleness_updates_sum"), 3.0, "tau 0 + 1 + 2");
    cluster.shutdown().await.expect("shutdown");
}
