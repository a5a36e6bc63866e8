//! The worker library's error type.

use std::time::Duration;

/// Why a worker operation failed. Each variant names the shard and tensor
/// involved; `Rpc` keeps the server's status, whose message names the worker
/// and the expected vs received value.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A shard address is not a valid URI.
    #[error("shard {shard}: invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The shard's id.
        shard: u32,
        /// The shard's address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A shard could not be reached. The message gives the whole cause
    /// (e.g. the TLS library's reason) and what it most likely means.
    #[error("shard {shard} at {addr}: cannot connect: {}", connect_reason(source))]
    Connect {
        /// The shard's id.
        shard: u32,
        /// The shard's address as given.
        addr: String,
        #[source]
        /// The underlying error.
        source: tonic::transport::Error,
    },
    /// The shard serves TLS and this worker connected without it.
    #[error(
        "shard {shard} at {addr}: cannot connect: the shard uses TLS and this worker connected without it: pass --tls-ca with the CA that signed its certificate (WorkerConfig::tls in the library)"
    )]
    ExpectsTls {
        /// The shard's id.
        shard: u32,
        /// The shard's address as given.
        addr: String,
    },
    /// A shard refused or failed a request (after retries for transient errors).
    #[error("{op}{} on shard {shard} failed after {attempts} attempt(s): {:?}: {}", tensor.as_ref().map(|t| format!(" of tensor {t:?}")).unwrap_or_default(), status.code(), status.message())]
    Rpc {
        /// The operation that failed.
        op: &'static str,
        /// The shard's id.
        shard: u32,
        /// The tensor concerned, if the request named one.
        tensor: Option<String>,
        /// Attempts made.
        attempts: u32,
        /// The last status the shard returned.
        status: tonic::Status,
    },
    /// A request did not complete in time.
    #[error("{op}{} on shard {shard} timed out after {after:?}", tensor.as_ref().map(|t| format!(" of tensor {t:?}")).unwrap_or_default())]
    Timeout {
        /// The operation that failed.
        op: &'static str,
        /// The shard's id.
        shard: u32,
        /// The tensor concerned, if the request named one.
        tensor: Option<String>,
        /// How long the worker waited.
        after: Duration,
    },
    /// The tensor was not declared through this worker.
    #[error("unknown tensor {tensor:?}: declare it on this worker first")]
    UnknownTensor {
        /// The tensor's name.
        tensor: String,
    },
    /// A gradient or value has the wrong shape.
    #[error("tensor {tensor:?}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The tensor's name.
        tensor: String,
        /// What was expected.
        expected: Vec<usize>,
        /// What was received.
        got: Vec<usize>,
    },
    /// A push lacks the gradient of a declared tensor.
    #[error("push at clock {clock} has no gradient for tensor {tensor:?}")]
    MissingGradient {
        /// The tensor's name.
        tensor: String,
        /// The clock concerned.
        clock: u64,
    },
    /// A shard's reply broke the protocol.
    #[error("shard {shard}, tensor {tensor:?}: malformed reply: {detail}")]
    Protocol {
        /// The shard's id.
        shard: u32,
        /// The tensor's name (empty for a reply about no single tensor).
        tensor: String,
        /// What was wrong.
        detail: String,
    },
    /// The shards disagree about the job.
    #[error("cluster mismatch: {0}")]
    Cluster(String),
    /// A shard could not write its share of a checkpoint (training goes on).
    #[error("checkpoint {name} failed on shard {shard}: {error}")]
    Checkpoint {
        /// The checkpoint's name.
        name: String,
        /// The shard's id.
        shard: u32,
        /// The shard's message.
        error: String,
    },
    /// A shard came back from a checkpoint (it restarted, or was rewound
    /// after another one did): [`Worker::recover`](crate::Worker::recover)
    /// rewinds every shard to it and joins again.
    #[error("{op} on shard {shard}: {message}")]
    ShardRestarted {
        /// The operation that failed.
        op: &'static str,
        /// The shard's id.
        shard: u32,
        /// Which checkpoint the shard came back from, to rewind to.
        restart: Restart,
        /// The shard's message.
        message: String,
    },
}

pub use ps_proto::Restart;

/// Why a connection failed: `e` and each of its sources (tonic's own says
/// only "transport error"; the TLS library's reason is further down), then
/// what that most likely means where it can be told.
fn connect_reason(e: &tonic::transport::Error) -> String {
    let line = crate::waiting::chain(e);
    let hint = if line.contains("InvalidContentType") {
        Some("the shard does not use TLS: connect without TLS (drop --tls-ca)")
    } else if line.contains("invalid peer certificate") {
        Some(
            "the shard's certificate is not signed by the CA given (--tls-ca) or not issued for this address",
        )
    } else if line.contains("CertificateRequired") || line.contains("certificate required") {
        Some("the shard requires a client certificate (--tls-cert and --tls-key)")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{line} ({hint})"),
        None => line,
    }
}

impl WorkerError {
    /// The gRPC code of a refused request, if this is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            WorkerError::Rpc { status, .. } => Some(status.code()),
            WorkerError::Timeout { .. } => Some(tonic::Code::DeadlineExceeded),
            WorkerError::ShardRestarted { .. } => Some(tonic::Code::FailedPrecondition),
            _ => None,
        }
    }
}
