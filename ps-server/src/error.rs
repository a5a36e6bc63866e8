//! The shard's error type and its one mapping to gRPC status codes.

use ps_proto::chunk::ChunkError;
use tonic::{Code, Status};

use crate::checkpoint::CheckpointError;
use crate::sync::ClockError;

/// Everything a shard can refuse. Each variant names the tensor and worker
/// involved and the expected vs received value; state is unchanged after any.
#[derive(Debug, thiserror::Error)]
pub enum PsError {
    /// The tensor was never declared on this shard.
    #[error("unknown tensor {}: declare it first", shown(tensor))]
    UnknownTensor {
        /// The tensor's name.
        tensor: String,
    },
    /// A re-declaration disagrees with the existing tensor.
    #[error("tensor {} already exists with shape {existing:?}; got shape {requested:?}", shown(tensor))]
    ShapeConflict {
        /// The tensor's name.
        tensor: String,
        /// The shape declared first.
        existing: Vec<u64>,
        /// The shape requested now.
        requested: Vec<u64>,
    },
    /// A re-declaration disagrees with the existing tensor on a setting
    /// other than its shape (optimizer, policy, staleness, initializer,
    /// non-finite gradients).
    #[error(
        "tensor {} already exists with {setting} {existing}; got {setting} {requested}: declare it as it was first declared, or under another name",
        shown(tensor)
    )]
    DeclareConflict {
        /// The tensor's name.
        tensor: String,
        /// The setting that differs.
        setting: &'static str,
        /// The setting's value in the first declaration.
        existing: String,
        /// The setting's value requested now.
        requested: String,
    },
    /// A request's element range is neither the one placed on this shard
    /// nor, for a part that takes pushes in pieces, one of its pieces.
    #[error(
        "tensor {}: shard {shard} holds elements {expected_offset}..{expected_end}{}, request covers {got_offset}..{got_end}",
        shown(tensor),
        pieces_hint(*piece_len)
    )]
    WrongRange {
        /// The tensor's name.
        tensor: String,
        /// The shard's id.
        shard: u32,
        /// Start of the element range this shard holds.
        expected_offset: u64,
        /// End of the element range this shard holds.
        expected_end: u64,
        /// Elements per piece a push may cover instead (0: none).
        piece_len: u64,
        /// Start of the element range the request named.
        got_offset: u64,
        /// End of the element range the request named.
        got_end: u64,
    },
    /// Declared on a shard that holds no part of the tensor.
    #[error("tensor {} ({len} elements) has no part on shard {shard}", shown(tensor))]
    NotPlacedHere {
        /// The tensor's name.
        tensor: String,
        /// The tensor's length in elements.
        len: u64,
        /// The shard's id.
        shard: u32,
    },
    /// A gradient holds NaN or Inf and the tensor does not allow it.
    #[error(
        "tensor {}, worker {worker}, clock {clock}: element {index} of the gradient is {value}; expected a finite value",
        shown(tensor)
    )]
    NonFinite {
        /// The tensor's name.
        tensor: String,
        /// The worker's id.
        worker: u32,
        /// The clock concerned.
        clock: u64,
        /// Index of the first non-finite element.
        index: u64,
        /// The non-finite value.
        value: f32,
    },
    /// A request is malformed in a way the message explains.
    #[error("{0}")]
    InvalidArgument(String),
    /// A chunk sequence is malformed.
    #[error("tensor {}, worker {worker}: {source}", shown(tensor))]
    Chunk {
        /// The tensor's name.
        tensor: String,
        /// The worker's id.
        worker: u32,
        #[source]
        /// The underlying error.
        source: ChunkError,
    },
    /// A message or tensor exceeds a configured limit.
    #[error("{what}: {got} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// What was received.
        got: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A clock rule refused the request.
    #[error("tensor {}: {source}", shown(tensor))]
    Clock {
        /// The tensor's name.
        tensor: String,
        #[source]
        /// The underlying error.
        source: ClockError,
    },
    /// A worker-level clock rule refused the request (no tensor involved).
    #[error("{0}")]
    Worker(#[source] ClockError),
    /// An elastic worker id that has not joined the job yet.
    #[error("worker {worker} has not joined the job; join before pushing or pulling")]
    NotJoined {
        /// The worker's id.
        worker: u32,
    },
    /// No checkpoint of that name exists (or was requested) on this shard.
    #[error("shard {shard} has no checkpoint {}{hint}", shown(checkpoint))]
    UnknownCheckpoint {
        /// The shard's id.
        shard: u32,
        /// The checkpoint's name as the client gave it.
        checkpoint: String,
        /// What the client can do about it (may be empty).
        hint: &'static str,
    },
    /// The worker was evicted for silence and has not joined again.
    #[error("worker {worker} was evicted after {timeout_ms} ms without a request; join again to continue")]
    Evicted {
        /// The worker's id.
        worker: u32,
        /// The silence, in ms, after which it was evicted.
        timeout_ms: u64,
    },
    /// The shard is shutting down.
    #[error("shard {shard} is shutting down")]
    ShuttingDown {
        /// The shard's id.
        shard: u32,
    },
    /// A checkpoint was requested at a clock some update has already passed.
    #[error(
        "tensor {}: cannot checkpoint at clock {clock}: {}; request a later clock",
        shown(tensor),
        if *sync { format!("{got} sync rounds are already applied") } else { format!("worker {worker} has already pushed clock {}", got - 1) }
    )]
    CheckpointTooLate {
        /// The tensor's name.
        tensor: String,
        /// The clock concerned.
        clock: u64,
        /// The worker's id.
        worker: u32,
        /// What was received.
        got: u64,
        /// Whether the tensor is under the sync policy.
        sync: bool,
    },
    /// The shard was started without a checkpoint directory.
    #[error("shard {shard} has no checkpoint directory; start ps-server with --checkpoint-dir DIR")]
    NoCheckpointDir {
        /// The shard's id.
        shard: u32,
    },
    /// The job was stopped (`--on-worker-loss fail`): nothing is served any more.
    #[error("the job has stopped: {reason}")]
    JobFailed {
        /// Why.
        reason: String,
    },
    /// The shard's state came back from a checkpoint (a shard restarted)
    /// since the worker last joined: it must rewind every shard to that
    /// checkpoint and join again. The status carries `checkpoint` and
    /// `cause` as metadata ([`RESTART_CHECKPOINT`], [`RESTART_CAUSE`]).
    #[error(
        "shard {shard} is back at checkpoint {checkpoint} (clock {clock}) because a shard restarted; {} must rewind every shard to it and join again",
        worker.map_or("an observer".to_string(), |w| format!("worker {w}"))
    )]
    Restarted {
        /// The shard's id.
        shard: u32,
        /// The worker concerned, if the request named one.
        worker: Option<u32>,
        /// The checkpoint's directory name.
        checkpoint: String,
        /// The clock concerned.
        clock: u64,
        /// The restart's session, the `cause` to pass to `Rewind`.
        cause: u64,
    },
    /// Writing or restoring a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl PsError {
    /// The gRPC code a client should act on (see tonic's `Code` docs).
    pub fn code(&self) -> Code {
        match self {
            PsError::UnknownTensor { .. } | PsError::UnknownCheckpoint { .. } => Code::NotFound,
            PsError::ShapeConflict { .. } | PsError::DeclareConflict { .. } => Code::AlreadyExists,
            PsError::WrongRange { .. }
            | PsError::NotPlacedHere { .. }
            | PsError::NonFinite { .. }
            | PsError::InvalidArgument(_)
            | PsError::Chunk { .. } => Code::InvalidArgument,
            PsError::TooLarge { .. } => Code::ResourceExhausted,
            PsError::Clock { .. }
            | PsError::Worker(_)
            | PsError::Evicted { .. }
            | PsError::NotJoined { .. }
            | PsError::Restarted { .. } => Code::FailedPrecondition,
            PsError::ShuttingDown { .. } => Code::Unavailable,
            PsError::CheckpointTooLate { .. } | PsError::NoCheckpointDir { .. } => Code::FailedPrecondition,
            PsError::JobFailed { .. } => Code::Aborted,
            PsError::Checkpoint(e) => match e {
                CheckpointError::Io { .. } => Code::Internal,
                CheckpointError::Corrupt { .. }
                | CheckpointError::Checksum { .. }
                | CheckpointError::Mismatch { .. } => Code::DataLoss,
                CheckpointError::FailedElsewhere { .. } => Code::Internal,
                CheckpointError::TooManyPending { .. } => Code::ResourceExhausted,
                CheckpointError::NewerFormat { .. } => Code::FailedPrecondition,
                CheckpointError::NoneFound { .. } => Code::NotFound,
            },
        }
    }
}

impl PsError {
    /// A short, bounded label for metrics: why the request was refused.
    pub fn reason(&self) -> &'static str {
        match self {
            PsError::UnknownTensor { .. } => "unknown_tensor",
            PsError::ShapeConflict { .. } => "shape_conflict",
            PsError::DeclareConflict { .. } => "declare_conflict",
            PsError::NotJoined { .. } => "not_joined",
            PsError::UnknownCheckpoint { .. } => "unknown_checkpoint",
            PsError::WrongRange { .. } => "wrong_range",
            PsError::NotPlacedHere { .. } => "not_placed_here",
            PsError::NonFinite { .. } => "non_finite",
            PsError::InvalidArgument(_) => "invalid_argument",
            PsError::Chunk { .. } => "malformed_chunks",
            PsError::TooLarge { .. } => "too_large",
            PsError::Clock { .. } => "clock",
            PsError::Worker(_) => "worker",
            PsError::Evicted { .. } => "evicted",
            PsError::ShuttingDown { .. } => "shutting_down",
            PsError::CheckpointTooLate { .. } => "checkpoint_too_late",
            PsError::NoCheckpointDir { .. } => "no_checkpoint_dir",
            PsError::Checkpoint(_) => "checkpoint",
            PsError::JobFailed { .. } => "job_failed",
            PsError::Restarted { .. } => "restarted",
        }
    }
}

pub use ps_proto::{RESTART_CAUSE, RESTART_CHECKPOINT};

impl From<PsError> for Status {
    /// The client's status: the error's code and message, except that a
    /// checkpoint error names its files within the checkpoint directory
    /// only (the shard logs the full paths).
    fn from(e: PsError) -> Self {
        let message = match &e {
            PsError::Checkpoint(c) => {
                tracing::warn!(error = %c, "checkpoint error answered to a client");
                client_message(c)
            }
            e => e.to_string(),
        };
        let mut status = Status::new(e.code(), message);
        if let PsError::Restarted { checkpoint, cause, .. } = &e {
            let restart = ps_proto::Restart { checkpoint: checkpoint.clone(), cause: *cause };
            restart.write_to(status.metadata_mut());
        }
        status
    }
}

/// Longest client-supplied name a message echoes in full; a longer one is
/// cut (see [`shown`]).
pub const ECHOED_NAME_CHARS: usize = 128;

/// A client-supplied name (tensor, checkpoint) as a message echoes it.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(&'a str);

/// `name` quoted, cut after [`ECHOED_NAME_CHARS`] characters with an
/// ellipsis and its length, so that a long name cannot make a refusal
/// overflow the reply's metadata: `"w"`, or `"aaaa…" (20000 chars)`.
pub fn shown(name: &str) -> Shown<'_> {
    Shown(name)
}

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(ECHOED_NAME_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let n = self.0.chars().count();
                write!(f, "{:?} ({n} chars)", format!("{}…", &self.0[..cut]))
            }
        }
    }
}

/// A checkpoint error as a client sees it: each path shortened to its last
/// two components (the checkpoint and the file), so no server path leaks.
fn client_message(e: &CheckpointError) -> String {
    let short = |p: &std::path::Path| {
        let mut parts: Vec<_> = p.iter().rev().take(2).map(|c| c.to_string_lossy()).collect();
        parts.reverse();
        parts.join("/")
    };
    let path = match e {
        CheckpointError::Io { path, .. }
        | CheckpointError::Corrupt { path, .. }
        | CheckpointError::Checksum { path, .. }
        | CheckpointError::Mismatch { path, .. }
        | CheckpointError::FailedElsewhere { path }
        | CheckpointError::NewerFormat { path, .. }
        | CheckpointError::NoneFound { path, .. } => Some(path),
        CheckpointError::TooManyPending { .. } => None,
    };
    let text = e.to_string();
    match path {
        Some(p) => text.replace(&p.display().to_string(), &short(p)),
        None => text,
    }
}

/// How [`PsError::WrongRange`] names the pieces a push may also cover.
fn pieces_hint(piece_len: u64) -> String {
    if piece_len == 0 {
        String::new()
    } else {
        format!(
            " (a push may also cover one piece of it: {piece_len} elements from its start or a multiple of that past it, the last piece shorter)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_design() {
        let clock = PsError::Clock {
            tensor: "w".into(),
            source: ClockError::PushGap { worker: 1, expected: 3, got: 5 },
        };
        let status = Status::from(clock);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "tensor \"w\": worker 1 pushed clock 5 but its next clock is 3");
        assert_eq!(PsError::UnknownTensor { tensor: "x".into() }.code(), Code::NotFound);
        let conflict = PsError::ShapeConflict { tensor: "x".into(), existing: vec![2], requested: vec![3] };
        assert_eq!(conflict.code(), Code::AlreadyExists);
        let big = PsError::TooLarge { what: "chunk".into(), got: 10, limit: 5 };
        assert_eq!(big.code(), Code::ResourceExhausted);
    }

    #[test]
    fn every_reason_is_pre_registered() {
        let examples = [
            PsError::UnknownTensor { tensor: "x".into() },
            PsError::DeclareConflict {
                tensor: "x".into(),
                setting: "policy",
                existing: "a".into(),
                requested: "b".into(),
            },
            PsError::NotJoined { worker: 1 },
            PsError::UnknownCheckpoint { shard: 0, checkpoint: "c".into(), hint: "" },
            PsError::InvalidArgument("x".into()),
            PsError::Evicted { worker: 1, timeout_ms: 1 },
            PsError::ShuttingDown { shard: 0 },
            PsError::NoCheckpointDir { shard: 0 },
            PsError::JobFailed { reason: "x".into() },
        ];
        for e in examples {
            assert!(crate::metrics::REJECTION_REASONS.contains(&e.reason()), "{}", e.reason());
        }
    }

    #[test]
    fn long_names_are_cut_with_their_length() {
        assert_eq!(shown("w").to_string(), "\"w\"");
        let long = "é".repeat(20_000);
        let message = PsError::UnknownTensor { tensor: long }.to_string();
        assert!(message.len() < 400, "{message}");
        assert!(message.contains("…\" (20000 chars)"), "{message}");
        let exact = "a".repeat(ECHOED_NAME_CHARS);
        assert_eq!(shown(&exact).to_string(), format!("{exact:?}"));
    }

    #[test]
    fn checkpoint_errors_name_no_server_path() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = CheckpointError::io("read", "/srv/secret/ckpt-1-2/manifest.json")(missing);
        let status = Status::from(PsError::Checkpoint(e));
        assert!(status.message().starts_with("read ckpt-1-2/manifest.json: "), "{}", status.message());
        assert!(!status.message().contains("/srv"), "{}", status.message());
    }
}
