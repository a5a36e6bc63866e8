//! With a bearer token configured, requests without it or with a wrong one
//! are refused with UNAUTHENTICATED and change nothing.

use std::collections::BTreeMap;

use ps_server::{LocalCluster, PolicyName, ShardConfig};
use ps_worker::{AuthToken, RetryPolicy, TensorDecl, Worker, WorkerConfig};

fn token_file(name: &str, token: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ps-auth-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_tokens_are_refused_and_change_nothing() {
    let file = token_file("cluster", "correct-horse");
    let config = ShardConfig {
        num_workers: 1,
        policy: PolicyName::Async,
        auth_token_file: Some(file.clone()),
        ..ShardConfig::default()
    };
    let cluster = LocalCluster::start(2, config).await.expect("cluster");
    let with = |token: Option<&str>| WorkerConfig {
        retry: RetryPolicy::never(),
        auth_token: token.map(|t| AuthToken::new(t).expect("token")),
        ..WorkerConfig::new(cluster.spec().clone(), 0)
    };

    let mut good = Worker::connect(with(Some("correct-horse"))).await.expect("the right token is accepted");
    good.declare(&TensorDecl::new("w", &[4]).constant(1.0)).await.expect("declare");
    let before = good.observe("w").await.expect("observe").0;

    for token in [None, Some("wrong-horse"), Some("correct-horse-")] {
        let err = Worker::connect(with(token)).await.expect_err("connect must be refused");
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{token:?}: {err}");
        assert!(err.to_string().contains("--auth-token-file"), "{err}");
        // A push sent without (or with a wrong) token reaches nothing.
        let mut intruder = Worker::observer(with(token)).await.expect("a channel opens without a token");
        let err = intruder.declare(&TensorDecl::new("w", &[4])).await.expect_err("declare refused");
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
        let header =
            ps_proto::pb::PushHeader { worker: 0, clock: 0, tensor: "w".into(), offset: 0, len: 4, dtype: 0 };
        let data = ps_proto::wire::encode(&[100.0f32; 4], ps_proto::WireDtype::F32);
        let chunk = ps_proto::pb::PushChunk { header: Some(header), offset: 0, data };
        let shard = ps_proto::placement::place("w", 4, 2, cluster.spec().split_threshold)[0].shard;
        let status = intruder.raw_push(shard, vec![chunk]).await.expect_err("push refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(good.observe("w").await.expect("observe").0, before, "a refused request changed state");
    good.pull().await.expect("pull");
    good.push(&BTreeMap::from([("w".to_string(), ndarray::arr1(&[1.0f32; 4]).into_dyn())]))
        .await
        .expect("push");
    assert_ne!(good.observe("w").await.expect("observe").0, before);

    let text = ps_server::metrics::encode(cluster.registries());
    let refused: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("ps_server_rejected_requests_total{") && l.contains("reason=\"unauthenticated\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 9.0, "refusals are counted: {refused}");
    cluster.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_file(file);
}

#[test]
fn ps_server_refuses_a_missing_or_empty_token_file() {
    let empty = token_file("empty", "   ");
    for (path, expected) in [(empty.clone(), "is empty"), ("/nonexistent/token".into(), "cannot read")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ps-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--workers",
                "1",
                "--auth-token-file",
            ])
            .arg(&path)
            .output()
            .expect("run ps-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(expected) && err.contains(&*path.to_string_lossy()), "{err}");
    }
    let _ = std::fs::remove_file(empty);
}
