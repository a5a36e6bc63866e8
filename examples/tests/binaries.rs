//! The `ps-worker` binary trains against real `ps-server` processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

mod common;

use common::{Killed, ps_server};

#[test]
fn two_worker_processes_train_against_a_shard_process() {
    let mut server = Command::new(ps_server())
        .args(["--listen", "127.0.0.1:0", "--workers", "2", "--policy", "ssp", "--staleness", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ps-server");
    let mut line = String::new();
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    stdout.read_line(&mut line).expect("read");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let _server = Killed(server);
    let addr = line.trim().rsplit(' ').next().expect("listening line").to_string();
    assert!(line.contains("listening on"), "{line:?}");

    let workers: Vec<Child> = (0..2)
        .map(|id| {
            Command::new(env!("CARGO_BIN_EXE_ps-worker"))
                .args(["--shards", &addr, "--worker", &id.to_string(), "--model", "softmax"])
                .args(["--max-steps", "200", "--lr", "0.3", "--momentum", "0"])
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
