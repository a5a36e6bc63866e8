//! After a known sequence of requests, the scraped exposition holds exactly
//! the expected counter values and histogram counts (parsed, not grepped).

use std::collections::BTreeMap;

use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};

/// A series name with its labels sorted, so that label order does not matter.
fn key(series: &str) -> String {
    match series.split_once('{') {
        None => series.to_string(),
        Some((name, labels)) => {
            let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            labels.sort_unstable();
            format!("{name}{{{}}}", labels.join(","))
        }
    }
}

/// Samples of a Prometheus text exposition: `name{sorted labels}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            (key(series), value.parse().expect("numeric sample"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_count_exactly_what_happened() {
    let config =
        ShardConfig { num_workers: 2, policy: PolicyName::Ssp, staleness: 1, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut w0 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let mut w1 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 1)).await.expect("connect");
    w0.declare(&TensorDecl::new("w", &[4])).await.expect("declare");
    w1.declare(&TensorDecl::new("w", &[4])).await.expect("declare");
    let grad = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32; 4]).into_dyn())]);
    // Worker 0 does two clocks while worker 1 is at 0: its pull at clock 1 misses one update.
    for _ in 0..2 {
        w0.pull().await.expect("pull");
        w0.push(&grad).await.expect("push");
    }
    w1.pull().await.expect("pull");
    w1.push(&grad).await.expect("push");
    w0.push_at(0, &grad).await.expect("a retry");
    let refused = w1.raw_push(0, vec![]).await.expect_err("empty push stream");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let s = parse(&ps_server::metrics::encode(cluster.registries()));
    let get = |k: &str| *s.get(&key(k)).unwrap_or_else(|| panic!("no sample {k}"));
    // The worker library pulls every tensor of a shard in one PullMany.
    assert_eq!(get(r#"ps_server_requests_total{code="ok",rpc="pull_many",policy="ssp(1)",shard="0"}"#), 3.0);
    assert_eq!(
        get(r#"ps_server_requests_total{code="ok",rpc="push",policy="ssp(1)",shard="0"}"#),
        4.0,
        "3 pushes and 1 retry"
    );
    assert_eq!(
        get(r#"ps_server_requests_total{code="invalid_argument",rpc="push",policy="ssp(1)",shard="0"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ps_server_rejected_requests_total{reason="invalid_argument",policy="ssp(1)",shard="0"}"#),
        1.0
    );
    assert_eq!(get(r#"ps_server_duplicate_pushes_total{policy="ssp(1)",shard="0"}"#), 1.0);
    assert_eq!(get(r#"ps_server_payload_bytes_total{rpc="push",policy="ssp(1)",shard="0"}"#), 4.0 * 16.0);
    assert_eq!(
        get(r#"ps_server_payload_bytes_total{rpc="pull_many",policy="ssp(1)",shard="0"}"#),
        3.0 * 16.0
    );
    assert_eq!(get(r#"ps_server_rpc_duration_seconds_count{rpc="push",policy="ssp(1)",shard="0"}"#), 5.0);
    assert_eq!(get(r#"ps_server_push_apply_seconds_count{policy="ssp(1)",shard="0"}"#), 3.0);
    assert_eq!(get(r#"ps_server_pull_staleness_clocks_count{policy="ssp(1)",shard="0"}"#), 3.0);
    // w0's pull at clock 1 missed w1's clock 0: staleness 1; the others 0.
    assert_eq!(get(r#"ps_server_pull_staleness_clocks_bucket{le="0",policy="ssp(1)",shard="0"}"#), 2.0);
    assert_eq!(get(r#"ps_server_pull_staleness_clocks_bucket{le="1",policy="ssp(1)",shard="0"}"#), 3.0);
    assert_eq!(get(r#"ps_server_worker_clock{policy="ssp(1)",shard="0",worker="0"}"#), 2.0);
    assert_eq!(get(r#"ps_server_worker_clock{policy="ssp(1)",shard="0",worker="1"}"#), 1.0);
    assert_eq!(get(r#"ps_server_min_clock{policy="ssp(1)",shard="0"}"#), 1.0);
    assert_eq!(get(r#"ps_server_joins_total{policy="ssp(1)",shard="0"}"#), 2.0);
    assert_eq!(get(r#"ps_server_live_workers{policy="ssp(1)",shard="0"}"#), 2.0);
    assert_eq!(get(r#"ps_server_tensors{policy="ssp(1)",shard="0"}"#), 1.0);
    assert_eq!(get(r#"ps_server_held_bytes{kind="parameters",policy="ssp(1)",shard="0"}"#), 16.0);
    assert_eq!(get(r#"ps_server_info{kind="ssp",policy="ssp(1)",shard="0",staleness="1"}"#), 1.0);
    cluster.shutdown().await.expect("shutdown");
}

/// Control RPCs, refusals and steps are recorded by RPC, code and reason: a
/// `Step` once, with the bytes of its pushes and its pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_recorded_once_with_its_code_and_reason() {
    let config = ShardConfig { num_workers: 1, policy: PolicyName::Async, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[4])).await.expect("declare");
    let conflict = w.declare(&TensorDecl::new("w", &[5])).await.expect_err("another shape");
    assert_eq!(conflict.code(), Some(tonic::Code::AlreadyExists));
    let grad = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32; 4]).into_dyn())]);
    w.step(&grad).await.expect("a step");
    w.status().await.expect("status");

    let s = parse(&ps_server::metrics::encode(cluster.registries()));
    let get = |k: &str| s.get(&key(k)).copied().unwrap_or(0.0);
    let labels = r#"policy="async",shard="0""#;
    let requests = |rpc: &str, code: &str| {
        get(&format!(r#"ps_server_requests_total{{code="{code}",rpc="{rpc}",{labels}}}"#))
    };
    assert_eq!(requests("join", "ok"), 1.0);
    assert_eq!(requests("declare", "ok"), 1.0);
    assert_eq!(requests("declare", "already_exists"), 1.0);
    assert_eq!(
        get(&format!(r#"ps_server_rejected_requests_total{{reason="shape_conflict",{labels}}}"#)),
        1.0
    );
    assert_eq!(requests("step", "ok"), 1.0);
    assert_eq!(requests("push", "ok") + requests("pull", "ok"), 0.0, "the step is one request");
    assert_eq!(requests("status", "ok"), 1.0);
    assert_eq!(get(&format!(r#"ps_server_payload_bytes_total{{rpc="step",{labels}}}"#)), 32.0);
    assert_eq!(get(&format!(r#"ps_server_rpc_duration_seconds_count{{rpc="step",{labels}}}"#)), 1.0);
    assert_eq!(get(&format!(r#"ps_server_step_parts_count{{{labels}}}"#)), 1.0);
    assert_eq!(get(&format!(r#"ps_server_step_parts_sum{{{labels}}}"#)), 1.0);
    assert_eq!(get(&format!(r#"ps_server_rpc_duration_seconds_count{{rpc="declare",{labels}}}"#)), 2.0);
    cluster.shutdown().await.expect("shutdown");
}

/// What an operator sees before anything happened: every counter's known
/// series at 0, no checkpoint timestamp until a checkpoint exists, and a
/// worker's series labelled with the policy it learnt at its join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_start_at_zero_and_absent_values_are_absent() {
    let root = std::env::temp_dir().join(format!("ps-metrics-start-{}", std::process::id()));
    let config = ShardConfig {
        num_workers: 1,
        policy: PolicyName::Ssp,
        staleness: 2,
        checkpoint_dir: Some(root.clone()),
        ..ShardConfig::default()
    };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let s = parse(&ps_server::metrics::encode(cluster.registries()));
    let labels = r#"policy="ssp(2)",shard="0""#;
    for reason in ps_server::metrics::REJECTION_REASONS {
        let k = key(&format!(r#"ps_server_rejected_requests_total{{reason="{reason}",{labels}}}"#));
        assert_eq!(s.get(&k), Some(&0.0), "{k}");
    }
    for (rpc, code) in [("declare", "already_exists"), ("pull", "deadline_exceeded"), ("rewind", "not_found")]
    {
        let k = key(&format!(r#"ps_server_requests_total{{code="{code}",rpc="{rpc}",{labels}}}"#));
        assert_eq!(s.get(&k), Some(&0.0), "{k}");
    }
    for absent in ["ps_server_checkpoint_last_success_timestamp_seconds", "ps_server_checkpoint_last_clock"] {
        assert!(!s.keys().any(|k| k.starts_with(absent)), "{absent} exists before any checkpoint");
    }

    let metrics = std::sync::Arc::new(ps_worker::metrics::WorkerMetrics::new(0, None));
    let worker_scrape = || ps_proto::exposition::encode(std::slice::from_ref(metrics.registry()));
    assert!(!worker_scrape().contains("policy="), "{}", worker_scrape());
    assert!(!worker_scrape().contains("ps_worker_test_accuracy"), "accuracy before any evaluation");
    let cfg = WorkerConfig {
        metrics: Some(std::sync::Arc::clone(&metrics)),
        ..WorkerConfig::new(cluster.spec().clone(), 0)
    };
    let mut w = Worker::connect(cfg).await.expect("connect");
    let text = worker_scrape();
    assert!(text.contains(r#"ps_worker_retries_total{op="pull",worker="0",policy="ssp(2)"} 0"#), "{text}");

    w.declare(&TensorDecl::new("w", &[4])).await.expect("declare");
    let name = w.checkpoint(0).await.expect("checkpoint");
    w.wait_checkpoint(&name).await.expect("checkpoint completes");
    let s = parse(&ps_server::metrics::encode(cluster.registries()));
    let last = s.get(&key(&format!("ps_server_checkpoint_last_success_timestamp_seconds{{{labels}}}")));
    assert!(last.is_some_and(|t| *t > 1.6e9), "{last:?}");
    assert_eq!(s.get(&key(&format!("ps_server_checkpoint_last_clock{{{labels}}}"))), Some(&0.0));
    cluster.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(root);
}

/// Sync gradients that arrive before their turn in the round's ordered sum
/// are held, and the held-bytes gauge shows them until the round folds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sync_gradients_are_in_the_held_bytes_gauge() {
    let config = ShardConfig { num_workers: 3, policy: PolicyName::Sync, ..ShardConfig::default() };
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let mut workers = Vec::new();
    for id in 0..3 {
        let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), id)).await.expect("connect");
        w.declare(&TensorDecl::new("w", &[4])).await.expect("declare");
        w.pull().await.expect("pull");
        workers.push(w);
    }
    let held = || {
        let s = parse(&ps_server::metrics::encode(cluster.registries()));
        let series: Vec<f64> = s
            .iter()
            .filter(|(k, _)| k.starts_with("ps_server_held_bytes{") && k.contains(r#"kind="held_gradients""#))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(series.len(), 1, "one held_gradients series per shard: {s:?}");
        series[0]
    };
    assert_eq!(held(), 0.0);
    let grad = BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32; 4]).into_dyn())]);
    // Workers 2 and 1 come before worker 0, whose gradient starts the sum.
    workers[2].push(&grad).await.expect("push");
    assert_eq!(held(), 16.0, "worker 2's 4 floats wait for workers 0 and 1");
    workers[1].push(&grad).await.expect("push");
    assert_eq!(held(), 32.0, "worker 1's wait for worker 0 too");
    workers[0].push(&grad).await.expect("push");
    assert_eq!(held(), 0.0, "the round folded and freed them");
}
