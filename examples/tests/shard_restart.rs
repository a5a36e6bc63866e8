//! One shard process of a running job is killed with SIGKILL and restarted
//! with `--restore` after 1, 5 or 30 s, as the README says: the `ps-worker`
//! processes, with their default retry settings, wait for it, notice the
//! new incarnation, rewind the other shard to the same checkpoint, and
//! finish the job. In sync the final parameters are bit-identical to an
//! uninterrupted run, so no update after the checkpoint was applied twice
//! (or lost).

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::jobs::{Output, accuracy, dumped, finish, first_complete_checkpoint, scratch, shard, workers};

/// The workers ask for a checkpoint every 20 clocks.
const EVERY_20: &[&str] = &["--checkpoint-every", "20"];

/// Runs the job uninterrupted, then again with shard 1 killed right after the
/// first complete checkpoint and restarted `down` later on the same address
/// with `--restore`. Returns the scratch dir and both runs' worker outputs.
fn run_with_restart(policy: &str, down: Duration) -> (PathBuf, Vec<Output>, Vec<Output>) {
    let dir = scratch(&format!("{policy}-{}", down.as_secs()));
    let server_args = |root: &Path| {
        ["--policy", policy, "--lr", "0.05", "--checkpoint-dir"]
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
    let reference = finish(workers(&format!("{a0},{a1}"), &dir.join("reference"), EVERY_20));
    drop((s0, s1));

    let root = dir.join("ckpt");
    let args = server_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (s0, a0, _) = shard(0, "127.0.0.1:0", &args);
    let (s1, a1, _) = shard(1, "127.0.0.1:0", &args);
    let mut running = workers(&format!("{a0},{a1}"), &dir.join("restarted"), EVERY_20);
    first_complete_checkpoint(&root, &mut running);
    drop(s1); // SIGKILL, mid-training: the job is past the checkpoint
    // The shard stays down for `down` (the scenario, not a synchronisation):
    // the workers must neither give up nor go on without it.
    std::thread::sleep(down);
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
    for down in [1, 5, 30] {
        sync_restart_after(Duration::from_secs(down));
    }
}

fn sync_restart_after(down: Duration) {
    let (dir, reference, restarted) = run_with_restart("sync", down);
    for id in 0..2 {
        let (a, b) = (
            dumped(&dir.join("reference").join(id.to_string())),
            dumped(&dir.join("restarted").join(id.to_string())),
        );
        assert!(a == b, "worker {id}: final parameters differ from the uninterrupted run (down {down:?})");
    }
    for (r, x) in reference.iter().zip(&restarted) {
        assert_eq!(accuracy(&r.0), accuracy(&x.0));
        assert!(x.0.contains("1200 steps"), "{}", x.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn async_job_survives_a_shard_restart_and_converges_as_usual() {
    let (dir, reference, restarted) = run_with_restart("async", Duration::from_secs(1));
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
