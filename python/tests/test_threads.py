"""Network waits release the GIL: Python threads make progress together."""

import threading

import numpy as np

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
