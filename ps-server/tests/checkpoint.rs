//! Checkpoint contents, retention, corruption and failures, on embedded
//! clusters (multi-process kills are in `checkpoint_crash.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ps_server::checkpoint::{CheckpointError, find_checkpoint};
use ps_server::{LocalCluster, OptimizerConfig, PolicyName, ShardConfig};
use ps_worker::{TensorDecl, Worker, WorkerConfig, WorkerError};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn config(policy: PolicyName, workers: u32, root: Option<&Path>) -> ShardConfig {
    ShardConfig {
        num_workers: workers,
        policy,
        staleness: 10,
        split_threshold: 16,
        optimizer: OptimizerConfig::sgd(0.1),
        checkpoint_dir: root.map(Path::to_path_buf),
        keep_checkpoints: 2,
        metrics: true,
        ..ShardConfig::default()
    }
}

/// A deterministic gradient of worker `w` at `clock` for a tensor of `n` elements.
fn gradient(w: u32, clock: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + 1.0) * 0.37 + w as f32 * 1.3 + clock as f32 * 0.71).sin()).collect()
}

fn grads(w: u32, clock: u64) -> BTreeMap<String, ArrayD<f32>> {
    BTreeMap::from([
        ("big".to_string(), ArrayD::from_shape_vec(vec![4, 8], gradient(w, clock, 32)).expect("shape")),
        ("small".to_string(), ArrayD::from_shape_vec(vec![3], gradient(w + 10, clock, 3)).expect("shape")),
    ])
}

async fn worker(spec: &ps_proto::ClusterSpec, id: u32, opt: Option<f32>) -> Worker {
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
    let decl = |d: TensorDecl| match opt {
        Some(lr) => d.adam(lr),
        None => d,
    };
    // `big` (32 elements >= 16) is split over every shard; `small` lives on one.
    w.declare(&decl(TensorDecl::new("big", &[4, 8]).normal(0.0, 1.0, 5))).await.expect("declare big");
    w.declare(&decl(TensorDecl::new("small", &[3]).constant(0.5))).await.expect("declare small");
    w
}

fn bits(values: &BTreeMap<String, ArrayD<f32>>) -> Vec<u32> {
    values.values().flat_map(|a| a.iter().map(|v| v.to_bits())).collect()
}

/// Runs sync steps until `until`, checkpointing at each clock in `at`.
async fn sync_steps(w: &mut Worker, until: u64, at: &[u64]) -> Vec<String> {
    let mut names = Vec::new();
    while w.clock() < until {
        if at.contains(&w.clock()) {
            let name = w.checkpoint(w.clock()).await.expect("checkpoint");
            w.wait_checkpoint(&name).await.expect("checkpoint completes");
            names.push(name);
        }
        w.pull().await.expect("pull");
        w.push(&grads(0, w.clock())).await.expect("push");
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_repartitions_values_and_adam_state_onto_another_shard_count() {
    let root = scratch("repartition");
    let cfg = config(PolicyName::Sync, 1, Some(&root));
    let cluster = LocalCluster::start(2, cfg.clone()).await.expect("start");
    let mut w = worker(cluster.spec(), 0, Some(0.05)).await;
    sync_steps(&mut w, 3, &[3]).await;
    let name = w.checkpoint(3).await.expect("checkpoint");
    let done = w.wait_checkpoint(&name).await.expect("complete");
    assert_eq!(done.clock, 3);
    let at_3 = w.pull().await.expect("pull").values;
    w.push(&grads(0, 3)).await.expect("push");
    let after = bits(&w.pull().await.expect("pull").values);

    // Checkpoint metrics, parsed from the exposition: one write per shard.
    let exposition = ps_proto::exposition::encode(cluster.registries());
    let sample = |name: &str| -> Vec<f64> {
        exposition
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    assert_eq!(sample("ps_server_checkpoint_write_seconds_count"), vec![1.0, 1.0]);
    assert_eq!(sample("ps_server_checkpoint_last_clock"), vec![3.0, 3.0]);
    assert_eq!(sample("ps_server_checkpoints_pending"), vec![0.0, 0.0]);
    assert_eq!(sample("ps_server_checkpoint_failures_total"), vec![0.0, 0.0]);
    let files: f64 = std::fs::read_dir(root.join(&name))
        .expect("checkpoint dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len() as f64)
        .sum();
    assert_eq!(sample("ps_server_checkpoint_bytes_total").iter().sum::<f64>(), files);
    assert!(sample("ps_server_checkpoint_last_success_timestamp_seconds").iter().all(|t| *t > 1.7e9));

    let loaded = find_checkpoint(&root).expect("a complete checkpoint");
    assert_eq!(loaded.manifest.clock, 3);
    assert_eq!(loaded.manifest.cluster.num_shards, 2);
    let big = loaded.manifest.tensors.iter().find(|t| t.name == "big").expect("big in manifest");
    assert_eq!(big.parts.len(), 2, "big was split over both shards");
    assert!(big.parts.iter().all(|p| p.slots.contains_key("adam_m") && p.slots.contains_key("adam_v")));

    let restored = LocalCluster::restore(3, cfg, &loaded).await.expect("restore on 3 shards");
    // Until it joins, a worker is told which checkpoint the shard came back
    // from, for pulls and for checkpoint requests alike (a stale session
    // must not name a checkpoint).
    let addr = format!("http://{}", restored.spec().shards[0]);
    let mut raw = ps_proto::pb::parameter_server_client::ParameterServerClient::connect(addr.clone())
        .await
        .expect("raw client");
    let mut raw_data = ps_proto::pb::data_client::DataClient::connect(addr).await.expect("raw data client");
    let pull = ps_proto::pb::PullRequest { worker: Some(0), clock: 3, tensor: "big".into(), dtype: 0 };
    let ckpt = ps_proto::pb::CheckpointRequest { clock: 5, session: 1, worker: Some(0) };
    for status in [
        raw_data.pull(pull).await.expect_err("pull before joining"),
        raw.checkpoint(ckpt).await.expect_err("checkpoint before joining"),
    ] {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        let meta = status.metadata().get(ps_proto::RESTART_CHECKPOINT).map(|v| v.to_str().ok());
        assert_eq!(meta, Some(Some(name.as_str())), "{status:?}");
    }
    let mut r = worker(restored.spec(), 0, Some(0.05)).await;
    assert_eq!(r.clock(), 3);
    assert_eq!(bits(&r.pull().await.expect("pull").values), bits(&at_3));
    // Adam's moments and step count came back: the next step is identical.
    r.push(&grads(0, 3)).await.expect("push");
    assert_eq!(bits(&r.pull().await.expect("pull").values), after);
    let _ = std::fs::remove_dir_all(&root);
}

/// Fast worker 0 pushes clocks 0..10 before slow worker 1 pushes any; the
/// checkpoint at 5 must hold exactly the updates of clocks 0..5 of both, so
/// the fast worker's clocks 5..10, applied first, are not in it.
async fn fast_and_slow(policy: PolicyName) {
    const C: u64 = 5;
    let root = scratch(&format!("fast-slow-{policy:?}"));
    let cluster = LocalCluster::start(2, config(policy, 2, Some(&root))).await.expect("start");
    let mut fast = worker(cluster.spec(), 0, None).await;
    let mut slow = worker(cluster.spec(), 1, None).await;
    let initial = fast.observe("big").await.expect("observe").0;
    // Both request it before pushing clock 5; the first request registers it.
    let name = fast.checkpoint(C).await.expect("checkpoint");
    assert_eq!(slow.checkpoint(C).await.expect("same checkpoint"), name);
    for clock in 0..10 {
        fast.pull().await.expect("pull");
        fast.push(&grads(0, clock)).await.expect("push");
    }
    let status = fast.checkpoint_status(&name, false).await.expect("status");
    assert!(status.iter().all(|s| !s.complete), "complete before the slow worker pushed clock 4");
    for clock in 0..10 {
        slow.pull().await.expect("pull");
        slow.push(&grads(1, clock)).await.expect("push");
    }
    fast.wait_checkpoint(&name).await.expect("complete");

    // Replay: SGD at lr 0.1 on the mean over W = 2, of exactly clocks < 5.
    let loaded = find_checkpoint(&root).expect("checkpoint");
    assert_eq!(loaded.manifest.clock, C);
    let entry = loaded.manifest.tensors.iter().find(|t| t.name == "big").expect("big");
    let saved = loaded.read_range(entry, |p| Some(p.key.as_str()), 0, 32).expect("read big");
    let mut expected: Vec<f32> = initial.iter().copied().collect();
    for clock in 0..C {
        for w in 0..2 {
            for (e, g) in expected.iter_mut().zip(gradient(w, clock, 32)) {
                *e -= 0.1 * 0.5 * g;
            }
        }
    }
    let diff = saved.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-5, "{policy:?}: checkpoint differs from the replay of clocks < {C} by {diff}");
    // ...and it is not the live value, which has every clock.
    let live = fast.observe("big").await.expect("observe").0;
    let live_diff = live.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(live_diff > 1e-3, "the live value should hold later clocks too");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_checkpoint_holds_exactly_the_updates_below_its_clock() {
    fast_and_slow(PolicyName::Async).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssp_checkpoint_holds_exactly_the_updates_below_its_clock() {
    fast_and_slow(PolicyName::Ssp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_newest_k_and_detects_a_flipped_byte() {
    let root = scratch("corrupt");
    let cluster = LocalCluster::start(2, config(PolicyName::Sync, 1, Some(&root))).await.expect("start");
    let mut w = worker(cluster.spec(), 0, Some(0.05)).await;
    let names = sync_steps(&mut w, 9, &[2, 4, 6, 8]).await;
    let mut left: Vec<String> = std::fs::read_dir(&root)
        .expect("read root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, names[2..].to_vec(), "keep_checkpoints = 2 keeps the two newest");

    // Flip one byte of the newest checkpoint's shard 1 file.
    let newest = root.join(&names[3]);
    let file = newest.join("shard-0001.safetensors");
    let mut bytes = std::fs::read(&file).expect("read shard file");
    let at = bytes.len() - 3;
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).expect("write");

    // Asked for exactly that checkpoint: refused, naming the file.
    let err = find_checkpoint(&newest).expect_err("corrupt checkpoint accepted");
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    assert!(
        err.to_string().contains("shard-0001.safetensors") && err.to_string().contains("checksum"),
        "{err}"
    );
    // Asked for the newest valid one: the previous checkpoint.
    let loaded = find_checkpoint(&root).expect("fallback");
    assert_eq!(loaded.manifest.clock, 6);

    // A missing file: the same.
    std::fs::remove_file(root.join(&names[2]).join("shard-0000.safetensors")).expect("remove");
    let err = find_checkpoint(&root).expect_err("nothing valid is left");
    let text = err.to_string();
    assert!(text.contains("no complete checkpoint") && text.contains("shard-0000.safetensors"), "{text}");

    // A manifest from a newer format is refused by name, not skipped.
    let manifest = newest.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let newer_format = text.replacen("\"format\": 2", "\"format\": 99", 1);
    let sum =
        format!("{:x}  manifest.json\n", <sha2::Sha256 as sha2::Digest>::digest(newer_format.as_bytes()));
    std::fs::write(&manifest, newer_format).expect("write");
    std::fs::write(newest.join("manifest.sha256"), sum).expect("write checksum");
    let err = find_checkpoint(&root).expect_err("newer format accepted");
    assert!(matches!(err, CheckpointError::NewerFormat { got: 99, .. }), "{err}");
    assert!(err.to_string().contains(&*manifest.to_string_lossy()), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_reported_and_counted_and_training_goes_on() {
    let scratch = scratch("unwritable");
    // The checkpoint root is a regular file: every write fails (as with a
    // permission error or a full disk), and the error names the path.
    let root = scratch.join("not-a-directory");
    std::fs::write(&root, b"x").expect("write");
    let cluster = LocalCluster::start(2, config(PolicyName::Sync, 1, Some(&root))).await.expect("start");
    let mut w = worker(cluster.spec(), 0, None).await;
    sync_steps(&mut w, 2, &[]).await;
    let name = w.checkpoint(2).await.expect("registration does not touch the disk");
    let err = w.wait_checkpoint(&name).await.expect_err("write cannot succeed");
    let text = err.to_string();
    assert!(matches!(err, WorkerError::Checkpoint { .. }), "{text}");
    assert!(text.contains(&*root.to_string_lossy()), "{text}");
    // Training goes on.
    sync_steps(&mut w, 5, &[]).await;
    assert_eq!(w.clock(), 5);
    let exposition = ps_proto::exposition::encode(cluster.registries());
    let failures: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("ps_server_checkpoint_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 2.0, "one failure per shard:\n{exposition}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_refused_too_late_or_without_a_directory() {
    let root = scratch("refused");
    let cluster = LocalCluster::start(1, config(PolicyName::Async, 1, Some(&root))).await.expect("start");
    let mut w = worker(cluster.spec(), 0, None).await;
    sync_steps(&mut w, 3, &[]).await;
    let err = w.checkpoint(2).await.expect_err("clock 2 is past");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert!(err.to_string().contains("worker 0 has already pushed clock 2"), "{err}");
    drop(cluster);

    let cluster = LocalCluster::start(1, config(PolicyName::Sync, 1, None)).await.expect("start");
    let mut w = worker(cluster.spec(), 0, None).await;
    let err = w.checkpoint(0).await.expect_err("no directory");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert!(err.to_string().contains("--checkpoint-dir"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A rewind abandons checkpoints still capturing, and whoever waits on one
/// hears so at once instead of at the request's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_ends_the_wait_on_a_checkpoint_it_abandoned() {
    use ps_proto::pb;
    use ps_proto::pb::parameter_server_client::ParameterServerClient;

    let root = scratch("rewind-wait");
    let cluster = LocalCluster::start(1, config(PolicyName::Async, 2, Some(&root))).await.expect("start");
    let mut fast = worker(cluster.spec(), 0, None).await;
    let mut slow = worker(cluster.spec(), 1, None).await;
    let early = fast.checkpoint(2).await.expect("checkpoint at 2");
    for w in [&mut fast, &mut slow] {
        for clock in 0..2 {
            w.pull().await.expect("pull");
            w.push(&grads(w.id(), clock)).await.expect("push");
        }
    }
    fast.wait_checkpoint(&early).await.expect("checkpoint at 2 completes");
    // The slow worker is at clock 2, so the checkpoint at 5 stays capturing.
    let moot = fast.checkpoint(5).await.expect("checkpoint at 5");
    for clock in 2..5 {
        fast.pull().await.expect("pull");
        fast.push(&grads(0, clock)).await.expect("push");
    }

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.spec().shards[0]))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut waiter = ParameterServerClient::new(channel.clone());
    let name = moot.clone();
    let waiting = tokio::spawn(async move {
        waiter.checkpoint_status(pb::CheckpointStatusRequest { name, wait: true }).await
    });
    let mut control = ParameterServerClient::new(channel);
    let now = control
        .checkpoint_status(pb::CheckpointStatusRequest { name: moot.clone(), wait: false })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(now.state(), pb::CheckpointState::Capturing, "{now:?}");
    control
        .rewind(pb::RewindRequest { checkpoint: early.clone(), cause: 7, worker: 0 })
        .await
        .expect("rewind");
    // Bounded only so that a regression fails instead of hanging.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
        .await
        .expect("the waiter heard of the rewind")
        .expect("waiter task")
        .expect("status answers")
        .into_inner();
    assert_eq!(answer.state(), pb::CheckpointState::Failed, "{answer:?}");
    assert!(answer.error.contains("rewound to") && answer.error.contains(&early), "{}", answer.error);
    let _ = std::fs::remove_dir_all(&root);
}
