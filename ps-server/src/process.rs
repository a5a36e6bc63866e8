//! `ps-server` child processes, started the way an operator starts them, for
//! the tests, benchmarks and tools that need real shard processes.
//!
//! A shard prints `ps-server shard I/S listening on ADDR` on stdout once it
//! accepts connections (after `ps-server shard I/S restored ...` when
//! restoring); [`ShardProcess::start`] waits for that line, bounded in time,
//! and keeps draining stdout afterwards so the shard never blocks on a full
//! pipe. Dropping a [`ShardProcess`] kills the shard (SIGKILL) and reaps it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ps_proto::ClusterSpec;

/// How long [`ShardProcess::start`] waits for the listening line by default.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `ps-server` process, killed when dropped.
#[derive(Debug)]
pub struct ShardProcess {
    child: Child,
    addr: String,
    restored: Option<String>,
}

impl ShardProcess {
    /// Spawns `command` (a `ps-server` invocation; its stdout is taken over)
    /// and returns once the shard prints its listening line, or an error that
    /// says what the process printed or that it did not start within `timeout`.
    pub fn start(mut command: Command, timeout: Duration) -> Result<Self, String> {
        let program = PathBuf::from(command.get_program());
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e} (build the workspace first)", program.display()))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(format!("{} has no stdout", program.display()));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forwards lines until the listening line, then only drains.
            let mut forwarding = true;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if forwarding {
                    forwarding = !line.contains(" listening on ");
                    if tx.send(line).is_err() {
                        forwarding = false;
                    }
                }
            }
        });
        // Killed on every early return.
        let mut shard = Self { child, addr: String::new(), restored: None };
        loop {
            let line = match rx.recv_timeout(timeout) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("{} did not start within {timeout:?}", program.display()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = shard.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!("{} exited before listening ({status})", program.display()));
                }
            };
            if let Some((_, addr)) = line.rsplit_once(" listening on ") {
                shard.addr = addr.trim().to_string();
                return Ok(shard);
            }
            if line.contains(" restored ") {
                shard.restored = Some(line);
            }
        }
    }

    /// The address the shard serves gRPC on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The shard's `restored ...` line, when it restored a checkpoint.
    pub fn restored(&self) -> Option<&str> {
        self.restored.as_deref()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the shard now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A line of `/proc/<pid>/status` in bytes, e.g. `VmRSS` or `VmHWM` (Linux).
    fn status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
        line.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
    }

    /// Resident memory now, in bytes (Linux).
    pub fn rss(&self) -> Option<u64> {
        self.status_bytes("VmRSS")
    }

    /// Peak resident memory, in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        self.status_bytes("VmHWM")
    }
}

impl Drop for ShardProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts shards `0..num_shards` of one cluster from the binary `exe`, each
/// on an ephemeral port of 127.0.0.1 with `--shard-id`, `--num-shards`,
/// `--split-threshold` and then `args` (the settings they share), with `RUST_LOG=warn` unless the caller's
/// environment sets it. Returns them, accepting connections, and the spec
/// workers connect with.
pub fn start_cluster(
    exe: &Path,
    num_shards: u32,
    split_threshold: u64,
    args: &[&str],
) -> Result<(Vec<ShardProcess>, ClusterSpec), String> {
    let mut shards = Vec::new();
    for id in 0..num_shards {
        let mut command = Command::new(exe);
        command
            .args(["--listen", "127.0.0.1:0", "--shard-id", &id.to_string()])
            .args(["--num-shards", &num_shards.to_string()])
            .args(["--split-threshold", &split_threshold.to_string()])
            .args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        shards.push(ShardProcess::start(command, START_TIMEOUT)?);
    }
    let spec = ClusterSpec { shards: shards.iter().map(|s| s.addr.clone()).collect(), split_threshold };
    Ok((shards, spec))
}
