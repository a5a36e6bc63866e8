//! Why a checkpoint could not be written or restored; every variant names the path.

use std::path::PathBuf;

/// A checkpoint failure. Training goes on after a failed write; a failed
/// restore stops the shard before it serves anything.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system operation failed (permission denied, disk full, missing file...).
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest, fragment or shard file is not what it claims to be.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A file's SHA-256 differs from the one in the manifest.
    #[error("{path}: checksum mismatch: manifest says sha256 {expected}, file has {got}")]
    Checksum { path: PathBuf, expected: String, got: String },
    /// The manifest was written by a newer build.
    #[error(
        "{path}: manifest format {got} is newer than this build supports ({supported}); upgrade ps-server"
    )]
    NewerFormat { path: PathBuf, got: u32, supported: u32 },
    /// No complete, valid checkpoint was found.
    #[error("no complete checkpoint in {path}{}", skipped_list(.skipped))]
    NoneFound { path: PathBuf, skipped: Vec<String> },
}

fn skipped_list(skipped: &[String]) -> String {
    if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join("; ")) }
}

impl CheckpointError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CheckpointError::Io { action, path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CheckpointError::Corrupt { path: path.into(), reason: reason.into() }
    }
}
