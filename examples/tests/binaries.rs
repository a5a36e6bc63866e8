//! The `ps-worker` binary trains against real `ps-server` processes.

use std::process::{Child, Command, Stdio};

mod common;

use common::ps_server;
use ps_server::process::start_cluster;

#[test]
fn two_worker_processes_train_against_a_shard_process() {
    let args = ["--workers", "2", "--policy", "ssp", "--staleness", "1", "--lr", "0.3"];
    let split_threshold = ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD;
    let (_server, spec) =
        start_cluster(&ps_server(), 1, split_threshold, &args).unwrap_or_else(|e| panic!("{e}"));
    let addr = spec.shards[0].clone();

    let workers: Vec<Child> = (0..2)
        .map(|id| {
            Command::new(env!("CARGO_BIN_EXE_ps-worker"))
                .args(["--shards", &addr, "--worker", &id.to_string(), "--model", "softmax"])
                .args(["--max-steps", "200"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ps-worker")
        })
        .collect();
    for (id, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().expect("ps-worker runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker {id}: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
        let accuracy: f32 = stdout
            .rsplit("test accuracy ")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("worker {id} printed no accuracy: {stdout}"));
        assert!(stdout.contains("200 steps"), "{stdout}");
        // 8 runs gave 0.70-0.78 (ssp interleavings vary); chance is 0.1.
        assert!(accuracy > 0.5, "worker {id}: accuracy {accuracy}");
    }
}

#[test]
fn a_bad_shard_address_fails_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ps-worker"))
        .args(["--shards", "not a uri", "--worker", "0", "--max-steps", "1"])
        .output()
        .expect("run ps-worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard 0") && err.contains("invalid address"), "{err}");
}

/// Job settings that make no sense are refused before the worker connects:
/// one line naming the flag, a non-zero exit, no panic.
#[test]
fn nonsensical_job_settings_are_refused_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--shards", "127.0.0.1:18500,,foo"],
            "shard 1 of the shard list has an invalid address \"\": expected host:port",
        ),
        (&["--retry-for=-1"], "--retry-for must be a number of seconds >= 0, got -1"),
        (&["--batch", "0"], "--batch must be at least 1, got 0"),
        (&["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (&["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
        (&["--slowdown", "0.5"], "--slowdown must be a factor of at least 1, got 0.5"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ps-worker"))
            .args(["--worker", "0"])
            .args(if args.contains(&"--shards") { &[][..] } else { &["--shards", "127.0.0.1:1"][..] })
            .args(*args)
            .output()
            .expect("run ps-worker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "ps-worker {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "ps-worker {args:?}: one line, got {err:?}");
        assert!(err.contains(expected), "ps-worker {args:?}: expected {expected:?} in {err:?}");
    }
}

/// The optimizer is the shards' setting: ps-worker has no flag for it, so
/// the cluster has one source of truth.
#[test]
fn the_optimizer_is_set_on_the_shards_only() {
    for flag in ["--optimizer", "--lr", "--momentum"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ps-worker"))
            .args(["--worker", "0", "--shards", "127.0.0.1:1", flag, "1"])
            .output()
            .expect("run ps-worker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ps-worker {flag}: {err}");
        assert!(err.contains(&format!("unexpected argument '{flag}'")), "{err}");
    }
}

/// `--checkpoint-every` against shards that write no checkpoints is refused
/// at start, naming the shard and what to change, instead of training on
/// with every checkpoint skipped.
#[test]
fn checkpoints_asked_of_shards_without_a_checkpoint_dir_are_refused() {
    let split_threshold = ps_proto::cluster::DEFAULT_SPLIT_THRESHOLD;
    let (_server, spec) = start_cluster(&ps_server(), 1, split_threshold, &["--workers", "1"])
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = spec.shards[0].clone();
    let out = Command::new(env!("CARGO_BIN_EXE_ps-worker"))
        .args(["--shards", &addr, "--worker", "0", "--metrics-listen", "off", "--checkpoint-every", "100"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ps-worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, got {err:?}");
    let expected = format!(
        "--checkpoint-every 100 asks for checkpoints, but shard 0 ({addr}) was started without --checkpoint-dir"
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("or drop --checkpoint-every"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no training: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
