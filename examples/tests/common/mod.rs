//! Helpers shared by the tests that start real processes.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;

/// A child process killed (SIGKILL) when dropped.
pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ps-server` sits next to `ps-worker` in the target directory when the
/// workspace is built (`cargo test --workspace` builds every binary).
pub(crate) fn ps_server() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ps-worker")).with_file_name("ps-server");
    assert!(path.exists(), "{} is missing: run the tests with --workspace", path.display());
    path
}
