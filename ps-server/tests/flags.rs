//! Settings that make no sense or disagree with the rest of the job are
//! refused at start: one line on stderr that says what to change, a
//! non-zero exit, no panic, and the shard never starts serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ps-server` with `args` and returns its exit code and stderr; the
/// process is killed if it is still running after 30 s.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ps-server"))
        .args(["--metrics-listen", "off"])
        .args(if args.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ps-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll ps-server").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ps-server {args:?} was not refused: still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("ps-server output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn nonsensical_or_inconsistent_settings_are_refused_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--workers", "2", "--staleness", "3"], "--staleness 3 applies only to --policy ssp"),
        (&["--workers", "2", "--policy", "async", "--staleness", "1"], "and the policy is async"),
        (
            &["--workers", "2", "--shards", "127.0.0.1:18500,,foo", "--shard-id", "0"],
            "shard 1 of the shard list has an invalid address \"\": expected host:port",
        ),
        (
            &["--workers", "2", "--shards", "127.0.0.1:18500,foo"],
            "shard 1 of the shard list has an invalid address \"foo\"",
        ),
        (
            &[
                "--workers",
                "1",
                "--listen",
                "127.0.0.1:7071",
                "--shards",
                "127.0.0.1:7070,127.0.0.1:7071",
                "--shard-id",
                "0",
            ],
            "shard 0 of 2 the address 127.0.0.1:7070: listen on port 7070",
        ),
        (&["--workers", "2", "--lr=-1"], "sgd learning rate must be a positive number, got -1"),
        (&["--workers", "2", "--momentum", "5"], "sgd momentum must be in [0, 1), got 5"),
        (&["--workers", "2", "--optimizer", "adam", "--momentum", "0.9"], "--momentum applies only to sgd"),
        (&["--workers", "2", "--weight-decay=-0.5"], "weight decay must be zero or a positive number"),
        (&["--workers", "0"], "num_workers must be at least 1"),
        (&["--policy", "sync"], "give --workers W, the number of workers in the job"),
        (&["--workers", "2", "--join-grace", "5"], "--worker-timeout"),
        (
            &["--workers", "2", "--worker-timeout", "1", "--join-grace=-1"],
            "--join-grace must be a number of seconds >= 0",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = refused(args);
        assert_eq!(code, Some(2), "ps-server {args:?}: exit code; stderr {stderr}");
        assert_eq!(stderr.lines().count(), 1, "ps-server {args:?}: one line, got {stderr:?}");
        assert!(stderr.contains(expected), "ps-server {args:?}: expected {expected:?} in {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
