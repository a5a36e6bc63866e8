//! The docs are executable: every `sh` block of README.md and
//! docs/operations.md is registered here, word for word, and every block
//! that starts processes is run as written, with only its ports (free ones
//! instead of 7070/7071) and binary paths substituted, and its outcome
//! asserted. A block that changes, or a new one, fails
//! [`every_sh_block_of_the_docs_is_registered`] until this file is updated
//! with it.
//!
//! The blocks run in a scratch directory holding a link to the shipped
//! data (`examples/data`), as in a checkout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// How a registered block is checked.
enum Check {
    /// Run here by a test of this file.
    Run(&'static str),
    /// Run by `.ci/run` (it runs the test suite itself, or a main job that
    /// does not fit a test), which asserts its outcome.
    Ci(&'static str),
}

/// Every `sh` block of the docs, word for word, with how it is checked.
const BLOCKS: &[(&str, &str, Check)] = &[
    ("README.md", MAIN_COMMANDS, Check::Ci("runs both commands and checks the main job's summary")),
    ("README.md", CLUSTER, Check::Run("readme_cluster_trains_well_with_default_flags_under_ssp_and_async")),
    ("README.md", RESTART, Check::Run("readme_shard_restart_brings_the_job_back")),
    (
        "README.md",
        PYTHON,
        Check::Ci("installs the package in a venv, runs the example and checks its summary"),
    ),
];

const PYTHON: &str = "\
pip install ./python                                  # the worker library for Python (PyO3 + maturin; needs the Rust toolchain)
python python/examples/fashion_mnist_cnn.py           # PyTorch CNN on Fashion-MNIST, 4 worker processes, sync / ssp(3) / async vs a PyTorch baseline
";

const MAIN_COMMANDS: &str = "\
cargo run --release -p ps-examples --bin compare   # main job: Fashion-MNIST under every policy (~3 min cold build, ~2 min run)
cargo test --release --workspace                   # the tests (.ci/run runs them, plus fmt, clippy, the main job, the Python and Prometheus checks)
";

const CLUSTER: &str = r#"cargo build --release
# two shards for four workers, bounded staleness 3
target/release/ps-server --listen 127.0.0.1:7070 --shard-id 0 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --policy ssp --staleness 3 & shards="$!"
target/release/ps-server --listen 127.0.0.1:7071 --shard-id 1 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --policy ssp --staleness 3 & shards="$shards $!"
for w in 0 1 2 3; do
  target/release/ps-worker --shards 127.0.0.1:7070,127.0.0.1:7071 --worker $w & workers="$workers $!"
done
wait $workers   # each worker prints its steps/s, blocked time and test accuracy
kill $shards
"#;

const RESTART: &str = r#"# sync, checkpoints in ckpt/ every 500 clocks; shard 1 dies after the first one and comes back
target/release/ps-server --listen 127.0.0.1:7070 --shard-id 0 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --checkpoint-dir ckpt & shard0=$!
target/release/ps-server --listen 127.0.0.1:7071 --shard-id 1 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 --checkpoint-dir ckpt & shard1=$!
for w in 0 1 2 3; do
  target/release/ps-worker --shards 127.0.0.1:7070,127.0.0.1:7071 --worker $w --checkpoint-every 500 & workers="$workers $!"
done
until ls ckpt/*/manifest.json > /dev/null 2>&1; do sleep 0.1; done
kill -9 $shard1
target/release/ps-server --listen 127.0.0.1:7071 --shard-id 1 --shards 127.0.0.1:7070,127.0.0.1:7071 --workers 4 \
  --checkpoint-dir ckpt --restore ckpt & shard1=$!
# prints: ps-server shard 1/2 restored ckpt/ckpt-000000000500-... at clock 500 (4 tensors)
wait $workers
target/release/ps-worker checkpoint --shards 127.0.0.1:7070,127.0.0.1:7071   # operator: one more, now
target/release/ps-server inspect ckpt
kill $shard0 $shard1
"#;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("examples/ is in the repository").to_path_buf()
}

/// The `sh` blocks of a markdown file, in order, each with its line.
fn sh_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```sh") => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn every_sh_block_of_the_docs_is_registered() {
    for file in ["README.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(root().join(file)).expect("read the docs");
        for (line, block) in sh_blocks(&text) {
            assert!(
                BLOCKS.iter().any(|(f, registered, _)| *f == file && *registered == block),
                "{file}:{line}: this sh block is not registered in examples/tests/docs.rs (new, or changed \
                 without its check):\n{block}"
            );
        }
    }
    for (file, block, check) in BLOCKS {
        let text = std::fs::read_to_string(root().join(file)).expect("read the docs");
        assert!(
            sh_blocks(&text).iter().any(|(_, b)| b == block),
            "a registered block is no longer in {file}: remove it here, with its check:\n{block}"
        );
        if let Check::Run(test) = check {
            let this = include_str!("docs.rs");
            assert!(
                this.contains(&format!("fn {test}()")),
                "the check {test} of a {file} block is not a test here"
            );
        }
        if let Check::Ci(what) = check {
            let ci = std::fs::read_to_string(root().join(".ci/run")).expect("read .ci/run");
            for command in
                block.lines().filter_map(|l| l.split('#').next()).map(str::trim).filter(|c| !c.is_empty())
            {
                assert!(ci.contains(command), ".ci/run must run `{command}` ({what})");
            }
        }
    }
}

/// A free port on 127.0.0.1 (the OS picks it; it is released at once, and
/// the block's shard binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A scratch directory that looks like a checkout to the blocks: the
/// shipped data under examples/data.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ps-docs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("examples")).expect("scratch dir");
    std::os::unix::fs::symlink(root().join("examples/data"), dir.join("examples/data"))
        .expect("link the data");
    dir
}

/// `block` as it runs here: free ports for 7070 and 7071, the binaries of
/// this build for `target/release/`, and no `cargo build` (the test build
/// made the binaries).
fn localised(block: &str) -> String {
    let bin = common::ps_server().parent().expect("binary dir").display().to_string();
    block
        .replace("cargo build --release\n", "")
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7071", &format!("127.0.0.1:{}", free_port()))
        .replace("target/release/", &format!("{bin}/"))
}

/// Runs `script` with bash in `dir`, killing its whole process group if
/// it takes longer than `limit`; returns (success, stdout, stderr).
fn run(script: &str, dir: &Path, limit: Duration) -> (bool, String, String) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let group = child.id() as i32;
    let started = Instant::now();
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll bash") {
            break Some(status);
        }
        if started.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the block left running (or everything, on time-out) goes.
    let _ = Command::new("kill").args(["-9", "--", &format!("-{group}")]).status();
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    assert!(status.is_some(), "the block did not finish within {limit:?}:\n{stdout}\n{stderr}");
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// Each worker's final test accuracy, by worker id, from the lines
/// `worker N done: ... test accuracy X`.
fn accuracies(stdout: &str) -> Vec<(u32, f32)> {
    let mut found: Vec<(u32, f32)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("worker ")?;
            let (id, rest) = rest.split_once(" done: ")?;
            let accuracy = rest.rsplit("test accuracy ").next()?.trim().parse().ok()?;
            Some((id.parse().ok()?, accuracy))
        })
        .collect();
    found.sort_by_key(|(id, _)| *id);
    found
}

#[test]
fn readme_cluster_trains_well_with_default_flags_under_ssp_and_async() {
    for (policy, flags) in [("ssp", None), ("async", Some("--policy async"))] {
        let block = match flags {
            None => CLUSTER.to_string(),
            Some(f) => CLUSTER.replace("--policy ssp --staleness 3", f),
        };
        let dir = scratch(policy);
        let (ok, stdout, stderr) = run(&localised(&block), &dir, Duration::from_secs(600));
        assert!(ok, "{policy}: the block failed:\n{stdout}\n{stderr}");
        let found = accuracies(&stdout);
        assert_eq!(found.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [0, 1, 2, 3], "{policy}:\n{stdout}");
        for (id, accuracy) in found {
            assert!(accuracy >= 0.84, "{policy}: worker {id} reached only {accuracy}:\n{stdout}\n{stderr}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The README's cluster under sync, each worker dumping its final read.
fn sync_cluster_dumping(dump: &str) -> String {
    CLUSTER
        .replace("--policy ssp --staleness 3", "--policy sync")
        .replace("--worker $w &", &format!("--worker $w --dump-dir {dump}/$w &"))
}

/// Every file a run dumped, by path under its dump directory.
fn dumped(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for worker in std::fs::read_dir(dir).expect("dump dir").map(|e| e.expect("entry").path()) {
        for f in std::fs::read_dir(&worker).expect("worker dump").map(|e| e.expect("entry").path()) {
            let name = f.strip_prefix(dir).expect("under the dump dir").to_path_buf();
            files.push((name, std::fs::read(&f).expect("read dump")));
        }
    }
    files.sort();
    files
}

/// Two sync runs of the README's cluster (4 workers, 2 shards) end with
/// bit-identical parameters, whatever order their pushes arrived in.
#[test]
fn readme_cluster_under_sync_is_reproducible_to_the_bit() {
    let dir = scratch("sync-twice");
    let mut runs = Vec::new();
    for run_dir in ["first", "second"] {
        let block = localised(&sync_cluster_dumping(run_dir));
        let (ok, stdout, stderr) = run(&block, &dir, Duration::from_secs(600));
        assert!(ok, "{run_dir}: the block failed:\n{stdout}\n{stderr}");
        let found = accuracies(&stdout);
        assert_eq!(found.len(), 4, "{run_dir}:\n{stdout}");
        assert!(found.iter().all(|(_, a)| *a >= 0.84), "{run_dir}: {found:?}");
        runs.push(dumped(&dir.join(run_dir)));
    }
    assert_eq!(runs[0].len(), 4 * 5, "4 workers x (4 tensors + index)");
    for ((name, a), (_, b)) in runs[0].iter().zip(&runs[1]) {
        assert!(a == b, "{} differs between two sync runs", name.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readme_shard_restart_brings_the_job_back() {
    let dir = scratch("restart");
    let (ok, stdout, stderr) = run(&localised(RESTART), &dir, Duration::from_secs(600));
    assert!(ok, "the block failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ps-server shard 1/2 restored "), "{stdout}");
    let found = accuracies(&stdout);
    assert_eq!(found.len(), 4, "every worker finishes:\n{stdout}\n{stderr}");
    for (id, accuracy) in &found {
        assert!(*accuracy >= 0.84, "worker {id} reached only {accuracy}:\n{stdout}");
    }
    // Sync: every worker read the same final parameters.
    assert!(found.windows(2).all(|w| w[0].1 == w[1].1), "sync workers disagree: {found:?}");
    assert!(stderr.contains("every shard is back there"), "the workers rewound shard 0:\n{stderr}");
    assert!(stdout.contains("checkpoint complete at clock"), "the operator's checkpoint:\n{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
