"""Fixtures: embedded clusters on 127.0.0.1 that are always stopped, and
deadlines for the waits that tests poll (never fixed sleeps)."""

import time

import numpy as np
import pytest

import paramserve


@pytest.fixture
def make_cluster():
    """Starts LocalClusters with the given settings; stops them all at the end."""
    started = []

    def make(**kwargs):
        cluster = paramserve.LocalCluster(**kwargs)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def rng():
    """A seeded generator: every test sees the same numbers."""
    return np.random.default_rng(1234)


def wait_until(condition, what, timeout=20.0, every=0.01):
    """Polls `condition` until it holds; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
