"""Every call of the Worker API against a real embedded cluster, with
values checked against hand-computed optimizer steps."""

import numpy as np
import pytest

import paramserve


def test_declare_pull_step_push_compute_sgd(make_cluster):
    cluster = make_cluster(shards=2, workers=1, policy="sync", optimizer={"kind": "sgd", "lr": 0.5})
    with paramserve.Worker(cluster.shards, 0) as w:
        assert (w.id, w.clock, w.num_workers, w.default_policy) == (0, 0, 1, "sync")
        assert w.shards == cluster.shards
        w.declare("w", (2, 3), init=1.0)
        w.declare("b", [4])  # zeros
        assert w.shapes == {"w": (2, 3), "b": (4,)}
        p = w.pull()
        assert set(p) == {"w", "b"}
        assert p["w"].dtype == np.float32 and p["w"].shape == (2, 3)
        np.testing.assert_array_equal(p["w"], np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(p["b"], np.zeros(4, np.float32))

        g = {"w": np.full((2, 3), 2.0, np.float32), "b": np.arange(4, dtype=np.float32)}
        p = w.step(g)
        assert w.clock == 1
        np.testing.assert_allclose(p["w"], np.zeros((2, 3)))  # 1 - 0.5 * 2
        np.testing.assert_allclose(p["b"], -0.5 * np.arange(4))
        assert w.versions == {"w": [0], "b": [0]}
        assert w.waited >= 0.0

        w.push(g)
        assert w.clock == 2
        p = w.pull()
        np.testing.assert_allclose(p["w"], -np.ones((2, 3)))
        assert w.versions["w"] == [1]
        # The gradient is unchanged by being sent.
        np.testing.assert_array_equal(g["w"], np.full((2, 3), 2.0))


def test_initializers_optimizers_and_policies(make_cluster):
    cluster = make_cluster(shards=2, workers=1, policy="ssp", staleness=2)
    with paramserve.Worker(cluster, 0) as w:
        assert w.default_policy == "ssp(2)"
        w.declare("n", (1000,), init=paramserve.init.normal(0.0, 2.0, 7))
        w.declare("u", (1000,), init=("uniform", -1.0, 1.0, 3), optimizer="adam")
        w.declare("z", (3,), init="zeros", optimizer={"kind": "sgd", "learning_rate": 1.0, "momentum": 0.5})
        w.declare("a", (3,), policy="async", optimizer={"kind": "adagrad", "lr": 0.1})
        w.declare("s", (3,), policy=("ssp", 1))
        p = w.pull()
        assert 1.7 < p["n"].std() < 2.3
        assert p["u"].min() >= -1.0 and p["u"].max() < 1.0 and p["u"].std() > 0.5
        policies = {t["name"]: t["policy"] for s in w.status() for t in s["tensors"]}
        assert policies == {"n": "ssp(2)", "u": "ssp(2)", "z": "ssp(2)", "a": "async", "s": "ssp(1)"}
        ones = {k: np.ones(v, np.float32) for k, v in w.shapes.items()}
        p1 = w.step(ones)
        p2 = w.step(ones)
        # SGD with momentum 0.5 at lr 1: v1 = 1, v2 = 1.5.
        np.testing.assert_allclose(p1["z"], -np.ones(3))
        np.testing.assert_allclose(p2["z"], -2.5 * np.ones(3))
        # Adam's first step moves each element by lr (0.001) against the gradient's sign.
        np.testing.assert_allclose(p1["u"], p["u"] - 0.001, atol=1e-6)


def test_same_values_for_every_worker_and_whatever_the_split(make_cluster):
    split = make_cluster(shards=3, workers=2, policy="sync", split_threshold=10)
    whole = make_cluster(shards=3, workers=2, policy="sync")
    values = []
    for cluster in (split, whole):
        w0 = paramserve.Worker(cluster.shards, 0, split_threshold=10 if cluster is split else None)
        w1 = paramserve.Worker(cluster.shards, 1, split_threshold=10 if cluster is split else None)
        for w in (w0, w1):
            w.declare("t", (5, 7), init=paramserve.init.normal(0, 1, 42))
        values += [w0.pull()["t"], w1.pull()["t"]]
        if cluster is split:
            lens = sorted(t["len"] for s in w0.status() for t in s["tensors"])
            assert len(lens) == 3 and sum(lens) == 35
        w0.leave()
        w1.leave()
    for v in values[1:]:
        np.testing.assert_array_equal(v, values[0])


def test_observe_barrier_status_and_leave(make_cluster):
    cluster = make_cluster(shards=1, workers=2, policy="ssp", staleness=5)
    w0 = paramserve.Worker(cluster.shards, 0)
    w1 = paramserve.Worker(cluster.shards, 1)
    for w in (w0, w1):
        w.declare("x", (2,), init=3.0, optimizer={"kind": "sgd", "lr": 1.0})
    w0.step({"x": np.ones(2, np.float32)})
    observer = paramserve.Worker(cluster.shards, 0, observer=True)
    observer.declare("x", (2,), init=3.0, optimizer={"kind": "sgd", "lr": 1.0})
    # mean over the job's 2 workers: 3 - 1 * 1 / 2
    np.testing.assert_allclose(observer.observe("x"), [2.5, 2.5])
    assert observer.num_workers == 0 and observer.default_policy is None
    observer.leave()  # an observer never joined: worker 0 stays live
    assert observer.status()[0]["live_workers"] == [0, 1]
    w1.step({"x": np.ones(2, np.float32)})
    w0.barrier()  # both completed clock 1
    w0.barrier(1)
    (s,) = w0.status()
    assert s["live_workers"] == [0, 1] and s["num_workers"] == 2 and s["shard"] == 0
    assert s["tensors"][0]["versions"] == [0, 0]
    w1.leave()
    w1.leave()  # a second leave does nothing
    (s,) = w0.status()
    assert s["live_workers"] == [0]
    w0.leave()


def test_checkpoint_and_its_status(make_cluster, tmp_path):
    cluster = make_cluster(shards=2, workers=1, policy="sync", checkpoint_dir=tmp_path)
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (4,), init=1.0)
        w.pull()
        w.step({"w": np.ones(4, np.float32)})
        cp = w.checkpoint()
        assert cp["clock"] == 1 and cp["complete"] and cp["bytes"] > 0
        assert (tmp_path / cp["name"]).is_dir()
        assert any(f.name.endswith(".json") for f in (tmp_path / cp["name"]).iterdir())
        statuses = w.checkpoint_status(cp["name"])
        assert [s["state"] for s in statuses] == ["written", "written"]
        assert all(s["complete"] for s in statuses)
        later = w.checkpoint(clock=3, wait=False)
        assert later["clock"] == 3 and not later["complete"]
        pending = w.checkpoint_status(later["name"])
        # The shard holding "w" waits for clock 3; a shard holding nothing need not.
        assert "capturing" in {s["state"] for s in pending} and not any(s["complete"] for s in pending)
        w.step({"w": np.ones(4, np.float32)})
        w.step({"w": np.ones(4, np.float32)})
        done = w.checkpoint_status(later["name"], wait=True)
        assert all(s["state"] == "written" for s in done)


def test_wire_dtypes_round_trip_within_their_precision(make_cluster, rng):
    for dtype in ["f32", "f16", "bf16"]:
        cluster = make_cluster(shards=2, workers=1, policy="sync", optimizer={"kind": "sgd", "lr": 1.0})
        with paramserve.Worker(cluster.shards, 0, wire_dtype=dtype) as w:
            w.declare("w", (64,))
            w.pull()
            g = rng.standard_normal(64).astype(np.float32)
            got = w.step({"w": g})["w"]
            tol = {"f32": 0, "f16": 2e-3, "bf16": 2e-2}[dtype]
            np.testing.assert_allclose(got, -g, rtol=tol, atol=tol)


def test_context_manager_leaves_and_keeps_the_blocks_exception(make_cluster):
    cluster = make_cluster(shards=1, workers=2, policy="sync")
    other = paramserve.Worker(cluster.shards, 1)
    with pytest.raises(RuntimeError, match="inside"):
        with paramserve.Worker(cluster.shards, 0) as w:
            assert repr(w).startswith("Worker(id=0, clock=0")
            raise RuntimeError("inside")
    (s,) = other.status()
    assert s["live_workers"] == [1]


def test_bad_arguments_are_value_and_type_errors(make_cluster):
    cluster = make_cluster(shards=1, workers=1)
    with pytest.raises(ValueError, match="wire_dtype"):
        paramserve.Worker(cluster.shards, 0, wire_dtype="f64")
    with pytest.raises(ValueError, match="one string"):
        paramserve.Worker(cluster.shards[0], 0)
    with pytest.raises(ValueError, match="rpc_timeout"):
        paramserve.Worker(cluster.shards, 0, rpc_timeout=-1)
    with paramserve.Worker(cluster.shards, 0) as w:
        with pytest.raises(ValueError, match="policy"):
            w.declare("x", (1,), policy="bsp")
        with pytest.raises(ValueError, match="optimizer"):
            w.declare("x", (1,), optimizer="rmsprop")
        with pytest.raises(ValueError, match="takes no setting"):
            w.declare("x", (1,), optimizer={"kind": "adam", "momentum": 0.9})
        with pytest.raises(ValueError, match="init"):
            w.declare("x", (1,), init=("gamma", 1.0, 1.0, 0))
        with pytest.raises(TypeError, match="grads"):
            w.step([np.ones(1, np.float32)])
    with pytest.raises(ValueError, match="policy"):
        paramserve.LocalCluster(policy="bsp")


def test_the_package_docstring_example_runs():
    import doctest

    result = doctest.testmod(paramserve)
    assert result.attempted >= 2 and result.failed == 0


def test_the_benchmarks_rust_loop_steps_on_the_same_cluster(make_cluster):
    cluster = make_cluster(shards=2, workers=2, policy="async")
    times = paramserve._native.rust_step_loop(cluster, 1, {"a": [3, 4], "b": [5]}, 7)
    assert len(times) == 7 and all(t > 0 for t in times)
    with paramserve.Worker(cluster.shards, 0, observer=True, namespace="rust") as observer:
        observer.declare("b", (5,))
        # SGD at lr 0.3 (the cluster's default) on zero gradients: the values stay zero.
        np.testing.assert_array_equal(observer.observe("b"), np.zeros(5))
    (s0, s1) = paramserve.Worker(cluster.shards, 0, observer=True).status()
    names = {t["name"] for s in (s0, s1) for t in s["tensors"]}
    assert names == {"rust/a", "rust/b"}
    versions = {t["name"]: t["versions"] for s in (s0, s1) for t in s["tensors"]}
    assert versions["rust/b"] == [-1, 6]  # worker 1 pushed clocks 0..6
