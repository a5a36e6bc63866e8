//! Any gRPC client's mistakes, on every RPC, get the codes of DESIGN §5 with
//! a message naming what was wrong (never INTERNAL, never a server path),
//! and are counted in `ps_server_rejected_requests_total` by reason.
//! Requests go out through a bare HTTP/2 client ([`common::raw`]), so the
//! shard, not a client library, decides every answer.

mod common;

use std::collections::BTreeMap;

use common::raw::{self, frame};
use ps_proto::pb;
use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig};
use tonic::Code;

const CONTROL: [&str; 8] =
    ["Join", "Leave", "Declare", "Barrier", "Status", "Checkpoint", "CheckpointStatus", "Rewind"];
const LIMIT: usize = 1 << 20;

fn control(method: &str) -> String {
    format!("/ps.v1.ParameterServer/{method}")
}

/// Samples of the exposition whose series starts with `prefix` and holds every label of `labels`.
fn sample(cluster: &LocalCluster, name: &str, labels: &[&str]) -> f64 {
    let text = ps_server::metrics::encode(cluster.registries());
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn cluster(config: ShardConfig) -> (LocalCluster, String) {
    let cluster = LocalCluster::start(1, config).await.expect("cluster");
    let addr = cluster.spec().shards[0].clone();
    (cluster, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_alike_on_every_rpc() {
    let config = ShardConfig {
        num_workers: 1,
        policy: PolicyName::Async,
        max_message_bytes: LIMIT,
        chunk_bytes: LIMIT / 4,
        ..ShardConfig::default()
    };
    let (cluster, addr) = cluster(config).await;
    let garbage = frame(false, &[0xff; 16]);
    let oversized = frame(false, &vec![0u8; LIMIT + 1]);
    let paths: Vec<String> = CONTROL
        .iter()
        .map(|m| control(m))
        .chain(["/ps.v1.Data/Push", "/ps.v1.Data/Pull"].map(String::from))
        .collect();
    for path in &paths {
        let method = path.rsplit('/').next().expect("method");
        let r = raw::call(&addr, path, &[], garbage.clone()).await;
        assert_eq!(r.code, Code::InvalidArgument, "{path} malformed: {r:?}");
        assert!(r.message.to_lowercase().contains(&method.to_lowercase()), "{path}: {r:?}");
        let r = raw::call(&addr, path, &[], oversized.clone()).await;
        assert_eq!(r.code, Code::ResourceExhausted, "{path} oversized: {r:?}");
        assert!(r.message.contains("limit"), "{path}: {r:?}");
    }
    let n = paths.len() as f64;
    let malformed = sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="malformed""#]);
    assert_eq!(malformed, n, "every malformed request is counted");
    let too_large = sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="too_large""#]);
    assert_eq!(too_large, n, "every oversized request is counted");
    for rpc in ["join", "declare", "status", "rewind"] {
        let refused = sample(
            &cluster,
            "ps_server_requests_total",
            &[&format!(r#"rpc="{rpc}""#), r#"code="invalid_argument""#],
        );
        assert_eq!(refused, 1.0, "{rpc} is recorded by code");
    }
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_are_unimplemented_and_say_so() {
    let config = ShardConfig { num_workers: 1, policy: PolicyName::Async, ..ShardConfig::default() };
    let (cluster, addr) = cluster(config).await;
    let compressed =
        frame(true, &[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for path in [control("Status"), control("Join"), "/ps.v1.Data/Pull".to_string()] {
        for headers in [&[("grpc-encoding", "gzip")][..], &[]] {
            let r = raw::call(&addr, &path, headers, compressed.clone()).await;
            assert_eq!(r.code, Code::Unimplemented, "{path} {headers:?}: {r:?}");
            assert!(r.message.contains("compression is not supported"), "{path} {headers:?}: {r:?}");
        }
    }
    assert_eq!(sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="compressed""#]), 6.0);
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_checkpoints_are_not_found_and_name_no_server_path() {
    let root = std::env::temp_dir().join(format!("ps-codes-ckpt-{}", std::process::id()));
    let config = ShardConfig {
        num_workers: 1,
        policy: PolicyName::Async,
        checkpoint_dir: Some(root.clone()),
        ..ShardConfig::default()
    };
    let (cluster, addr) = cluster(config).await;
    let name = "ckpt-000000000003-0000000000000001";
    let rewind = pb::RewindRequest { checkpoint: name.into(), cause: 7, worker: 0 };
    let r = raw::call(&addr, &control("Rewind"), &[], raw::message(&rewind)).await;
    assert_eq!(r.code, Code::NotFound, "{r:?}");
    assert!(r.message.contains(name), "{r:?}");
    assert!(!r.message.contains(&*root.to_string_lossy()), "a server path leaked: {r:?}");
    let status = pb::CheckpointStatusRequest { name: name.into(), wait: false };
    let r = raw::call(&addr, &control("CheckpointStatus"), &[], raw::message(&status)).await;
    assert_eq!(r.code, Code::NotFound, "{r:?}");
    assert!(r.message.contains(name), "{r:?}");
    let counted = sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="unknown_checkpoint""#]);
    assert_eq!(counted, 2.0);
    cluster.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_are_echoed_cut_to_a_bounded_length() {
    let config = ShardConfig { num_workers: 1, policy: PolicyName::Async, ..ShardConfig::default() };
    let (cluster, addr) = cluster(config).await;
    let long = "n".repeat(20_000);
    let pull = pb::PullRequest { worker: Some(0), clock: 0, tensor: long.clone(), dtype: 0 };
    let r = raw::call(&addr, "/ps.v1.Data/Pull", &[], raw::message(&pull)).await;
    assert_eq!(r.code, Code::NotFound, "{r:?}");
    assert!(r.message.contains("(20000 chars)") && r.message.len() < 512, "{r:?}");
    let header = pb::PushHeader { worker: 0, clock: 0, tensor: long.clone(), offset: 0, len: 1, dtype: 0 };
    let chunk = pb::PushChunk { header: Some(header), offset: 0, data: vec![0u8; 4].into() };
    let r = raw::call(&addr, "/ps.v1.Data/Push", &[], raw::message(&chunk)).await;
    assert_eq!(r.code, Code::NotFound, "{r:?}");
    assert!(r.message.contains("(20000 chars)") && r.message.len() < 512, "{r:?}");
    let spec = pb::TensorSpec { name: long, shape: vec![0], ..Default::default() };
    let declare = pb::DeclareRequest { spec: Some(spec) };
    let r = raw::call(&addr, &control("Declare"), &[], raw::message(&declare)).await;
    assert_eq!(r.code, Code::InvalidArgument, "{r:?}");
    assert!(r.message.contains("(20000 chars)") && r.message.len() < 512, "{r:?}");
    let rewind = pb::RewindRequest { checkpoint: "c".repeat(20_000), cause: 1, worker: 0 };
    let r = raw::call(&addr, &control("Rewind"), &[], raw::message(&rewind)).await;
    assert_ne!(r.code, Code::Internal, "{r:?}");
    assert!(r.message.len() < 2200, "{} bytes", r.message.len());
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_with_other_settings_is_already_exists_naming_the_setting() {
    let config =
        ShardConfig { num_workers: 1, policy: PolicyName::Ssp, staleness: 2, ..ShardConfig::default() };
    let (cluster, _) = cluster(config).await;
    let mut w = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    let first = || TensorDecl::new("w", &[4]).uniform(-1.0, 1.0, 3).sgd(0.1, 0.0);
    w.declare(&first()).await.expect("declare");
    w.declare(&first()).await.expect("the same declaration again");
    let cases: [(TensorDecl, &str, &str, &str); 5] = [
        (first().adam(0.01), "optimizer", "Sgd", "Adam"),
        (first().async_(), "policy", "ssp(2)", "async"),
        (first().ssp(5), "staleness", "ssp(2)", "ssp(5)"),
        (first().constant(9.0), "initializer", "Uniform", "Constant(9.0)"),
        (first().allow_non_finite(), "non-finite gradients", "refused", "allowed"),
    ];
    for (decl, setting, expected, got) in cases {
        let err = w.declare(&decl).await.expect_err(setting);
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{setting}: {err}");
        let message = err.to_string();
        for word in ["\"w\"", setting, expected, got] {
            assert!(message.contains(word), "{setting}: {message:?} lacks {word:?}");
        }
    }
    let counted = sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="declare_conflict""#]);
    assert_eq!(counted, 5.0);
    cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elastic_worker_that_never_joined_is_told_so_and_one_that_left_is_told_that() {
    let config = ShardConfig {
        num_workers: 2,
        initial_workers: Some(1),
        policy: PolicyName::Async,
        ..ShardConfig::default()
    };
    let (cluster, _) = cluster(config).await;
    let mut w0 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w0.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    let data = ps_proto::wire::encode(&[0.0f32; 2], ps_proto::WireDtype::F32);
    let push = |worker| {
        let header = pb::PushHeader { worker, clock: 0, tensor: "w".into(), offset: 0, len: 2, dtype: 0 };
        vec![pb::PushChunk { header: Some(header), offset: 0, data: data.clone() }]
    };
    let status = w0.raw_push(0, push(1)).await.expect_err("worker 1 never joined");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("worker 1 has not joined"), "{status:?}");
    let mut w1 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 1)).await.expect("join");
    w1.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    w1.push(&BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]))
        .await
        .expect("push after joining");
    w1.leave().await.expect("leave");
    let status = w0.raw_push(0, push(1)).await.expect_err("worker 1 left");
    assert!(status.message().contains("worker 1 has left"), "{status:?}");
    cluster.shutdown().await.expect("shutdown");
}

/// A pull and a barrier that wait for a worker who never comes, sent with a
/// client deadline by a client that does not enforce it itself: the shard
/// answers DEADLINE_EXCEEDED (tonic's own timeout would say CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_client_deadline_is_deadline_exceeded() {
    let config = ShardConfig { num_workers: 2, policy: PolicyName::Sync, ..ShardConfig::default() };
    let (cluster, addr) = cluster(config).await;
    let mut w0 = Worker::connect(WorkerConfig::new(cluster.spec().clone(), 0)).await.expect("connect");
    w0.declare(&TensorDecl::new("w", &[2])).await.expect("declare");
    w0.pull().await.expect("pull clock 0");
    w0.push(&BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32, 1.0]).into_dyn())]))
        .await
        .expect("push clock 0");
    // Clock 1 needs worker 1's clock 0, which never comes.
    let deadline = [("grpc-timeout", "300m")];
    let pull = pb::PullRequest { worker: Some(0), clock: 1, tensor: "w".into(), dtype: 0 };
    let r = raw::call(&addr, "/ps.v1.Data/Pull", &deadline, raw::message(&pull)).await;
    assert_eq!(r.code, Code::DeadlineExceeded, "{r:?}");
    assert!(r.message.contains("deadline"), "{r:?}");
    let barrier = pb::BarrierRequest { worker: 0, clock: 1 };
    let r = raw::call(&addr, &control("Barrier"), &deadline, raw::message(&barrier)).await;
    assert_eq!(r.code, Code::DeadlineExceeded, "{r:?}");
    assert_eq!(sample(&cluster, "ps_server_rejected_requests_total", &[r#"reason="deadline""#]), 2.0);
    let code = r#"code="deadline_exceeded""#;
    assert_eq!(sample(&cluster, "ps_server_requests_total", &[r#"rpc="pull""#, code]), 1.0);
    assert_eq!(sample(&cluster, "ps_server_requests_total", &[r#"rpc="barrier""#, code]), 1.0);
    // A deadline that is not missed changes nothing.
    let status = pb::StatusRequest::default();
    let r = raw::call(&addr, &control("Status"), &[("grpc-timeout", "10S")], raw::message(&status)).await;
    assert_eq!(r.code, Code::Ok, "{r:?}");
    cluster.shutdown().await.expect("shutdown");
}
