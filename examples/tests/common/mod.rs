//! Helpers shared by the tests that start real processes.
#![allow(dead_code)]

use std::path::PathBuf;

pub(crate) mod jobs;

/// `ps-server` sits next to `ps-worker` in the target directory when the
/// workspace is built (`cargo test --workspace` builds every binary).
pub(crate) fn ps_server() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_ps-worker")).with_file_name("ps-server");
    assert!(path.exists(), "{} is missing: run the tests with --workspace", path.display());
    path
}
