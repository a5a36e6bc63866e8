"""Type stubs of the native module (the Rust worker library, via PyO3)."""

import os
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
import numpy.typing as npt

#: A gradient: a C-contiguous float32 numpy array or CPU torch tensor.
ArrayLike = Any
#: ``None``/``"zeros"``, a constant, ``("normal", mean, std, seed)`` or ``("uniform", low, high, seed)``.
Init = Union[None, str, float, Tuple[str, float, float, int]]
#: ``"sgd"``/``"adam"``/``"adagrad"`` or a dict with ``kind`` and settings (``lr``, ``momentum``, ...).
Optimizer = Union[None, str, Mapping[str, Union[str, float]]]
#: ``"sync"``, ``"ssp(3)"``, ``("ssp", 3)`` or ``"async"``.
Policy = Union[None, str, Tuple[str, int]]
#: The CA certificate's path, or a dict with ``ca`` and optionally ``domain``, ``cert``, ``key``.
Tls = Union[None, str, os.PathLike, Mapping[str, Union[str, os.PathLike]]]

class Worker:
    """A worker of a parameter-server job.

    Connects to every shard and joins the job at construction (waiting,
    with the GIL released, while shards start); leaves the job on
    :meth:`leave` or at the end of a ``with`` block. Every call that waits
    on the network releases the GIL, so other Python threads run.
    """

    def __init__(
        self,
        shards: Union[Sequence[str], "LocalCluster"],
        worker_id: int,
        *,
        token: Optional[str] = None,
        tls: Tls = None,
        wire_dtype: str = "f32",
        namespace: str = "",
        rpc_timeout: float = 30.0,
        wait_timeout: float = 600.0,
        retry_for: float = 120.0,
        split_threshold: Optional[int] = None,
        observer: bool = False,
    ) -> None:
        """``shards``: the shards' ``host:port`` addresses (or a LocalCluster).
        ``token``: the cluster's bearer token. ``tls``: see :data:`Tls`.
        ``wire_dtype``: ``"f32"``, ``"f16"`` or ``"bf16"`` encoding of
        gradients and values on the wire (the server keeps f32).
        ``namespace``: a prefix of every tensor's name on the shards.
        ``rpc_timeout``/``wait_timeout``: deadlines (s) of requests that
        never / may wait on other workers. ``retry_for``: how long (s) a
        transient failure is retried. ``observer``: connect without joining
        (for monitoring: declare, observe, status, checkpoints).
        Raises UnavailableError, UnauthenticatedError, ClusterMismatchError, ..."""
    def __enter__(self) -> "Worker": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool:
        """Leaves the job (an error of leaving is raised only if the block raised none)."""
    @property
    def id(self) -> int:
        """This worker's id."""
    @property
    def clock(self) -> int:
        """The clock the next pull and push use: steps completed so far."""
    @property
    def num_workers(self) -> int:
        """Number of workers in the job (0 for an observer)."""
    @property
    def default_policy(self) -> Optional[str]:
        """The job's default policy, e.g. ``"ssp(3)"`` (``None`` for an observer)."""
    @property
    def shards(self) -> List[str]:
        """The shard addresses this worker talks to."""
    @property
    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """The shapes of the tensors declared through this worker."""
    @property
    def versions(self) -> Dict[str, List[int]]:
        """Per tensor, the version vector of the last pull or step (per
        worker, the highest clock applied to the values; -1: none)."""
    @property
    def waited(self) -> float:
        """Seconds the last pull or step waited for the policy to release it."""
    def declare(
        self,
        name: str,
        shape: Sequence[int],
        *,
        init: Init = None,
        optimizer: Optimizer = None,
        policy: Policy = None,
        allow_non_finite: bool = False,
    ) -> None:
        """Declares a tensor. Every worker may declare it; the first
        declaration creates it, later ones must agree (else AlreadyExistsError)."""
    def pull(self) -> Dict[str, npt.NDArray[np.float32]]:
        """Every declared tensor at this worker's clock (waiting as the policy
        requires), as float32 arrays of the declared shapes that own their buffers."""
    def observe(self, name: str) -> npt.NDArray[np.float32]:
        """One tensor's current values, as an observer: never waits."""
    def push(self, grads: Mapping[str, ArrayLike]) -> None:
        """Pushes one gradient per declared tensor at this worker's clock and
        advances the clock. Copies each gradient once (``step`` does not).
        TypeError: not an array, or not float32. ValueError: not C-contiguous.
        ShapeMismatchError, MissingGradientError, UnknownTensorError."""
    def step(self, grads: Mapping[str, ArrayLike]) -> Dict[str, npt.NDArray[np.float32]]:
        """One training step, the fast path: pushes ``grads`` (read in place)
        at this worker's clock, advances the clock and returns every tensor
        at the new clock, in one round trip per tensor part. Rides out shard
        restarts. Python code must not write the gradients while it runs."""
    def barrier(self, clock: Optional[int] = None) -> None:
        """Waits until every live worker has completed ``clock`` clocks (default: this worker's)."""
    def checkpoint(self, clock: Optional[int] = None, wait: bool = True) -> Dict[str, Any]:
        """Requests the consistent checkpoint at ``clock`` (default: this
        worker's clock): exactly the updates of clocks < clock. Returns
        ``{"name", "clock", "complete"}`` and, with ``wait``, ``"dir"`` and
        ``"bytes"`` once it is complete on every shard.
        FailedPreconditionError: no checkpoint directory. StaleClockError:
        an update of a later clock is already applied. CheckpointError."""
    def checkpoint_status(self, name: str, wait: bool = False) -> List[Dict[str, Any]]:
        """Per shard: ``{"state": "capturing"|"writing"|"written"|"failed",
        "complete", ...}``. NotFoundError: no such checkpoint."""
    def status(self) -> List[Dict[str, Any]]:
        """Per shard: ``shard``, ``num_shards``, ``num_workers``,
        ``default_policy``, ``live_workers``, ``checkpoints`` (whether the
        shard writes checkpoints) and ``tensors`` (name, offset, len, policy,
        versions, applied_clock)."""
    def leave(self) -> None:
        """Leaves the job: nothing waits for this worker any more (a no-op for an observer)."""

class LocalCluster:
    """Shards of one job running in this process on 127.0.0.1 (for
    notebooks and tests). They stop on :meth:`stop`, at the end of a
    ``with`` block, or when the object is garbage-collected."""

    def __init__(
        self,
        shards: int = 2,
        workers: int = 4,
        policy: str = "ssp",
        staleness: int = 3,
        *,
        backup_workers: int = 0,
        staleness_scaling: str = "none",
        optimizer: Optimizer = None,
        aggregation: str = "mean",
        checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
        token: Optional[str] = None,
        tls_cert: Optional[Union[str, os.PathLike]] = None,
        tls_key: Optional[Union[str, os.PathLike]] = None,
        worker_timeout: Optional[float] = None,
        on_worker_loss: str = "evict",
        join_grace: Optional[float] = None,
        split_threshold: Optional[int] = None,
        max_tensor_bytes: Optional[int] = None,
    ) -> None:
        """``policy``: ``"sync"``, ``"ssp"`` (with ``staleness``) or
        ``"async"``, the default of tensors declared without one.
        ``backup_workers``: sync rounds close on the first
        ``workers - backup_workers`` gradients; later ones are dropped.
        ``staleness_scaling``: ssp and async: ``"none"``, ``"inverse"``
        (``1/max(1, tau)``) or ``"relative"`` (``min(1, (W-1)/tau)``).
        ``optimizer``: the default optimizer (SGD at lr 0.3 if ``None``).
        ``aggregation``: ``"mean"`` or ``"sum"`` of the workers' gradients.
        ``worker_timeout``: evict (or wait for, or ``"fail"`` the job on,
        per ``on_worker_loss``) a worker silent this many seconds.
        ``token``: require this bearer token. ``tls_cert``/``tls_key``: serve TLS."""
    @property
    def shards(self) -> List[str]:
        """The shards' addresses, ``127.0.0.1:PORT``."""
    @property
    def num_workers(self) -> int:
        """The number of workers of the job."""
    @property
    def policy(self) -> str:
        """The job's default policy, e.g. ``"ssp(3)"``."""
    @property
    def running(self) -> bool:
        """Whether the shards are running."""
    def stop(self) -> None:
        """Stops every shard and closes its port (idempotent)."""
    def __enter__(self) -> "LocalCluster": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def rust_step_loop(
    cluster: Union[Sequence[str], LocalCluster],
    worker_id: int,
    shapes: Mapping[str, Sequence[int]],
    steps: int,
    *,
    namespace: str = "rust",
    wire_dtype: str = "f32",
) -> List[float]:
    """The benchmark's baseline: the same step loop in Rust alone (zero
    gradients, shared not copied); returns each step's seconds."""
