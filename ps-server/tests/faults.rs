//! Dropped responses and partitions between workers and real shard
//! processes, injected by a TCP proxy: every push is applied exactly once,
//! and a partitioned worker is evicted, the others go on, and it rejoins.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use ps_proto::ClusterSpec;
use ps_worker::metrics::WorkerMetrics;
use ps_worker::{RetryPolicy, TensorDecl, Worker, WorkerConfig};

/// 2^-10: with gradients of 1 and 2 workers (mean scaling 1/2), every push
/// moves each element by exactly 2^-11, so any lost or doubled push shows.
const LR: &str = "0.0009765625";

fn patient(spec: ClusterSpec, id: u32, metrics: Option<Arc<WorkerMetrics>>) -> WorkerConfig {
    WorkerConfig {
        retry: RetryPolicy {
            max_attempts: 40,
            give_up_after: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        },
        rpc_timeout: Duration::from_secs(10),
        wait_timeout: Duration::from_secs(30),
        metrics,
        ..WorkerConfig::new(spec, id)
    }
}

async fn declare(w: &mut Worker) {
    // `small` lives on one shard; `split` (12 >= 8 elements) on both.
    w.declare(&TensorDecl::new("small", &[4]).constant(1.0)).await.expect("declare small");
    w.declare(&TensorDecl::new("split", &[12]).constant(1.0)).await.expect("declare split");
}

fn ones() -> BTreeMap<String, ndarray::ArrayD<f32>> {
    BTreeMap::from([
        ("small".to_string(), ndarray::ArrayD::from_elem(vec![4], 1.0f32)),
        ("split".to_string(), ndarray::ArrayD::from_elem(vec![12], 1.0f32)),
    ])
}

async fn exactly_once_under_dropped_responses(policy: &[&str]) {
    const STEPS: u64 = 1000;
    let args = [&["--workers", "2", "--lr", LR, "--metrics-listen", "off"][..], policy].concat();
    let (_servers, direct) = spawn_cluster(2, 8, &args);
    let mut proxies = Vec::new();
    for (i, addr) in direct.shards.iter().enumerate() {
        proxies.push(Proxy::start(addr, 7 + i as u64).await);
    }
    let spec = ClusterSpec { shards: proxies.iter().map(|p| p.addr.clone()).collect(), split_threshold: 8 };
    for p in &proxies {
        p.drop_responses(0.10);
    }
    let mut tasks = Vec::new();
    for id in 0..2 {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let metrics = Arc::new(WorkerMetrics::new(id, None));
            let mut w =
                Worker::connect(patient(spec, id, Some(Arc::clone(&metrics)))).await.expect("connect");
            declare(&mut w).await;
            for _ in 0..STEPS {
                w.pull().await.expect("pull");
                w.push(&ones()).await.expect("push");
            }
            ps_proto::exposition::encode(&[metrics.registry().clone()])
        }));
    }
    let mut retries = 0.0;
    for t in tasks {
        let text = tokio::time::timeout(Duration::from_secs(240), t).await.expect("hung").expect("worker");
        retries += text
            .lines()
            .filter(|l| l.starts_with("ps_worker_retries_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    let dropped: u64 = proxies.iter().map(Proxy::dropped).sum();
    assert!(dropped >= 100, "only {dropped} responses dropped");
    assert!(retries >= dropped as f64 / 4.0, "{retries} retries for {dropped} dropped responses");
    for p in &proxies {
        p.drop_responses(0.0);
    }
    let observer = {
        let mut o = Worker::observer(patient(direct.clone(), 0, None)).await.expect("observer");
        declare(&mut o).await;
        o
    };
    for name in ["small", "split"] {
        let (value, versions) = observer.observe(name).await.expect("observe");
        assert_eq!(versions, vec![STEPS as i64 - 1; 2], "{name}: every clock applied");
        // 2 workers x 1000 pushes x 2^-11 each, exactly.
        let expected = 1.0 - 2.0 * STEPS as f32 / 2048.0;
        assert!(
            value.iter().all(|v| *v == expected),
            "{name}: {value} != {expected}: a push was lost or doubled"
        );
    }
    eprintln!("{policy:?}: {dropped} responses dropped, {retries} retries, every push applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_applies_every_push_exactly_once_with_10_percent_of_responses_dropped() {
    exactly_once_under_dropped_responses(&["--policy", "async"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssp_applies_every_push_exactly_once_with_10_percent_of_responses_dropped() {
    exactly_once_under_dropped_responses(&["--policy", "ssp", "--staleness", "3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_is_evicted_the_others_go_on_and_it_rejoins_after_healing() {
    const STEPS: u64 = 60;
    let args = ["--workers", "3", "--policy", "ssp", "--staleness", "2", "--worker-timeout", "1", "--lr", LR];
    let (_servers, direct) = spawn_cluster(2, 8, &[&args[..], &["--metrics-listen", "off"]].concat());
    let mut proxies = Vec::new();
    for (i, addr) in direct.shards.iter().enumerate() {
        proxies.push(Proxy::start(addr, 100 + i as u64).await);
    }
    let behind_proxy =
        ClusterSpec { shards: proxies.iter().map(|p| p.addr.clone()).collect(), split_threshold: 8 };
    let mut others = Vec::new();
    for id in 0..2 {
        let spec = direct.clone();
        others.push(tokio::spawn(async move {
            let mut w = Worker::connect(patient(spec, id, None)).await.expect("connect");
            declare(&mut w).await;
            for _ in 0..STEPS {
                w.pull().await.expect("pull (an evicted peer must not block this)");
                w.push(&ones()).await.expect("push");
            }
            w.leave().await.expect("leave");
        }));
    }
    // Worker 2, behind the proxies: a few steps, then cut off for longer than
    // the worker timeout; its requests fail (bounded retries).
    let cfg = WorkerConfig {
        retry: RetryPolicy { max_attempts: 3, ..RetryPolicy::default() },
        ..patient(behind_proxy, 2, None)
    };
    let mut cut_off = Worker::connect(cfg).await.expect("connect");
    declare(&mut cut_off).await;
    for _ in 0..5 {
        cut_off.pull().await.expect("pull");
        cut_off.push(&ones()).await.expect("push");
    }
    for p in &proxies {
        p.partition(true);
    }
    let err = cut_off.pull().await.expect_err("partitioned");
    assert!(matches!(err.code(), Some(tonic::Code::Unavailable | tonic::Code::Cancelled)), "{err}");
    // The others finish on their own: the partitioned worker was evicted.
    for t in others {
        tokio::time::timeout(Duration::from_secs(60), t).await.expect("the others hung").expect("worker");
    }
    for p in &proxies {
        p.partition(false);
    }
    // Healed: it is told it was evicted, rejoins, and finishes.
    let err = cut_off.pull().await.expect_err("evicted");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("worker 2 was evicted"), "{err}");
    let resumed = cut_off.join().await.expect("rejoin");
    assert!(resumed >= 5, "resumes at {resumed}");
    while cut_off.clock() < STEPS {
        cut_off.pull().await.expect("pull after rejoining");
        cut_off.push(&ones()).await.expect("push after rejoining");
    }
    let (_, versions) = cut_off.observe("split").await.expect("observe");
    assert_eq!(versions, vec![STEPS as i64 - 1; 3]);
}
