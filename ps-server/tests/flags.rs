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
        (
            &["--workers", "2", "--optimizer", "adam", "--momentum", "0.9"],
            "--momentum applies only to sgd, and the optimizer is adam: drop --momentum or use --optimizer sgd",
        ),
        (&["--workers", "2", "--sync-piece-bytes", "1"], "give at least 64K, or 0 for whole pushes"),
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

/// Byte counts take K, M and G; a misspelt one is refused saying how to
/// write it.
#[test]
fn byte_flags_take_units() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ps-server"));
    command.args(["--metrics-listen", "off", "--listen", "127.0.0.1:0", "--workers", "2"]).args([
        "--max-push-bytes-in-flight",
        "1G",
        "--sync-piece-bytes",
        "4M",
        "--max-message-bytes",
        "32MiB",
        "--max-tensor-bytes",
        "512k",
    ]);
    let shard = ps_server::process::ShardProcess::start(command, ps_server::process::START_TIMEOUT)
        .expect("the shard serves");
    // 512k is 524,288 bytes: 131,072 f32 fit, one more does not.
    let spec = ps_proto::ClusterSpec::new(vec![shard.addr().to_string()]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut w = ps_worker::Worker::connect(ps_worker::WorkerConfig::new(spec, 0)).await.expect("connect");
        w.declare(&ps_worker::TensorDecl::new("fits", &[131_072])).await.expect("512 KiB fits");
        let err = w.declare(&ps_worker::TensorDecl::new("over", &[131_073])).await.expect_err("over 512 KiB");
        assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    });
    let (code, stderr) = refused(&["--workers", "2", "--max-message-bytes", "4MB"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"4MB\" is not a byte count") && stderr.contains("e.g. 512K, 4M"), "{stderr}");
}
