//! Checkpoints checked in every byte: a damaged manifest is never restored
//! from (restore falls back to the next older checkpoint and says why),
//! retired and failed checkpoints leave nothing that looks like data loss,
//! and the memory pending checkpoints hold is counted and bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::ArrayD;
use ps_server::checkpoint::{CheckpointError, find_checkpoint};
use ps_server::{LocalCluster, OptimizerConfig, PolicyName, ShardConfig};
use ps_worker::{CheckpointWatch, TensorDecl, Worker, WorkerConfig, WorkerError};
use sha2::{Digest, Sha256};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-integrity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn config(policy: PolicyName, workers: u32, root: &Path) -> ShardConfig {
    ShardConfig {
        num_workers: workers,
        policy,
        staleness: 10,
        split_threshold: 16,
        optimizer: OptimizerConfig::sgd(0.1),
        checkpoint_dir: Some(root.to_path_buf()),
        keep_checkpoints: 3,
        metrics: true,
        ..ShardConfig::default()
    }
}

fn grads(w: u32, clock: u64) -> BTreeMap<String, ArrayD<f32>> {
    let g = |n: usize, k: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.3 + w as f32 + clock as f32 * k).sin()).collect()
    };
    BTreeMap::from([
        ("big".to_string(), ArrayD::from_shape_vec(vec![4, 8], g(32, 0.7)).expect("shape")),
        ("small".to_string(), ArrayD::from_shape_vec(vec![3], g(3, 0.2)).expect("shape")),
    ])
}

async fn worker(spec: &ps_proto::ClusterSpec, id: u32) -> Worker {
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
    // `big` (32 elements >= 16) is split over every shard; `small` lives on one.
    w.declare(&TensorDecl::new("big", &[4, 8]).normal(0.0, 1.0, 5)).await.expect("declare big");
    w.declare(&TensorDecl::new("small", &[3]).constant(0.5)).await.expect("declare small");
    w
}

/// One step of worker `w`: pull, push its gradient.
async fn step(w: &mut Worker, id: u32) {
    w.pull().await.expect("pull");
    let clock = w.clock();
    w.push(&grads(id, clock)).await.expect("push");
}

/// Sync steps until `until`, with a complete checkpoint at each clock in `at`.
async fn steps_with_checkpoints(w: &mut Worker, until: u64, at: &[u64]) -> Vec<String> {
    let mut names = Vec::new();
    while w.clock() < until {
        if at.contains(&w.clock()) {
            let name = w.checkpoint(w.clock()).await.expect("checkpoint");
            w.wait_checkpoint(&name).await.expect("checkpoint completes");
            names.push(name);
        }
        step(w, 0).await;
    }
    names
}

/// Rewrites `manifest.sha256` to match the manifest as it is now, as a
/// buggy writer would: only the cross-checks can catch what it vouches for.
fn vouch_for_manifest(dir: &Path) {
    let bytes = std::fs::read(dir.join("manifest.json")).expect("manifest");
    let line = format!("{:x}  manifest.json\n", Sha256::digest(&bytes));
    std::fs::write(dir.join("manifest.sha256"), line).expect("write checksum");
}

/// Replaces the first `from` in `dir/file` by `to`.
fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{file} has no {from:?}:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}

/// A sync cluster of 2 shards with complete checkpoints at clocks 2 and 4;
/// returns the root, the cluster (kept alive) and the two directories.
async fn two_checkpoints(name: &str) -> (PathBuf, LocalCluster, PathBuf, PathBuf) {
    let root = scratch(name);
    let cluster = LocalCluster::start(2, config(PolicyName::Sync, 1, &root)).await.expect("start");
    let mut w = worker(cluster.spec(), 0).await;
    let names = steps_with_checkpoints(&mut w, 5, &[2, 4]).await;
    let (older, newer) = (root.join(&names[0]), root.join(&names[1]));
    assert_eq!(find_checkpoint(&root).expect("valid").manifest.clock, 4);
    (root, cluster, older, newer)
}

/// Restoring from `root` picks the clock-2 checkpoint and reports the newer
/// one as skipped for `reason`, with `detail` in its message.
fn falls_back(root: &Path, newer: &Path, reason: &str, detail: &[&str]) {
    let loaded = find_checkpoint(root).expect("falls back to the older checkpoint");
    assert_eq!(loaded.manifest.clock, 2, "restored from a damaged manifest");
    let name = newer.file_name().expect("name").to_string_lossy().into_owned();
    let skipped: Vec<String> = loaded.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(loaded.skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        (loaded.skipped[0].name.as_str(), loaded.skipped[0].reason),
        (name.as_str(), reason),
        "{skipped:?}"
    );
    for d in detail {
        assert!(skipped[0].contains(d), "{d:?} not in {skipped:?}");
    }
    // Asked for exactly the damaged one: an error, never a restore.
    assert!(find_checkpoint(newer).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_manifest_clock_is_caught_by_checksum_and_by_cross_check() {
    let (root, _cluster, _older, newer) = two_checkpoints("clock").await;
    // "clock": 4 -> 5 is one flipped bit (0x34 ^ 0x01).
    edit(&newer, "manifest.json", "\"clock\": 4", "\"clock\": 5");
    let err = find_checkpoint(&newer).expect_err("flipped manifest accepted");
    assert!(matches!(err, CheckpointError::Checksum { listed_in: "manifest.sha256", .. }), "{err}");
    falls_back(
        &root,
        &newer,
        "checksum mismatch",
        &["manifest.json: checksum mismatch: manifest.sha256 says"],
    );

    // Even with a checksum that vouches for it, the clock disagrees with the directory name.
    vouch_for_manifest(&newer);
    let err = find_checkpoint(&newer).expect_err("wrong clock accepted");
    assert!(matches!(&err, CheckpointError::Mismatch { field, .. } if field == "clock"), "{err}");
    falls_back(
        &root,
        &newer,
        "cross-check mismatch",
        &["manifest.json: clock is 5, but the directory name ckpt-000000000004"],
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_step_count_is_caught_against_the_fragments_and_the_shard_file() {
    let (root, _cluster, _older, newer) = two_checkpoints("steps").await;
    // Every part has had 4 optimizer steps; 4 -> 5 in big's first part.
    let manifest = std::fs::read_to_string(newer.join("manifest.json")).expect("manifest");
    let big = manifest.find("\"name\": \"big\"").expect("big");
    let at = big + manifest[big..].find("\"optimizer_steps\": 4").expect("steps");
    let file_at = manifest[..at].rfind("\"file\": \"").expect("file") + 9;
    let file = manifest[file_at..].split('"').next().expect("file name").to_string();
    let flipped = format!("{}\"optimizer_steps\": 5{}", &manifest[..at], &manifest[at + 20..]);
    std::fs::write(newer.join("manifest.json"), flipped).expect("write");
    vouch_for_manifest(&newer);
    falls_back(
        &root,
        &newer,
        "cross-check mismatch",
        &["tensors[big].parts[0].optimizer_steps is 5, but the merge of the shard fragments says 4"],
    );

    // The same flip in the fragment of that part's shard: the shard file's
    // own metadata still says 4.
    let fragment = file.replace(".safetensors", ".json");
    let text = std::fs::read_to_string(newer.join(&fragment)).expect("fragment");
    let big = text.find("\"name\": \"big\"").expect("big in fragment");
    let at = big + text[big..].find("\"optimizer_steps\": 4").expect("steps");
    std::fs::write(
        newer.join(&fragment),
        format!("{}\"optimizer_steps\": 5{}", &text[..at], &text[at + 20..]),
    )
    .expect("write");
    let err = find_checkpoint(&newer).expect_err("step count accepted against the shard file");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{file}: metadata \"steps/big\" is 4, but manifest.json says 5")),
        "{text}"
    );
    falls_back(&root, &newer, "cross-check mismatch", &["metadata \"steps/"]);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_manifest_is_skipped_and_inspect_says_why() {
    let (root, _cluster, older, newer) = two_checkpoints("truncated").await;
    let path = newer.join("manifest.json");
    let bytes = std::fs::read(&path).expect("manifest");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    falls_back(&root, &newer, "checksum mismatch", &["manifest.json: checksum mismatch"]);

    let inspect = Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["inspect", root.to_str().expect("utf-8")])
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}{}", String::from_utf8_lossy(&inspect.stderr));
    let name = newer.file_name().expect("name").to_string_lossy().into_owned();
    assert!(text.contains(&format!("skipped {name}: checksum mismatch")), "{text}");
    assert!(text.contains(&format!("checkpoint {} (verified)", older.display())), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_leftover_is_not_damage_and_goes_at_the_next_checkpoint() {
    let (root, cluster, older, _newer) = two_checkpoints("prune-kill").await;
    // A kill between retiring's rename and its delete: the hidden
    // directory, half deleted, is all that is left of the older checkpoint.
    let name = older.file_name().expect("name").to_string_lossy().into_owned();
    let leftover = root.join(format!(".retired-{name}"));
    std::fs::rename(&older, &leftover).expect("rename");
    std::fs::remove_file(leftover.join("shard-0000.safetensors")).expect("half deleted");

    let loaded = find_checkpoint(&root).expect("newest is intact");
    assert_eq!(loaded.manifest.clock, 4);
    assert!(loaded.skipped.is_empty(), "a retired leftover reported: {:?}", loaded.skipped);
    let inspect = Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["inspect", root.to_str().expect("utf-8")])
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success() && !text.contains("skipped"), "{text}");

    // The next complete checkpoint removes it.
    let mut w = worker(cluster.spec(), 0).await;
    steps_with_checkpoints(&mut w, 7, &[6]).await;
    assert!(!leftover.exists(), "the leftover of a retired checkpoint is still there");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_checkpoint_dir_that_is_a_file_is_refused_at_start_in_one_line() {
    let root = scratch("dir-is-file");
    let file = root.join("checkpoints");
    std::fs::write(&file, b"x").expect("file");
    let out = Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--metrics-listen", "off"])
        .args(["--checkpoint-dir", file.to_str().expect("utf-8")])
        .output()
        .expect("run ps-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it served");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("--checkpoint-dir: {}: is not a directory", file.display())), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_failed_on_one_shard_reaches_the_worker_and_leaves_no_half_behind() {
    let root = scratch("half");
    let cluster = LocalCluster::start(2, config(PolicyName::Sync, 1, &root)).await.expect("start");
    let mut w = worker(cluster.spec(), 0).await;
    let name = w.checkpoint(2).await.expect("checkpoint");
    // Shard 1 cannot create its file (a directory is in the way); shard 0 can.
    std::fs::create_dir_all(root.join(&name).join("shard-0001.safetensors.tmp")).expect("obstacle");
    let mut watch = CheckpointWatch::new();
    watch.requested(name.clone());
    steps_with_checkpoints(&mut w, 3, &[]).await;
    let failures = watch.finish(&w, std::time::Duration::from_secs(60)).await.expect("statuses");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((failures[0].name.as_str(), failures[0].shard), (name.as_str(), 1), "{failures:?}");
    assert!(failures[0].error.contains("shard-0001.safetensors.tmp"), "{}", failures[0]);
    assert!(watch.all_failed());
    let err = w.wait_checkpoint(&name).await.expect_err("a failed checkpoint completed");
    assert!(matches!(err, WorkerError::Checkpoint { shard: 1, .. }), "{err}");
    // Shard 0's finished share is gone with it, whichever shard finished first.
    assert!(!root.join(&name).exists(), "the rest of a failed checkpoint was left behind");
    assert!(find_checkpoint(&root).is_err());
    // The next checkpoint is not disturbed.
    let next = w.checkpoint(4).await.expect("checkpoint");
    steps_with_checkpoints(&mut w, 5, &[]).await;
    w.wait_checkpoint(&next).await.expect("the next checkpoint completes");
    assert!(find_checkpoint(&root).expect("complete").skipped.is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

/// The sum over shards of one sample of the exposition.
fn sample(cluster: &LocalCluster, line_start: &str) -> f64 {
    ps_proto::exposition::encode(cluster.registries())
        .lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_of_pending_checkpoints_count_in_held_bytes() {
    const SHADOWS: &str = "ps_server_held_bytes{kind=\"checkpoint_shadows\",";
    let root = scratch("shadows");
    let cluster = LocalCluster::start(2, config(PolicyName::Async, 2, &root)).await.expect("start");
    let mut fast = worker(cluster.spec(), 0).await;
    let mut slow = worker(cluster.spec(), 1).await;
    let name = fast.checkpoint(1).await.expect("checkpoint");
    assert_eq!(sample(&cluster, SHADOWS), 0.0);
    // Fast pushes clocks 0 and 1; clock 1 must not reach the snapshot, so
    // every part forks a shadow: 32 + 3 f32 values (SGD keeps no state).
    step(&mut fast, 0).await;
    assert_eq!(sample(&cluster, SHADOWS), 0.0, "clock 0 belongs in the snapshot: no shadow");
    step(&mut fast, 0).await;
    assert_eq!(sample(&cluster, SHADOWS), (35 * 4) as f64);
    // Slow pushes clock 0: the cut is complete, the shadows become the snapshot.
    step(&mut slow, 1).await;
    fast.wait_checkpoint(&name).await.expect("complete");
    assert_eq!(sample(&cluster, SHADOWS), 0.0);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_checkpoints_are_bounded_with_resource_exhausted() {
    let root = scratch("bound");
    let cfg = ShardConfig { max_pending_checkpoints: 2, ..config(PolicyName::Async, 1, &root) };
    let cluster = LocalCluster::start(2, cfg).await.expect("start");
    let mut w = worker(cluster.spec(), 0).await;
    let first = w.checkpoint(2).await.expect("first");
    let second = w.checkpoint(3).await.expect("second");
    let err = w.checkpoint(4).await.expect_err("a third pending checkpoint accepted");
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string().contains("2 checkpoints are pending (limit --max-pending-checkpoints 2)"),
        "{err}"
    );
    // Asking again for a pending one is not a new one.
    assert_eq!(w.checkpoint(2).await.expect("same checkpoint"), first);
    for _ in 0..3 {
        step(&mut w, 0).await;
    }
    w.wait_checkpoint(&first).await.expect("first completes");
    w.wait_checkpoint(&second).await.expect("second completes");
    w.checkpoint(4).await.expect("room again once they are written");
    let _ = std::fs::remove_dir_all(&root);
}
