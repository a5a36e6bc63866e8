"""The exceptions paramserve raises.

Every error of the worker library is one of these. Each carries the
message of the library (naming the operation, the shard and the tensor)
and, as attributes:

- ``code``: the gRPC status code's name (``"NOT_FOUND"``...) when a shard
  refused the request or a deadline passed, else ``None``;
- ``shard``: the shard concerned, if any;
- ``tensor``: the tensor concerned, if any;
- ``server_message``: the shard's own message, if a shard refused.

Several classes also derive from the built-in exception a Python
programmer would catch for that kind of failure (``ValueError``,
``LookupError``, ``TimeoutError``, ``ConnectionError``,
``PermissionError``).
"""

from typing import Optional

__all__ = [
    "ParamServerError",
    "InvalidArgumentError",
    "ShapeMismatchError",
    "MissingGradientError",
    "NotFoundError",
    "UnknownTensorError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "EvictedError",
    "StaleClockError",
    "UnauthenticatedError",
    "UnavailableError",
    "DeadlineExceededError",
    "ResourceExhaustedError",
    "AbortedError",
    "ClusterMismatchError",
    "CheckpointError",
]


class ParamServerError(Exception):
    """Base class of every paramserve error."""

    code: Optional[str] = None
    shard: Optional[int] = None
    tensor: Optional[str] = None
    server_message: Optional[str] = None


class InvalidArgumentError(ParamServerError, ValueError):
    """A request the shard (or the worker) refuses as malformed: a NaN or
    infinite gradient, a wrong byte length, a bad address (INVALID_ARGUMENT)."""


class ShapeMismatchError(InvalidArgumentError):
    """A gradient's shape is not its tensor's declared shape."""


class MissingGradientError(InvalidArgumentError):
    """A push or step lacks the gradient of a declared tensor."""


class NotFoundError(ParamServerError, LookupError):
    """The shard has no such thing, e.g. an unknown checkpoint (NOT_FOUND)."""


class UnknownTensorError(NotFoundError):
    """The tensor was not declared (through this worker, or on the shard)."""


class AlreadyExistsError(ParamServerError):
    """A tensor re-declared with another shape or setting (ALREADY_EXISTS)."""


class FailedPreconditionError(ParamServerError):
    """The cluster's state must change before this request can succeed
    (FAILED_PRECONDITION): e.g. no checkpoint directory, or a shard came
    back from a checkpoint (``Worker.step`` recovers from that by itself)."""


class EvictedError(FailedPreconditionError):
    """This worker is not live: it was evicted after a silence, or left.
    Create a new ``Worker`` (which joins again) to continue."""


class StaleClockError(FailedPreconditionError):
    """A clock rule refused the request: a push or pull at a clock out of
    order, or a checkpoint at a clock some update has already passed."""


class UnauthenticatedError(ParamServerError, PermissionError):
    """The shard requires a bearer token and this worker sent none or a
    wrong one (UNAUTHENTICATED)."""


class UnavailableError(ParamServerError, ConnectionError):
    """A shard could not be reached, or is shutting down (UNAVAILABLE),
    after the retries the worker was given (``retry_for``)."""


class DeadlineExceededError(ParamServerError, TimeoutError):
    """A request or a wait on other workers did not complete in time
    (``rpc_timeout``, ``wait_timeout``) (DEADLINE_EXCEEDED)."""


class ResourceExhaustedError(ParamServerError):
    """A message or tensor exceeds a shard's limit (RESOURCE_EXHAUSTED)."""


class AbortedError(ParamServerError):
    """The job was stopped (a lost worker with ``on_worker_loss='fail'``) (ABORTED)."""


class ClusterMismatchError(ParamServerError):
    """The shards disagree about the job, or the worker's cluster spec is
    not the shards' (e.g. an empty list of shards)."""


class CheckpointError(ParamServerError):
    """A shard could not write its share of a checkpoint (training goes on)."""
