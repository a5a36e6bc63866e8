//! Why a checkpoint could not be written or restored; every variant names the path.

use std::path::PathBuf;

/// A checkpoint failure. Training goes on after a failed write; a failed
/// restore stops the shard before it serves anything.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system operation failed (permission denied, disk full, missing file...).
    #[error("{action} {path}: {source}")]
    Io {
        /// What the shard was doing when it failed.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest, fragment or shard file is not what it claims to be.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file or directory concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file's SHA-256 differs from the one in the manifest.
    #[error("{path}: checksum mismatch: manifest says sha256 {expected}, file has {got}")]
    Checksum {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was expected.
        expected: String,
        /// What was received.
        got: String,
    },
    /// The manifest was written by a newer build.
    #[error(
        "{path}: manifest format {got} is newer than this build supports ({supported}); upgrade ps-server"
    )]
    NewerFormat {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was received.
        got: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// No complete, valid checkpoint was found.
    #[error("no complete checkpoint in {path}{}", skipped_list(.skipped))]
    NoneFound {
        /// The file or directory concerned.
        path: PathBuf,
        /// The checkpoints passed over, each with its reason.
        skipped: Vec<String>,
    },
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
