"""paramserve: Python workers for the ps parameter server.

The worker is the Rust worker library (retries, exactly-once pushes,
recovery after a shard restart, chunked and f16/bf16 transfers) compiled
with PyO3; this package adds numpy arrays in and out, typed exceptions and
PyTorch glue (:mod:`paramserve.torch`). Its warnings (a step held back by
other workers, a shard being retried) go to stderr; the environment
variable ``PARAMSERVE_LOG`` (``info``, ``debug``, ``off``), read at import,
sets the level.

>>> import numpy as np, paramserve
>>> with paramserve.LocalCluster(shards=2, workers=1, policy="sync") as cluster:
...     with paramserve.Worker(cluster.shards, 0) as w:
...         w.declare("w", (3,), init=1.0, optimizer={"kind": "sgd", "lr": 0.5})
...         params = w.pull()
...         params = w.step({"w": np.ones(3, np.float32)})
...         params["w"].tolist()
[0.5, 0.5, 0.5]
"""

from . import errors
from ._native import LocalCluster, Worker
from .errors import *  # noqa: F401,F403

__all__ = ["Worker", "LocalCluster", "errors", "init"] + errors.__all__
__version__ = "0.1.0"


class init:
    """Initializers for :meth:`Worker.declare` (plain tuples, also accepted as such)."""

    @staticmethod
    def normal(mean: float = 0.0, std: float = 1.0, seed: int = 0):
        """Normal(mean, std), seeded: the same values however the tensor is sharded."""
        return ("normal", float(mean), float(std), int(seed))

    @staticmethod
    def uniform(low: float = 0.0, high: float = 1.0, seed: int = 0):
        """Uniform in [low, high), seeded: the same values however the tensor is sharded."""
        return ("uniform", float(low), float(high), int(seed))
