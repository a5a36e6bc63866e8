"""Arrays across the boundary: what a push accepts and refuses, torch
tensors in and out, and pulled arrays that own their buffers."""

import sys

import numpy as np
import pytest

import paramserve
from paramserve import errors


@pytest.fixture
def worker(make_cluster):
    cluster = make_cluster(shards=2, workers=1, policy="sync", optimizer={"kind": "sgd", "lr": 1.0})
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (4, 3))
        w.pull()
        yield w


@pytest.mark.parametrize("call", ["step", "push"])
def test_wrong_dtypes_are_type_errors(worker, call):
    for bad in (np.ones((4, 3), np.float64), np.ones((4, 3), np.float16), np.ones((4, 3), np.int32)):
        with pytest.raises(TypeError, match=f"dtype {bad.dtype}, expected float32"):
            getattr(worker, call)({"w": bad})
    with pytest.raises(TypeError, match="expected a numpy.ndarray or torch.Tensor"):
        getattr(worker, call)({"w": [[1.0] * 3] * 4})
    assert worker.clock == 0


@pytest.mark.parametrize("call", ["step", "push"])
def test_non_contiguous_and_unaligned_are_value_errors(worker, call):
    transposed = np.ones((3, 4), np.float32).T
    strided = np.ones((8, 3), np.float32)[::2]
    fortran = np.asfortranarray(np.ones((4, 3), np.float32))
    for bad in (transposed, strided, fortran):
        assert bad.shape == (4, 3)
        with pytest.raises(ValueError, match="not C-contiguous"):
            getattr(worker, call)({"w": bad})
    raw = np.zeros(4 * 12 + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(4, 3)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match="not aligned"):
        getattr(worker, call)({"w": unaligned})
    assert worker.clock == 0


def test_wrong_shape_is_a_shape_mismatch(worker):
    for shape in [(3, 4), (12,), (4, 3, 1)]:
        with pytest.raises(errors.ShapeMismatchError):
            worker.step({"w": np.ones(shape, np.float32)})


def test_a_gradient_is_read_in_place_and_released(worker):
    g = np.arange(12, dtype=np.float32).reshape(4, 3)
    before = sys.getrefcount(g)
    p = worker.step({"w": g})
    np.testing.assert_array_equal(p["w"], -g)
    assert sys.getrefcount(g) == before  # the worker keeps no reference
    view = np.arange(24, dtype=np.float32)[:12].reshape(4, 3)  # a contiguous view of a larger buffer
    p = worker.step({"w": view})
    np.testing.assert_array_equal(p["w"], -g - view)


def test_pulled_arrays_own_their_buffers_and_are_fresh(worker):
    a = worker.pull()["w"]
    b = worker.pull()["w"]
    assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert not np.shares_memory(a, b)
    a += 1  # writable, and only the caller's copy changes
    np.testing.assert_array_equal(worker.pull()["w"], b)
    # The array's memory is the buffer the library received into (numpy
    # does not own it: its base keeps the Rust Vec alive).
    assert not a.flags.owndata and a.base is not None


def test_torch_tensors_in_and_out(make_cluster):
    torch = pytest.importorskip("torch")
    cluster = make_cluster(shards=2, workers=1, policy="sync", optimizer={"kind": "sgd", "lr": 1.0})
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (4, 3))
        w.pull()
        g = torch.arange(12, dtype=torch.float32).reshape(4, 3).requires_grad_()
        p = w.step({"w": g})
        t = torch.from_numpy(p["w"])  # shares the pulled buffer
        assert t.data_ptr() == p["w"].ctypes.data
        assert torch.equal(t, -g.detach())
        param = torch.nn.Parameter(torch.zeros(4, 3))
        param.grad = torch.ones(4, 3)
        w.push({"w": param.grad})
        assert torch.equal(torch.from_numpy(w.pull()["w"]), -g.detach() - 1)
        with pytest.raises(TypeError, match="torch.float64"):
            w.step({"w": torch.ones(4, 3, dtype=torch.float64)})
        with pytest.raises(ValueError, match="not C-contiguous"):
            w.step({"w": torch.ones(3, 4).t()})
        with pytest.raises(errors.ShapeMismatchError):
            w.step({"w": torch.ones(12)})
        assert w.clock == 2


def test_any_mapping_of_gradients_is_accepted(worker):
    from collections import OrderedDict
    from types import MappingProxyType

    g = np.ones((4, 3), np.float32)
    worker.step(OrderedDict(w=g))
    p = worker.step(MappingProxyType({"w": g}))
    np.testing.assert_array_equal(p["w"], -2 * g)
