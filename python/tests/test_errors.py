"""Every exception class of paramserve.errors, caused for real against a
real embedded cluster, carrying the shard's message and attributes."""

import socket

import numpy as np
import pytest

import paramserve
from paramserve import errors

from conftest import wait_until


def ones(shape):
    return np.ones(shape, np.float32)


def test_every_class_is_exported_and_a_param_server_error():
    for name in errors.__all__:
        cls = getattr(paramserve, name)
        assert issubclass(cls, errors.ParamServerError), name


def test_invalid_argument_from_the_shard_on_a_nan_gradient(make_cluster):
    cluster = make_cluster(shards=1, workers=1, policy="sync")
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (3,))
        w.pull()
        with pytest.raises(errors.InvalidArgumentError) as e:
            w.step({"w": np.array([0.0, np.nan, 0.0], np.float32)})
        assert isinstance(e.value, ValueError)
        assert e.value.code == "INVALID_ARGUMENT" and e.value.shard == 0 and e.value.tensor == "w"
        assert "element 1 of the gradient is NaN" in e.value.server_message
        assert w.clock == 0  # refused: nothing applied, the clock stays
        w.declare("nan_ok", (1,), allow_non_finite=True)
        w.step({"w": ones(3), "nan_ok": np.array([np.inf], np.float32)})
        assert w.clock == 1


def test_shape_mismatch_missing_and_unknown_gradients(make_cluster):
    cluster = make_cluster(shards=1, workers=1, policy="sync")
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (2, 3))
        w.declare("b", (3,))
        with pytest.raises(errors.ShapeMismatchError, match=r"expected shape \[2, 3\], got \[3, 2\]") as e:
            w.step({"w": ones((3, 2)), "b": ones(3)})
        assert e.value.tensor == "w" and isinstance(e.value, ValueError)
        with pytest.raises(errors.MissingGradientError, match="no gradient for tensor \"b\""):
            w.push({"w": ones((2, 3))})
        with pytest.raises(errors.UnknownTensorError, match="wb"):
            w.step({"w": ones((2, 3)), "b": ones(3), "wb": ones(1)})
        with pytest.raises(errors.UnknownTensorError) as e:
            w.observe("nope")
        assert isinstance(e.value, LookupError)
        assert w.clock == 0


def test_not_found_for_an_unknown_checkpoint(make_cluster, tmp_path):
    cluster = make_cluster(shards=1, workers=1, checkpoint_dir=tmp_path)
    with paramserve.Worker(cluster.shards, 0) as w:
        with pytest.raises(errors.NotFoundError) as e:
            w.checkpoint_status("ckpt-that-never-was")
        assert e.value.code == "NOT_FOUND" and "ckpt-that-never-was" in e.value.server_message
        assert w.status()[0]["checkpoints"] is True
        assert not isinstance(e.value, errors.UnknownTensorError)


def test_already_exists_on_a_redeclaration_with_another_shape(make_cluster):
    cluster = make_cluster(shards=1, workers=2)
    w0 = paramserve.Worker(cluster.shards, 0)
    w1 = paramserve.Worker(cluster.shards, 1)
    w0.declare("w", (4,))
    with pytest.raises(errors.AlreadyExistsError) as e:
        w1.declare("w", (5,))
    assert e.value.code == "ALREADY_EXISTS"
    assert "already exists with shape [4]; got shape [5]" in e.value.server_message


def test_failed_precondition_without_a_checkpoint_directory(make_cluster):
    cluster = make_cluster(shards=1, workers=1)
    with paramserve.Worker(cluster.shards, 0) as w:
        with pytest.raises(errors.FailedPreconditionError) as e:
            w.checkpoint()
        assert type(e.value) is errors.FailedPreconditionError
        assert "no checkpoint directory" in e.value.server_message
        assert w.status()[0]["checkpoints"] is False


def test_stale_clock_on_a_checkpoint_too_late(make_cluster, tmp_path):
    cluster = make_cluster(shards=1, workers=1, policy="sync", checkpoint_dir=tmp_path)
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (2,))
        w.pull()
        w.step({"w": ones(2)})
        with pytest.raises(errors.StaleClockError) as e:
            w.checkpoint(clock=0)
        assert e.value.code == "FAILED_PRECONDITION"
        assert "request a later clock" in e.value.server_message


def test_evicted_after_silence_and_after_leaving(make_cluster):
    cluster = make_cluster(shards=1, workers=2, policy="async", worker_timeout=0.5, join_grace=0.0)
    silent = paramserve.Worker(cluster.shards, 1)
    silent.declare("w", (2,))
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (2,))
        # Worker 0 renews its lease by pulling (async: never waits); worker 1 says nothing.
        def only_worker_0_live():
            w.pull()
            return w.status()[0]["live_workers"] == [0]

        wait_until(only_worker_0_live, "the silent worker's eviction")
        with pytest.raises(errors.EvictedError) as e:
            silent.pull()
        assert "worker 1 was evicted" in e.value.server_message
        w.leave()
        with pytest.raises(errors.EvictedError, match="has left the job"):
            w.step({"w": ones(2)})


def test_unauthenticated_without_or_with_a_wrong_token(make_cluster):
    cluster = make_cluster(shards=1, workers=1, token="s3cret-token")
    for token in (None, "wrong-token"):
        with pytest.raises(errors.UnauthenticatedError) as e:
            paramserve.Worker(cluster.shards, 0, token=token, retry_for=1.0)
        assert e.value.code == "UNAUTHENTICATED" and isinstance(e.value, PermissionError)
    with paramserve.Worker(cluster.shards, 0, token="s3cret-token") as w:
        w.declare("w", (1,))
        assert w.pull()["w"].tolist() == [0.0]


def test_unavailable_when_nothing_listens_and_after_stop(make_cluster):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.UnavailableError) as e:
        paramserve.Worker([f"127.0.0.1:{port}"], 0, retry_for=0.5)
    assert isinstance(e.value, ConnectionError) and e.value.shard == 0
    cluster = make_cluster(shards=1, workers=1)
    w = paramserve.Worker(cluster.shards, 0, retry_for=0.5)
    w.declare("w", (1,))
    cluster.stop()
    with pytest.raises(errors.UnavailableError):
        w.pull()


def test_deadline_exceeded_waiting_for_a_worker_that_never_pushes(make_cluster):
    cluster = make_cluster(shards=1, workers=2, policy="sync")
    lagging = paramserve.Worker(cluster.shards, 1)
    with paramserve.Worker(cluster.shards, 0, wait_timeout=0.3) as w:
        w.declare("w", (1,))
        lagging.declare("w", (1,))
        w.pull()
        with pytest.raises(errors.DeadlineExceededError) as e:
            w.step({"w": ones(1)})  # clock 1 waits for worker 1's clock 0
        assert e.value.code == "DEADLINE_EXCEEDED" and isinstance(e.value, TimeoutError)
    lagging.leave()


def test_resource_exhausted_for_a_tensor_over_the_shards_limit(make_cluster):
    cluster = make_cluster(shards=1, workers=1, max_tensor_bytes=1024)
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("small", (256,))
        with pytest.raises(errors.ResourceExhaustedError) as e:
            w.declare("big", (257,))
        assert e.value.code == "RESOURCE_EXHAUSTED" and "exceeds the limit of 1024 bytes" in e.value.server_message


def test_aborted_when_a_lost_worker_fails_the_job(make_cluster):
    cluster = make_cluster(
        shards=1, workers=2, policy="async", worker_timeout=0.2, join_grace=0.0, on_worker_loss="fail"
    )
    paramserve.Worker(cluster.shards, 1).declare("w", (1,))  # joins, then falls silent
    w = paramserve.Worker(cluster.shards, 0)
    w.declare("w", (1,))
    failed = []

    def stopped():
        try:
            w.pull()
            return False
        except errors.AbortedError as e:
            failed.append(e)
            return True

    wait_until(stopped, "the job to stop")
    assert failed[0].code == "ABORTED" and "worker 1" in failed[0].server_message


def test_cluster_mismatch_for_no_shards_or_shards_of_two_clusters(make_cluster):
    with pytest.raises(errors.ClusterMismatchError, match="lists no shards"):
        paramserve.Worker([], 0)
    a = make_cluster(shards=1, workers=1)
    b = make_cluster(shards=1, workers=1)
    with pytest.raises(errors.ClusterMismatchError):
        paramserve.Worker([a.shards[0], b.shards[0]], 0)


def test_checkpoint_error_when_a_shard_cannot_write(make_cluster, tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    cluster = make_cluster(shards=1, workers=1, checkpoint_dir=directory)
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (2,))
        w.pull()
        directory.rmdir()
        directory.write_text("a file where the checkpoint directory was")
        with pytest.raises(errors.CheckpointError) as e:
            w.checkpoint()
        assert e.value.shard == 0 and e.value.server_message
        w.step({"w": ones(2)})  # training goes on
