//! One shard process of a running job is killed with SIGKILL and restarted
//! with `--restore`: the `ps-worker` processes notice the new incarnation,
//! rewind the other shard to the same checkpoint, and finish the job. In
//! sync the final parameters are bit-identical to an uninterrupted run, so
//! no update after the checkpoint was applied twice (or lost).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::ps_server;
use ps_server::process::{START_TIMEOUT, ShardProcess};

/// Starts shard `id` of 2 listening on `listen`; returns it with its address
/// once it printed its listening line (after a restored line, if any).
fn shard(id: u32, listen: &str, args: &[&str]) -> (ShardProcess, String, Option<String>) {
    let mut command = Command::new(ps_server());
    command
        .args(["--listen", listen, "--shard-id", &id.to_string(), "--num-shards", "2"])
        .args(["--workers", "2", "--split-threshold", "64", "--metrics-listen", "off"])
        .args(args)
        .env("RUST_LOG", "warn");
    let shard = ShardProcess::start(command, START_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (addr, restored) = (shard.addr().to_string(), shard.restored().map(str::to_string));
    (shard, addr, restored)
}

/// Starts the two workers of a job against `shards`, dumping their final
/// parameters under `dump`.
fn workers(shards: &str, dump: &Path) -> Vec<Child> {
    (0..2)
        .map(|id| {
            Command::new(env!("CARGO_BIN_EXE_ps-worker"))
                .args(["--shards", shards, "--split-threshold", "64", "--worker", &id.to_string()])
                .args(["--model", "mlp", "--hidden", "32", "--lr", "0.05", "--metrics-listen", "off"])
                .args(["--checkpoint-every", "20", "--max-attempts", "40", "--max-steps", "1200"])
                .arg("--dump-dir")
                .arg(dump.join(id.to_string()))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ps-worker")
        })
        .collect()
}

/// A worker's stdout and stderr.
type Output = (String, String);

/// Waits for each worker; returns their output, failing on an error exit.
fn finish(workers: Vec<Child>) -> Vec<Output> {
    workers
        .into_iter()
        .enumerate()
        .map(|(id, w)| {
            let out = w.wait_with_output().expect("ps-worker runs");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
            assert!(out.status.success(), "worker {id} failed:\n{stdout}\n{stderr}");
            (stdout, stderr)
        })
        .collect()
}

/// The final test accuracy a worker printed.
fn accuracy(stdout: &str) -> f32 {
    stdout
        .rsplit("test accuracy ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout:?}"))
}

/// Every dumped parameter file's bytes, by file name.
fn dumped(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("dump dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "f32"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read dump")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "nothing dumped in {}", dir.display());
    files
        .into_iter()
        .map(|(p, b)| (Path::new(&p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(p), b))
        .collect()
}

/// The first complete checkpoint under `root`, waited for (bounded).
fn first_complete_checkpoint(root: &Path, workers: &mut [Child]) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(dir) = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("manifest.json").exists())
        {
            return dir;
        }
        // A worker may finish early (in async a fast one can be done before
        // the slow one completes clock 20); one that fails, or all ending, is an error.
        let mut ended = 0;
        for w in workers.iter_mut() {
            if let Some(status) = w.try_wait().expect("poll worker") {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = w.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("a worker failed ({status}) before any checkpoint completed:\n{err}");
                }
                ended += 1;
            }
        }
        assert!(ended < workers.len(), "every worker ended before any checkpoint completed");
        assert!(Instant::now() < deadline, "no checkpoint completed within 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Runs the job uninterrupted, then again with shard 1 killed right after the
/// first complete checkpoint and restarted on the same address with
/// `--restore`. Returns the scratch dir and both runs' worker outputs.
fn run_with_restart(policy: &str) -> (PathBuf, Vec<Output>, Vec<Output>) {
    let dir = scratch(policy);
    let server_args = |root: &Path| {
        ["--policy", policy, "--checkpoint-dir"]
            .map(String::from)
            .into_iter()
            .chain([root.display().to_string()])
            .collect::<Vec<_>>()
    };

    let root = dir.join("reference-ckpt");
    let args = server_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let reference = finish(workers(&format!("{a0},{a1}"), &dir.join("reference")));
    drop((s0, s1));

    let root = dir.join("ckpt");
    let args = server_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let mut running = workers(&format!("{a0},{a1}"), &dir.join("restarted"));
    first_complete_checkpoint(&root, &mut running);
    drop(s1); // SIGKILL, mid-training: the job is past the checkpoint
    let restore = [&args[..], &["--restore", root.to_str().expect("utf-8")]].concat();
    let (s1, again, restored) = shard(1, &a1, &restore);
    assert_eq!(again, a1, "the restarted shard listens where the workers expect it");
    let restored = restored.expect("the restarted shard says what it restored");
    assert!(restored.contains("restored"), "{restored}");
    let outputs = finish(running);
    // In async a fast worker may have finished (and left) before the kill;
    // in sync they move in lockstep, so both must have caught up.
    let recovered = outputs.iter().filter(|(_, stderr)| stderr.contains("every shard is back there")).count();
    let expected = if policy == "sync" { 2 } else { 1 };
    assert!(recovered >= expected, "{recovered} workers recovered: {outputs:?}");
    drop((s0, s1));
    (dir, reference, outputs)
}

#[test]
fn sync_job_survives_a_shard_restart_bit_identical_to_an_uninterrupted_run() {
    let (dir, reference, restarted) = run_with_restart("sync");
    for id in 0..2 {
        let (a, b) = (
            dumped(&dir.join("reference").join(id.to_string())),
            dumped(&dir.join("restarted").join(id.to_string())),
        );
        assert!(a == b, "worker {id}: final parameters differ from the uninterrupted run");
    }
    for (r, x) in reference.iter().zip(&restarted) {
        assert_eq!(accuracy(&r.0), accuracy(&x.0));
        assert!(x.0.contains("1200 steps"), "{}", x.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn async_job_survives_a_shard_restart_and_converges_as_usual() {
    let (dir, reference, restarted) = run_with_restart("async");
    // A worker that finished before the kill is not re-run, so its steps
    // after the checkpoint are gone (documented); compare only when both recovered.
    let both = restarted.iter().all(|(_, stderr)| stderr.contains("every shard is back there"));
    for (r, x) in reference.iter().zip(&restarted) {
        let (a, b) = (accuracy(&r.0), accuracy(&x.0));
        assert!(a > 0.65 && b > 0.65, "accuracy {b} after a restart, {a} without");
        // Async runs vary with the interleaving. After 400 steps they ranged
        // 0.59-0.80 (too early on the learning curve to compare); after 1200,
        // 60 runs, some beside two busy loops, gave 0.72-0.83 with pairs at
        // most 0.10 apart, so the bound leaves room.
        if both {
            assert!((a - b).abs() < 0.15, "accuracy {b} after a restart vs {a} without");
        }
        assert!(x.0.contains("1200 steps"), "{}", x.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
