"""LocalCluster: starts shards on 127.0.0.1, stops them on stop(), on
leaving a `with` block and on garbage collection, leaving no port open
and no thread behind."""

import gc
import os
import socket

import numpy as np
import pytest

import paramserve
from paramserve import errors

from conftest import wait_until


def port_of(address):
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    return int(port)


def is_listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def threads_of_this_process():
    return len(os.listdir("/proc/self/task"))


def test_start_and_stop_close_every_port():
    cluster = paramserve.LocalCluster(shards=3, workers=1, policy="async")
    ports = [port_of(a) for a in cluster.shards]
    assert len(set(ports)) == 3 and cluster.running
    assert all(is_listening(p) for p in ports)
    assert cluster.policy == "async" and cluster.num_workers == 1
    with paramserve.Worker(cluster.shards, 0) as w:
        w.declare("w", (2,))
        w.step({"w": np.ones(2, np.float32)})
    cluster.stop()
    assert not cluster.running
    assert not any(is_listening(p) for p in ports)
    cluster.stop()  # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        paramserve.Worker(cluster, 0)
    assert "running=false" in repr(cluster)


def test_stop_while_a_worker_is_connected_and_waiting():
    cluster = paramserve.LocalCluster(shards=1, workers=2, policy="sync")
    ports = [port_of(a) for a in cluster.shards]
    w = paramserve.Worker(cluster.shards, 0, retry_for=0.5)
    w.declare("w", (1,))
    w.pull()
    cluster.stop()  # worker 0 still connected
    assert not any(is_listening(p) for p in ports)
    with pytest.raises(errors.UnavailableError):
        w.pull()


def test_with_block_stops_the_cluster():
    with paramserve.LocalCluster(shards=2, workers=1) as cluster:
        ports = [port_of(a) for a in cluster.shards]
        assert all(is_listening(p) for p in ports)
    assert not cluster.running
    assert not any(is_listening(p) for p in ports)


def test_garbage_collection_stops_the_cluster():
    cluster = paramserve.LocalCluster(shards=2, workers=1)
    ports = [port_of(a) for a in cluster.shards]
    del cluster
    gc.collect()
    wait_until(lambda: not any(is_listening(p) for p in ports), "the collected cluster's ports to close")


def test_repeated_clusters_leave_no_threads_behind():
    def once():
        with paramserve.LocalCluster(shards=2, workers=1, policy="sync") as cluster:
            with paramserve.Worker(cluster.shards, 0) as w:
                w.declare("w", (10,))
                w.step({"w": np.ones(10, np.float32)})

    once()  # starts the runtime's threads, once per process
    baseline = threads_of_this_process()
    for _ in range(5):
        once()
    assert threads_of_this_process() <= baseline


def test_backup_workers_drop_a_late_push_and_scaling_is_a_setting():
    optimizer = {"kind": "sgd", "lr": 1.0}
    with paramserve.LocalCluster(
        shards=1, workers=2, policy="sync", backup_workers=1, optimizer=optimizer
    ) as cluster:
        assert cluster.policy == "sync+backup(1)"
        with paramserve.Worker(cluster.shards, 0) as w0, paramserve.Worker(cluster.shards, 1) as w1:
            for w in (w0, w1):
                w.declare("w", (2,))
                w.pull()
            # A round closes on W - b = 1 gradient: worker 0's closes round 0.
            first = w0.step({"w": np.ones(2, np.float32)})
            np.testing.assert_array_equal(first["w"], [-1.0, -1.0])
            # Worker 1's push was computed from round 0, now closed: dropped, not an error.
            late = w1.step({"w": np.full(2, 100.0, np.float32)})
            np.testing.assert_array_equal(late["w"], [-1.0, -1.0])
    with paramserve.LocalCluster(shards=1, workers=2, policy="async", staleness_scaling="relative") as c:
        assert c.policy == "async(scaled)"
    with pytest.raises(ValueError, match="applies only to policy sync"):
        paramserve.LocalCluster(shards=1, workers=2, policy="ssp", backup_workers=1)
    with pytest.raises(ValueError, match="use none, inverse"):
        paramserve.LocalCluster(shards=1, workers=2, policy="async", staleness_scaling="half")
