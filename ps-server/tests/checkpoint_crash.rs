//! Checkpoints across real processes: a sync run killed with SIGKILL and
//! restored ends bit-identical to an uninterrupted one, and a shard killed at
//! any point of a checkpoint write restores the previous complete checkpoint
//! or the new one, never a mix.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use ndarray::ArrayD;
use ps_proto::ClusterSpec;
use ps_worker::{TensorDecl, Worker, WorkerConfig};

/// A `ps-server` process whose stdout lines arrive on a shared channel;
/// killed (SIGKILL) when dropped.
struct Shard {
    child: Child,
    addr: String,
    restored: Option<String>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines printed by the shards, tagged with the shard id.
type Lines = mpsc::Receiver<(u32, String)>;

/// Starts `n` shards with `args`; shard `i` also gets `env(i)`. Returns once
/// each printed its listening line.
fn start(
    n: u32,
    args: &[&str],
    env: impl Fn(u32) -> Vec<(String, String)>,
) -> (Vec<Shard>, ClusterSpec, Lines) {
    let (tx, rx) = mpsc::channel();
    let mut shards = Vec::new();
    for id in 0..n {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ps-server"))
            .args(["--listen", "127.0.0.1:0", "--shard-id", &id.to_string(), "--num-shards", &n.to_string()])
            .args(["--split-threshold", "8", "--metrics-listen", "off"])
            .args(args)
            .envs(env(id))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ps-server");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send((id, line)).is_err() {
                    break;
                }
            }
        });
        shards.push(Shard { child, addr: String::new(), restored: None });
    }
    // Each shard prints at most a restored line, then its listening line.
    while shards.iter().any(|s| s.addr.is_empty()) {
        let (id, line) = rx.recv_timeout(Duration::from_secs(60)).expect("a shard did not start within 60 s");
        let shard = &mut shards[id as usize];
        if line.contains("listening on") {
            shard.addr = line.rsplit(' ').next().expect("address").to_string();
        } else if line.contains("restored") {
            shard.restored = Some(line);
        }
    }
    let spec = ClusterSpec { shards: shards.iter().map(|s| s.addr.clone()).collect(), split_threshold: 8 };
    (shards, spec, rx)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

async fn connect(spec: &ClusterSpec, id: u32) -> Worker {
    let mut w = Worker::connect(WorkerConfig::new(spec.clone(), id)).await.expect("connect");
    w.declare(&TensorDecl::new("w", &[DIM]).normal(0.0, 0.1, 11).adam(0.05)).await.expect("declare w");
    w.declare(&TensorDecl::new("b", &[1]).adam(0.05)).await.expect("declare b");
    w
}

fn bits(values: &BTreeMap<String, ArrayD<f32>>) -> Vec<u32> {
    values.values().flat_map(|a| a.iter().map(|v| v.to_bits())).collect()
}

/// Runs `workers` sync workers from their resume clock to `until`; at
/// `checkpoint_at` every worker requests a checkpoint before pushing it.
/// Returns the name of the checkpoint (from worker 0) and the final values.
async fn run(
    spec: &ClusterSpec,
    workers: u32,
    until: u64,
    checkpoint_at: Option<u64>,
) -> (Option<String>, Vec<u32>) {
    let mut tasks = Vec::new();
    for id in 0..workers {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = connect(&spec, id).await;
            let mut name = None;
            while worker.clock() < until {
                let step = worker.clock();
                if checkpoint_at == Some(step) {
                    name = Some(worker.checkpoint(step).await.expect("checkpoint"));
                }
                let pulled = worker.pull().await.expect("pull");
                let (w, b) = unpack(&pulled.values);
                worker.push(&grad_map(&w, b, id, step)).await.expect("push");
            }
            if let (Some(name), 0) = (&name, id) {
                worker.wait_checkpoint(name).await.expect("checkpoint completes");
            }
            let last = bits(&worker.pull().await.expect("final pull").values);
            (name, last)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("worker task"));
    }
    for r in &results[1..] {
        assert_eq!(r.1, results[0].1, "sync workers read different bytes");
    }
    results.swap_remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_run_killed_and_restored_ends_bit_identical_to_an_uninterrupted_run() {
    let args = ["--workers", "2", "--policy", "sync"];
    let reference = {
        let (_shards, spec, _) = start(2, &args, |_| vec![]);
        run(&spec, 2, 40, None).await.1
    };

    let root = scratch("sync-kill");
    let with_dir = [&args[..], &["--checkpoint-dir", root.to_str().expect("utf-8")]].concat();
    {
        let (shards, spec, _) = start(2, &with_dir, |_| vec![]);
        let (name, _) = run(&spec, 2, 30, Some(20)).await;
        assert!(root.join(name.expect("checkpoint name")).join("manifest.json").exists());
        drop(shards); // SIGKILL at clock 30: the 10 steps after the checkpoint are lost
    }
    let restore = [&with_dir[..], &["--restore", root.to_str().expect("utf-8")]].concat();
    let (shards, spec, _) = start(2, &restore, |_| vec![]);
    for s in &shards {
        assert!(s.restored.as_deref().is_some_and(|l| l.contains("at clock 20")), "{:?}", s.restored);
    }
    let resumed = Worker::connect(WorkerConfig::new(spec.clone(), 1)).await.expect("connect");
    assert_eq!(resumed.clock(), 20, "workers resume at the checkpoint's clock");
    drop(resumed);
    let (_, restored) = run(&spec, 2, 40, None).await;
    assert_eq!(restored, reference, "restored run differs from the uninterrupted one");
    let _ = std::fs::remove_dir_all(&root);
}

/// Takes a complete checkpoint at clock 2, then one at clock 4 that shard
/// processes are killed in the middle of writing (at `point`, or after it
/// completed when `point` is `None`); restores into `restore_shards` shards
/// and checks the values are exactly those of clock 2 or clock 4.
async fn kill_during_write(point: Option<&str>, restore_shards: u32) {
    let root = scratch(&format!("crash-{}", point.unwrap_or("none")));
    let args = ["--workers", "1", "--policy", "sync", "--checkpoint-dir", root.to_str().expect("utf-8")];
    let pause = point.map(|p| format!("{p}@4"));
    // Shard 1 pauses before or between its files; for the manifest, whichever
    // shard writes it pauses (both are armed).
    let env = |id: u32| match (&pause, point) {
        (Some(p), Some("before-manifest-rename")) => vec![("PS_TEST_PAUSE_AT".to_string(), p.clone())],
        (Some(p), _) if id == 1 => vec![("PS_TEST_PAUSE_AT".to_string(), p.clone())],
        _ => vec![],
    };
    let (at_2, at_4) = {
        let (shards, spec, lines) = start(2, &args, env);
        let mut worker = connect(&spec, 0).await;
        let mut values_at = BTreeMap::new();
        for step in 0..4 {
            if step == 2 {
                let name = worker.checkpoint(2).await.expect("checkpoint 2");
                worker.wait_checkpoint(&name).await.expect("checkpoint 2 completes");
            }
            let pulled = worker.pull().await.expect("pull");
            values_at.insert(step, bits(&pulled.values));
            let (w, b) = unpack(&pulled.values);
            worker.push(&grad_map(&w, b, 0, step)).await.expect("push");
        }
        let name = worker.checkpoint(4).await.expect("checkpoint 4");
        values_at.insert(4, bits(&worker.pull().await.expect("pull").values));
        match point {
            Some(p) => {
                let (_, line) =
                    lines.recv_timeout(Duration::from_secs(60)).expect("a shard reaches the pause point");
                assert_eq!(line, format!("checkpoint paused at {p}"));
            }
            None => {
                worker.wait_checkpoint(&name).await.expect("checkpoint 4 completes");
            }
        }
        drop(shards); // SIGKILL every shard
        (values_at[&2].clone(), values_at[&4].clone())
    };
    let expect_clock = if point.is_none() { 4 } else { 2 };
    let restore = ["--workers", "1", "--policy", "sync", "--restore", root.to_str().expect("utf-8")];
    let (shards, spec, _) = start(restore_shards, &restore, |_| vec![]);
    for s in &shards {
        let line = s.restored.as_deref().unwrap_or("");
        assert!(line.contains(&format!("at clock {expect_clock} ")), "point {point:?}: {line}");
    }
    let worker = connect(&spec, 0).await;
    assert_eq!(worker.clock(), expect_clock);
    let values = bits(&worker.pull().await.expect("pull restored").values);
    let expected = if expect_clock == 4 { &at_4 } else { &at_2 };
    assert_eq!(&values, expected, "point {point:?}: restored values are not those of clock {expect_clock}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_any_file_restores_the_previous_checkpoint() {
    kill_during_write(Some("before-files"), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_files_restores_the_previous_checkpoint() {
    kill_during_write(Some("between-files"), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_the_manifest_rename_restores_the_previous_checkpoint() {
    kill_during_write(Some("before-manifest-rename"), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_manifest_restores_the_new_checkpoint_on_three_shards() {
    kill_during_write(None, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_checkpoint_inspect_and_refuse_a_corrupt_restore() {
    let root = scratch("operator");
    let args = ["--workers", "1", "--policy", "async", "--checkpoint-dir", root.to_str().expect("utf-8")];
    let (_shards, spec, _) = start(2, &args, |_| vec![]);
    let mut worker = connect(&spec, 0).await;
    for step in 0..3 {
        let pulled = worker.pull().await.expect("pull");
        let (w, b) = unpack(&pulled.values);
        worker.push(&grad_map(&w, b, 0, step)).await.expect("push");
    }
    let exe = env!("CARGO_BIN_EXE_ps-server");
    let out = Command::new(common::ps_worker_bin())
        .args(["checkpoint", "--shards", &spec.shards.join(",")])
        .output()
        .expect("run ps-worker checkpoint");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("checkpoint complete at clock 3: "), "{stdout}");

    let inspect =
        Command::new(exe).args(["inspect", root.to_str().expect("utf-8")]).output().expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}");
    assert!(
        text.contains("clock 3 ") && text.contains("tensor w shape [12]") && text.contains("(verified)"),
        "{text}"
    );

    // Corrupt the only checkpoint: inspect and restore both refuse, naming the file.
    let dir = std::fs::read_dir(&root).expect("root").next().expect("a checkpoint").expect("entry").path();
    let file = dir.join("shard-0000.safetensors");
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).expect("write");
    let inspect =
        Command::new(exe).args(["inspect", dir.to_str().expect("utf-8")]).output().expect("inspect");
    let err = String::from_utf8_lossy(&inspect.stderr);
    assert!(!inspect.status.success());
    assert!(err.contains("shard-0000.safetensors: checksum mismatch"), "{err}");
    let restore = Command::new(exe)
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--metrics-listen", "off"])
        .args(["--restore", root.to_str().expect("utf-8")])
        .output()
        .expect("restore");
    let err = String::from_utf8_lossy(&restore.stderr);
    assert!(!restore.status.success(), "restored from a corrupt checkpoint");
    assert!(err.contains("no complete checkpoint") && err.contains("checksum mismatch"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_pruning_leaves_no_damage_and_the_leftover_goes_at_the_next_start() {
    let root = scratch("prune-kill");
    let dir = root.to_str().expect("utf-8");
    let args = ["--workers", "1", "--policy", "sync", "--checkpoint-dir", dir, "--keep-checkpoints", "1"];
    // Completing the checkpoint at 4 prunes the one at 2: pause between its
    // rename out of sight and its deletion, and kill the shard there.
    let pause = |_| vec![("PS_TEST_PAUSE_AT".to_string(), "retiring@2".to_string())];
    let first = {
        let (shards, spec, lines) = start(1, &args, pause);
        let mut worker = connect(&spec, 0).await;
        let mut first = String::new();
        for step in 0..4 {
            if step == 2 {
                first = worker.checkpoint(2).await.expect("checkpoint 2");
                worker.wait_checkpoint(&first).await.expect("checkpoint 2 completes");
            }
            let pulled = worker.pull().await.expect("pull");
            let (w, b) = unpack(&pulled.values);
            worker.push(&grad_map(&w, b, 0, step)).await.expect("push");
        }
        worker.checkpoint(4).await.expect("checkpoint 4");
        let (_, line) = lines.recv_timeout(Duration::from_secs(60)).expect("pruning reaches the pause point");
        assert_eq!(line, "checkpoint paused at retiring");
        drop(shards); // SIGKILL while retiring
        first
    };
    let leftover = root.join(format!(".retired-{first}"));
    assert!(leftover.exists() && !root.join(&first).exists(), "not paused between rename and delete");

    let inspect =
        Command::new(env!("CARGO_BIN_EXE_ps-server")).args(["inspect", dir]).output().expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}{}", String::from_utf8_lossy(&inspect.stderr));
    assert!(text.contains("clock 4 ") && !text.contains("skipped"), "{text}");

    // The next start removes the leftover.
    let (_shards, _spec, _) = start(1, &args, |_| vec![]);
    assert!(!leftover.exists(), "the leftover of a retired checkpoint survived a restart");
    let _ = std::fs::remove_dir_all(&root);
}
