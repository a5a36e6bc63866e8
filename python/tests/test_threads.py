"""Network waits release the GIL: Python threads make progress together."""

import threading

import numpy as np
import pytest

import paramserve


def test_two_threads_step_in_lockstep(make_cluster):
    """Under sync, each worker's step waits for the other's push: if a wait
    held the GIL, the other thread could never push and both would hang."""
    cluster = make_cluster(shards=2, workers=2, policy="sync", optimizer={"kind": "sgd", "lr": 1.0})
    steps = 50
    results, failures = {}, []

    def train(worker_id):
        try:
            with paramserve.Worker(cluster.shards, worker_id, wait_timeout=30.0) as w:
                w.declare("w", (1000,))
                w.pull()
                g = np.full(1000, worker_id + 1, np.float32)
                for _ in range(steps):
                    p = w.step({"w": g})
                results[worker_id] = (p["w"].copy(), w.versions["w"])
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    # Each round applies the mean of 1 and 2: the same bytes for both workers.
    for worker_id in (0, 1):
        values, versions = results[worker_id]
        np.testing.assert_allclose(values, np.full(1000, -1.5 * steps))
        assert versions == [steps - 1, steps - 1]


def test_python_code_runs_while_a_worker_waits(make_cluster):
    """Worker 0's step blocks until worker 1 pushes; meanwhile this thread
    runs Python code (counting), then pushes as worker 1 to release it."""
    cluster = make_cluster(shards=1, workers=2, policy="sync")
    w0 = paramserve.Worker(cluster.shards, 0, wait_timeout=30.0)
    w1 = paramserve.Worker(cluster.shards, 1, wait_timeout=30.0)
    for w in (w0, w1):
        w.declare("w", (4,))
        w.pull()
    g = {"w": np.ones(4, np.float32)}
    done = threading.Event()
    thread = threading.Thread(target=lambda: (w0.step(g), done.set()))
    thread.start()
    count = 0
    while count < 100_000:  # needs the GIL: w0's wait must have released it
        count += 1
    assert not done.is_set(), "worker 0's step returned before worker 1 pushed clock 0"
    w1.step(g)
    assert done.wait(timeout=30)
    thread.join(timeout=30)
    assert w0.clock == 1 and w1.clock == 1


def test_ctrl_c_interrupts_a_wait_and_the_step_can_be_retried(make_cluster):
    """SIGINT while worker 0 waits on worker 1 raises KeyboardInterrupt
    within a check period; the clock stays, and retrying the step is
    exactly-once (the push of clock 0 may already have been applied)."""
    import os
    import signal

    cluster = make_cluster(shards=1, workers=2, policy="sync", optimizer={"kind": "sgd", "lr": 1.0})
    w0 = paramserve.Worker(cluster.shards, 0, wait_timeout=20.0)
    w1 = paramserve.Worker(cluster.shards, 1, wait_timeout=20.0)
    for w in (w0, w1):
        w.declare("w", (2,))
        w.pull()
    g = {"w": np.ones(2, np.float32)}
    # Whenever it lands (before or during the wait), the interrupt is raised inside the block.
    # A process started in the background by a non-interactive shell
    # ignores SIGINT; Python's own handler makes it KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            w0.step(g)  # waits for worker 1's clock 0, which never comes
            threading.Event().wait(30)  # (only if the step returned: it cannot, worker 1 has not pushed)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert w0.clock == 0
    w1_done = threading.Thread(target=w1.step, args=(g,))
    w1_done.start()
    values = w0.step(g)["w"]  # the same push again: applied once
    w1_done.join(timeout=30)
    np.testing.assert_array_equal(values, [-1.0, -1.0])  # mean of two pushes of 1, once
    assert w0.clock == 1 and w1.clock == 1
