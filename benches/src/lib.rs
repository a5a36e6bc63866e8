//! Benchmarks of the parameter server: the binaries in `src/bin/`, and what
//! they share.

use std::process::Child;

/// A `ps-server` child process, killed when dropped.
#[derive(Debug)]
pub struct ShardProcess(pub Child);

impl Drop for ShardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ShardProcess {
    /// A line of `/proc/<pid>/status` in bytes, e.g. `VmRSS` or `VmHWM` (Linux).
    fn status_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
        line.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.status_bytes("VmRSS")
    }

    /// Peak resident memory, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        self.status_bytes("VmHWM")
    }
}
