//! Every [`WorkerError`] as the typed Python exception it stands for.
//!
//! The classes live in `paramserve/errors.py`, so that each can also be a
//! built-in exception (`ValueError`, `LookupError`, `TimeoutError`,
//! `ConnectionError`, `PermissionError`) and be documented and pickled as
//! plain Python. This module only chooses the class ([`class_of`]) and
//! fills in what the worker library knows: the gRPC code, the shard, the
//! tensor and the server's own message.

use ps_worker::WorkerError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tonic::Code;

/// The module holding the exception classes.
const ERRORS_MODULE: &str = "paramserve.errors";

/// The name of the `paramserve.errors` class `e` is raised as.
///
/// Local errors keep their kind; a shard's refusal goes by its gRPC code,
/// and a `FAILED_PRECONDITION` further by what the shard says it refused
/// (the status carries no machine-readable reason, so its message decides:
/// the phrases matched are the shard's own, in `ps-server`'s `error.rs`
/// and `sync/clock.rs`).
pub(crate) fn class_of(e: &WorkerError) -> &'static str {
    match e {
        WorkerError::InvalidAddress { .. } => "InvalidArgumentError",
        WorkerError::Connect { .. } | WorkerError::ExpectsTls { .. } => "UnavailableError",
        WorkerError::Timeout { .. } => "DeadlineExceededError",
        WorkerError::UnknownTensor { .. } => "UnknownTensorError",
        WorkerError::ShapeMismatch { .. } => "ShapeMismatchError",
        WorkerError::MissingGradient { .. } => "MissingGradientError",
        WorkerError::Cluster(_) => "ClusterMismatchError",
        WorkerError::Checkpoint { .. } => "CheckpointError",
        WorkerError::ShardRestarted { .. } => "FailedPreconditionError",
        WorkerError::Protocol { .. } => "ParamServerError",
        WorkerError::Rpc { status, .. } => class_of_status(status.code(), status.message()),
    }
}

/// The class of a shard's (or the transport's) refusal.
fn class_of_status(code: Code, message: &str) -> &'static str {
    match code {
        Code::InvalidArgument => "InvalidArgumentError",
        Code::NotFound if message.starts_with("unknown tensor") => "UnknownTensorError",
        Code::NotFound => "NotFoundError",
        Code::AlreadyExists => "AlreadyExistsError",
        Code::FailedPrecondition => failed_precondition_class(message),
        Code::Unauthenticated | Code::PermissionDenied => "UnauthenticatedError",
        Code::Unavailable => "UnavailableError",
        Code::DeadlineExceeded => "DeadlineExceededError",
        Code::ResourceExhausted => "ResourceExhaustedError",
        Code::Aborted => "AbortedError",
        _ => "ParamServerError",
    }
}

/// A `FAILED_PRECONDITION`: the worker is not live (evicted, or left), a
/// clock rule refused the request, or some other state must change first.
fn failed_precondition_class(message: &str) -> &'static str {
    const NOT_LIVE: [&str; 2] = ["was evicted after", "has left the job"];
    const CLOCK: [&str; 3] = [" pushed clock ", " pulled clock ", "cannot checkpoint at clock"];
    if NOT_LIVE.iter().any(|p| message.contains(p)) {
        "EvictedError"
    } else if CLOCK.iter().any(|p| message.contains(p)) {
        "StaleClockError"
    } else {
        "FailedPreconditionError"
    }
}

/// The attributes every exception carries besides its message.
struct Details {
    code: Option<&'static str>,
    shard: Option<u32>,
    tensor: Option<String>,
    /// The shard's own message, when a shard refused the request.
    server_message: Option<String>,
}

/// What `e` tells about the refusal.
fn details(e: &WorkerError) -> Details {
    let mut d = Details { code: None, shard: None, tensor: None, server_message: None };
    d.code = e.code().map(code_name);
    match e {
        WorkerError::Rpc { shard, tensor, status, .. } => {
            d.shard = Some(*shard);
            d.tensor = tensor.clone();
            d.server_message = Some(status.message().to_string());
        }
        WorkerError::Timeout { shard, tensor, .. } => {
            d.shard = Some(*shard);
            d.tensor = tensor.clone();
        }
        WorkerError::ShardRestarted { shard, message, .. } => {
            d.shard = Some(*shard);
            d.server_message = Some(message.clone());
        }
        WorkerError::Checkpoint { shard, error, .. } => {
            d.shard = Some(*shard);
            d.server_message = Some(error.clone());
        }
        WorkerError::InvalidAddress { shard, .. }
        | WorkerError::Connect { shard, .. }
        | WorkerError::ExpectsTls { shard, .. } => d.shard = Some(*shard),
        WorkerError::Protocol { shard, tensor, .. } => {
            d.shard = Some(*shard);
            d.tensor = Some(tensor.clone());
        }
        WorkerError::UnknownTensor { tensor }
        | WorkerError::ShapeMismatch { tensor, .. }
        | WorkerError::MissingGradient { tensor, .. } => d.tensor = Some(tensor.clone()),
        WorkerError::Cluster(_) => {}
    }
    d
}

/// The gRPC code's name as gRPC spells it (`NOT_FOUND`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `paramserve.errors`, imported once.
fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE.get_or_try_init(py, || py.import(ERRORS_MODULE).map(Bound::unbind)).map(|m| m.bind(py))
}

/// The exception `class` of `paramserve.errors` with `message`, or a
/// `RuntimeError` saying why it could not be made.
pub(crate) fn exception(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = errors_module(py).and_then(|m| m.getattr(class)).and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => {
            PyRuntimeError::new_err(format!("{message} (and raising paramserve.errors.{class} failed: {e})"))
        }
    }
}

/// `e` as the exception it stands for, its attributes set.
pub(crate) fn to_py(py: Python<'_>, e: WorkerError) -> PyErr {
    let d = details(&e);
    let err = exception(py, class_of(&e), e.to_string());
    let value = err.value(py);
    let set = || -> PyResult<()> {
        value.setattr("code", d.code)?;
        value.setattr("shard", d.shard)?;
        value.setattr("tensor", d.tensor)?;
        value.setattr("server_message", d.server_message)?;
        Ok(())
    };
    match set() {
        Ok(()) => err,
        Err(set_failed) => set_failed,
    }
}
