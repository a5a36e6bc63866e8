//! Workers relaunched after a failure, started before the shards, or
//! pointed at shards that disagree, all with ps-worker's default retry
//! settings: the job resumes consistently on every shard or the worker is
//! refused with one line saying what to change.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::jobs::{
    Output, accuracy, dumped, finish, first_complete_checkpoint, scratch, shard, worker, workers,
};

/// Sync, a small learning rate and checkpoints (when the workers ask).
fn sync_args(root: &std::path::Path) -> Vec<String> {
    ["--policy", "sync", "--lr", "0.05", "--checkpoint-dir"]
        .map(String::from)
        .into_iter()
        .chain([root.display().to_string()])
        .collect()
}

const EVERY_20: &[&str] = &["--checkpoint-every", "20"];

/// An uninterrupted sync job's final parameters and outputs.
fn reference(dir: &std::path::Path) -> Vec<Output> {
    let args = sync_args(&dir.join("reference-ckpt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let out = finish(workers(&format!("{a0},{a1}"), &dir.join("reference"), EVERY_20));
    drop((s0, s1));
    out
}

/// Kills every worker (SIGKILL).
fn kill_all(workers: Vec<Child>) {
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

fn assert_same_parameters(dir: &std::path::Path, run: &str) {
    for id in 0..2 {
        let (a, b) = (
            dumped(&dir.join("reference").join(id.to_string())),
            dumped(&dir.join(run).join(id.to_string())),
        );
        assert!(a == b, "worker {id}: final parameters differ from the uninterrupted run");
    }
}

#[test]
fn relaunched_workers_resume_where_the_shards_are_bit_identical_to_an_uninterrupted_run() {
    let dir = scratch("relaunch-workers");
    let reference = reference(&dir);
    let args = sync_args(&dir.join("ckpt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let shards = format!("{a0},{a1}");
    let mut first = workers(&shards, &dir.join("killed"), EVERY_20);
    first_complete_checkpoint(&dir.join("ckpt"), &mut first);
    kill_all(first);
    let relaunched = finish(workers(&shards, &dir.join("relaunched"), EVERY_20));
    // A SIGKILL that lands between a worker's two shard requests, after the
    // round it reached was applied, leaves a step that cannot be redone
    // exactly: the worker gives it up where it did not arrive and says so
    // (tested on its own in ps-server's worker_kill tests). Rare; then the
    // run cannot be bit-identical, and it must still finish and train.
    let gave_up = relaunched.iter().any(|(_, stderr)| stderr.contains("cannot be read again exactly"));
    for ((stdout, _), (reference, _)) in relaunched.iter().zip(&reference) {
        let steps: u64 = stdout
            .split(" steps in ")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no step count in {stdout}"));
        assert!(steps < 1200, "the relaunched worker resumed rather than starting over: {stdout}");
        match gave_up {
            false => assert_eq!(accuracy(stdout), accuracy(reference)),
            true => assert!((accuracy(stdout) - accuracy(reference)).abs() < 0.02, "{stdout}"),
        }
    }
    if !gave_up {
        assert_same_parameters(&dir, "relaunched");
    }
    drop((s0, s1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_relaunched_after_a_shard_restart_rewind_every_shard_and_never_mix_histories() {
    let dir = scratch("relaunch-after-restart");
    let reference = reference(&dir);
    let root = dir.join("ckpt");
    let args = sync_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let shards = format!("{a0},{a1}");
    let mut first = workers(&shards, &dir.join("killed"), EVERY_20);
    first_complete_checkpoint(&root, &mut first);
    // Everything but shard 0 dies: shard 0 is past the checkpoint.
    drop(s1);
    kill_all(first);
    let restore = [&args[..], &["--restore", root.to_str().expect("utf-8")]].concat();
    let (s1, _, restored) = shard(1, &a1, &restore);
    assert!(restored.is_some_and(|r| r.contains("restored")));
    let relaunched = finish(workers(&shards, &dir.join("relaunched"), EVERY_20));
    // A worker joining before the rewind rewinds every shard (both may: a
    // rewind is idempotent per restart); one joining after finds one history.
    let rewound =
        relaunched.iter().filter(|(_, e)| e.contains("the shards hold different histories")).count();
    assert!(rewound >= 1, "{relaunched:?}");
    for ((stdout, _), (reference, _)) in relaunched.iter().zip(&reference) {
        assert_eq!(accuracy(stdout), accuracy(reference));
    }
    assert_same_parameters(&dir, "relaunched");
    drop((s0, s1));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two free ports on 127.0.0.1.
fn free_addresses() -> [String; 2] {
    let listeners = [0, 1].map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    listeners.map(|l| l.local_addr().expect("addr").to_string())
}

#[test]
fn a_worker_started_before_the_shards_waits_for_them_and_says_so() {
    let dir = scratch("early-worker");
    let [a0, a1] = free_addresses();
    let mut early = worker(0, &format!("{a0},{a1}"), &dir.join("early"), &["--max-steps", "50"]);
    // The worker's log, line by line: the shards start once it says it waits.
    let (tx, rx) = mpsc::channel();
    let stderr = early.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let waiting = rx.recv_timeout(Duration::from_secs(30)).expect("the worker logs its wait");
    assert!(waiting.contains("shard 0") && waiting.contains("did not answer connect"), "{waiting}");
    assert!(waiting.contains(&a0), "the line names the shard's address: {waiting}");
    let (s0, _, _) = shard(0, &a0, &[]);
    let (s1, _, _) = shard(1, &a1, &[]);
    // A job of 2 needs its second worker too.
    let second = worker(1, &format!("{a0},{a1}"), &dir.join("early"), &["--max-steps", "50"]);
    let out = early.wait_with_output().expect("ps-worker runs");
    let log = reader.join().expect("reader");
    assert!(out.status.success(), "{log}");
    assert!(log.contains("answered connect again"), "{log}");
    finish(vec![second]);
    drop((s0, s1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shards_started_for_different_jobs_are_refused_with_one_line() {
    let dir = scratch("mismatch");
    let cases: [(&[&str], &str); 3] = [
        (&["--policy", "async"], "has policy async but shard 0"),
        (&["--lr", "0.01"], "the same --optimizer, --lr, --momentum and --weight-decay"),
        (&["--max-workers", "3"], "the same --workers and --max-workers"),
    ];
    for (differing, expected) in cases {
        let (s0, a0, _) = shard(0, "127.0.0.1:0", &[]);
        let (s1, a1, _) = shard(1, "127.0.0.1:0", differing);
        let out = worker(0, &format!("{a0},{a1}"), &dir, &[]).wait_with_output().expect("ps-worker runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{differing:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{differing:?}: one line, got {err}");
        assert!(err.contains(expected) && err.contains(&format!("shard 1 ({a1})")), "{differing:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        drop((s0, s1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restoring_onto_other_settings_is_refused_unless_allowed() {
    let dir = scratch("changed-settings");
    let root = dir.join("ckpt");
    let args = sync_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    finish(workers(
        &format!("{a0},{a1}"),
        &dir.join("run"),
        &["--max-steps", "40", "--checkpoint-every", "20"],
    ));
    drop((s0, s1));
    let restore = |extra: &[&str]| {
        std::process::Command::new(common::ps_server())
            .args(["--listen", "127.0.0.1:0", "--shard-id", "0", "--num-shards", "2", "--workers", "2"])
            .args(["--split-threshold", "64", "--metrics-listen", "off", "--lr", "0.05", "--restore"])
            .arg(&root)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ps-server")
    };
    let out = restore(&["--policy", "async"]).wait_with_output().expect("ps-server runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--policy sync (this shard: async)") && err.contains("--allow-changed-settings"),
        "{err}"
    );
    // Allowed, it starts (and says what changed).
    let mut allowed = restore(&["--policy", "async", "--allow-changed-settings"]);
    let mut line = String::new();
    BufReader::new(allowed.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let _ = allowed.kill();
    let _ = allowed.wait();
    assert!(line.contains("restored"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigkilled_sync_worker_is_named_in_the_shards_and_the_survivors_logs_within_10_s() {
    let dir = scratch("killed-sync-worker");
    let log = dir.join("shard.log");
    let survivor_log = dir.join("worker0.log");
    let mut command = std::process::Command::new(common::ps_server());
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "sync", "--metrics-listen", "off"])
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).expect("log file"));
    let shard = ps_server::process::ShardProcess::start(command, ps_server::process::START_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = shard.addr().to_string();
    let plain = |id: u32, stderr: std::process::Stdio| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ps-worker"))
            .args(["--shards", &addr, "--worker", &id.to_string(), "--metrics-listen", "off"])
            .args(["--model", "softmax", "--log-every", "1"])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn ps-worker")
    };
    let survivor_stderr = std::fs::File::create(&survivor_log).expect("log file");
    let (mut survivor, mut victim) =
        (plain(0, survivor_stderr.into()), plain(1, std::process::Stdio::piped()));
    // Kill worker 1 once it has trained a step (its first step line).
    let stderr = victim.stderr.take().expect("stderr");
    let first_step = BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.contains("step"));
    assert!(first_step.is_some(), "worker 1 never stepped");
    victim.kill().expect("SIGKILL worker 1");
    let _ = victim.wait();
    let killed = std::time::Instant::now();
    let logged = |log: &std::path::Path, what: &str| loop {
        let text = std::fs::read_to_string(log).expect("read log");
        if let Some(line) = text.lines().find(|l| l.contains(what)) {
            break line.to_string();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no {what:?} within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = logged(&log, "a pull has waited");
    assert!(killed.elapsed() < Duration::from_secs(10), "logged {:?} after the kill", killed.elapsed());
    assert!(line.contains("for workers [1] to push"), "names worker 1: {line}");
    // The surviving worker says so too, naming the shard and the worker.
    let line = logged(&survivor_log, "has waited");
    assert!(killed.elapsed() < Duration::from_secs(10), "logged {:?} after the kill", killed.elapsed());
    assert!(
        line.contains(&format!("for shard 0 ({addr})")) && line.contains("waits for workers [1] to push"),
        "names shard 0 and worker 1: {line}"
    );
    let _ = survivor.kill();
    let _ = survivor.wait();
    drop(shard);
    let _ = std::fs::remove_dir_all(&dir);
}
