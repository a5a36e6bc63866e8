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
    /// A file's SHA-256 (or size) differs from the one recorded for it.
    #[error("{path}: checksum mismatch: {listed_in} says sha256 {expected}, file has {got}")]
    Checksum {
        /// The file or directory concerned.
        path: PathBuf,
        /// The file that records the expected checksum.
        listed_in: &'static str,
        /// What was expected.
        expected: String,
        /// What was received.
        got: String,
    },
    /// Two records of one checkpoint disagree on a field (the manifest and
    /// the directory name, the shard fragments, or a shard file's metadata).
    #[error("{path}: {field} is {got}, but {witness} says {expected}")]
    Mismatch {
        /// The file holding the value that disagrees (usually the manifest).
        path: PathBuf,
        /// The field, e.g. `clock` or `tensors[w].parts[0].optimizer_steps`.
        field: String,
        /// What the other record says.
        expected: String,
        /// What `path` says.
        got: String,
        /// The other record.
        witness: String,
    },
    /// The checkpoint failed on another shard; this shard does not finish it.
    #[error("{path}: checkpoint failed on another shard; not writing this shard's share")]
    FailedElsewhere {
        /// The checkpoint directory.
        path: PathBuf,
    },
    /// Too many checkpoints are pending on this shard (each may hold a copy
    /// of the parts it waits for).
    #[error(
        "shard {shard}: {pending} checkpoints are pending (limit --max-pending-checkpoints {limit}); \
         wait for one to complete, or raise the limit"
    )]
    TooManyPending {
        /// The shard.
        shard: u32,
        /// Checkpoints registered and not yet written or failed.
        pending: usize,
        /// The limit.
        limit: usize,
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

    /// Why restore passes over a checkpoint with this error, in a few words:
    /// `invalid manifest`, `checksum mismatch`, `cross-check mismatch`,
    /// `unreadable` or `other`.
    pub fn skip_reason(&self) -> &'static str {
        match self {
            CheckpointError::Corrupt { .. } | CheckpointError::NewerFormat { .. } => "invalid",
            CheckpointError::Checksum { .. } => "checksum mismatch",
            CheckpointError::Mismatch { .. } => "cross-check mismatch",
            CheckpointError::Io { .. } => "unreadable",
            CheckpointError::FailedElsewhere { .. }
            | CheckpointError::TooManyPending { .. }
            | CheckpointError::NoneFound { .. } => "other",
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CheckpointError::Corrupt { path: path.into(), reason: reason.into() }
    }
}
