//! Sync with backup workers, with real `ps-server` and `ps-worker`
//! processes: the job goes at the pace of its fast workers, and a
//! persistent straggler's gradients are dropped instead of waited for.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::jobs::{accuracy, finish};
use common::ps_server;
use ps_server::process::start_cluster;

/// Starts worker `id` of 4 against `shards`, with `extra` flags.
fn worker(id: u32, shards: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ps-worker"))
        .args(["--shards", shards, "--split-threshold", "64", "--worker", &id.to_string()])
        .args(["--model", "mlp", "--hidden", "32", "--metrics-listen", "off", "--max-steps", "1000"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ps-worker")
}

/// The step count a worker printed in its `done: N steps` line.
fn steps(stdout: &str) -> u64 {
    stdout
        .split(" done: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step count in {stdout:?}"))
}

/// Worker 0 is 300 times slower than the others: under plain sync every
/// round would wait for it, and 1,000 steps would take it minutes. With one
/// backup worker the rounds close on the other three, which take all their
/// steps while it takes a handful; then its next read shows the job's
/// rounds done and it stops too. Everyone ends with the same trained model.
#[test]
fn one_backup_worker_lets_the_job_leave_a_persistent_straggler_behind() {
    let args = ["--workers", "4", "--policy", "sync", "--backup-workers", "1", "--lr", "0.3"];
    let (_shards, spec) = start_cluster(&ps_server(), 2, 64, &args).unwrap_or_else(|e| panic!("{e}"));
    let shards = spec.shards.join(",");
    let mut workers = vec![worker(0, &shards, &["--slowdown", "300"])];
    workers.extend((1..4).map(|id| worker(id, &shards, &[])));
    // Were rounds to wait for worker 0, its 1,000 steps would take minutes:
    // fail instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(150);
    while workers.iter_mut().any(|w| w.try_wait().ok().flatten().is_none()) {
        if Instant::now() > deadline {
            workers.iter_mut().for_each(|w| drop(w.kill()));
            panic!("the workers did not finish within 150 s: the job waited for the straggler");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outputs = finish(workers);
    let counts: Vec<u64> = outputs.iter().map(|(stdout, _)| steps(stdout)).collect();
    for (id, (stdout, _)) in outputs.iter().enumerate().skip(1) {
        // A fast worker whose push came after the straggler's closed a
        // round was dropped for it: the job ends after 1,000 rounds, so it
        // may end a step or a few short.
        assert!(counts[id] >= 900, "fast worker {id} takes (nearly) all its steps: {stdout}");
    }
    // A step of worker 0 takes 300 of its normal step times: it cannot
    // have kept up, and the job did not wait for it.
    assert!(counts[0] < 100, "the straggler took {} steps; the job waited for it", counts[0]);
    let accuracies: Vec<f32> = outputs.iter().map(|(stdout, _)| accuracy(stdout)).collect();
    // Every worker reads the same final parameters: the three fast workers'.
    assert!(accuracies.iter().all(|a| *a == accuracies[0]), "{accuracies:?}");
    assert!(accuracies[0] > 0.75, "accuracy {accuracies:?}");
}

/// Backup workers are a sync setting: any other policy, or as many backup
/// workers as workers, is refused with one line that says what to change.
#[test]
fn backup_workers_and_staleness_scaling_refuse_settings_that_make_no_sense() {
    let cases: &[(&[&str], &str)] = &[
        (&["--policy", "ssp", "--backup-workers", "1"], "--backup-workers 1 applies only to --policy sync"),
        (&["--policy", "sync", "--backup-workers", "4"], "use at most 3"),
        (&["--policy", "sync", "--staleness-scaling", "inverse"], "applies only to --policy ssp or async"),
    ];
    for (args, expected) in cases {
        let out = Command::new(ps_server())
            .args(["--listen", "127.0.0.1:0", "--workers", "4", "--metrics-listen", "off"])
            .args(*args)
            .output()
            .expect("run ps-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ps-server {args:?} started");
        assert!(err.contains(expected), "ps-server {args:?}: expected {expected:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "ps-server {args:?}: one line, got {err:?}");
    }
    let out = Command::new(ps_server())
        .args(["--listen", "127.0.0.1:0", "--policy", "async", "--staleness-scaling", "half"])
        .output()
        .expect("run ps-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("use none, inverse"), "{err}");
}
