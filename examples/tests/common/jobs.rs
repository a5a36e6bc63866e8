//! Jobs of real `ps-server` and `ps-worker` processes: start shards, start
//! workers, collect what they printed and the parameters they dumped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ps_server::process::{START_TIMEOUT, ShardProcess};

use super::ps_server;

/// Starts shard `id` of 2 listening on `listen`; returns it with its address
/// and the line it printed about a restore, if any.
pub(crate) fn shard(id: u32, listen: &str, args: &[&str]) -> (ShardProcess, String, Option<String>) {
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

/// Starts worker `id` of a job of 2 against `shards` with the ps-worker
/// defaults except a small model, 1,200 steps (unless `extra` says) and
/// `extra`, dumping its final parameters under `dump/<id>`.
pub(crate) fn worker(id: u32, shards: &str, dump: &Path, extra: &[&str]) -> Child {
    let steps: &[&str] = if extra.contains(&"--max-steps") { &[] } else { &["--max-steps", "1200"] };
    Command::new(env!("CARGO_BIN_EXE_ps-worker"))
        .args(["--shards", shards, "--split-threshold", "64", "--worker", &id.to_string()])
        .args(["--model", "mlp", "--hidden", "32", "--metrics-listen", "off"])
        .args(steps)
        .args(extra)
        .arg("--dump-dir")
        .arg(dump.join(id.to_string()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ps-worker")
}

/// Both workers of a job (see [`worker`]).
pub(crate) fn workers(shards: &str, dump: &Path, extra: &[&str]) -> Vec<Child> {
    (0..2).map(|id| worker(id, shards, dump, extra)).collect()
}

/// A worker's stdout and stderr.
pub(crate) type Output = (String, String);

/// Waits for each worker; returns their output, failing on an error exit.
pub(crate) fn finish(workers: Vec<Child>) -> Vec<Output> {
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
pub(crate) fn accuracy(stdout: &str) -> f32 {
    stdout
        .rsplit("test accuracy ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {stdout:?}"))
}

/// Every dumped parameter file's bytes, by file name.
pub(crate) fn dumped(dir: &Path) -> Vec<(String, Vec<u8>)> {
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
pub(crate) fn first_complete_checkpoint(root: &Path, workers: &mut [Child]) -> PathBuf {
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

/// An empty scratch directory for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-jobs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
