"""The library's logs reach a Python user's stderr: a step or a barrier held
back by a missing worker is reported, naming the shard and the worker, at
the default level (warnings); `PARAMSERVE_LOG` changes the level."""

import os
import subprocess
import sys

HELD_STEP = """
import numpy as np
import paramserve
with paramserve.LocalCluster(shards=1, workers=2, policy="sync") as cluster:
    with paramserve.Worker(cluster.shards, 0, wait_timeout=6.5) as w:
        w.declare("w", (2,))
        try:
            w.step({"w": np.ones(2, np.float32)})
        except paramserve.errors.DeadlineExceededError:
            print("gave up")
"""

HELD_BARRIER = """
import numpy as np
import paramserve
with paramserve.LocalCluster(shards=1, workers=2, policy="async") as cluster:
    with paramserve.Worker(cluster.shards, 0, wait_timeout=6.5) as w:
        w.declare("w", (2,))
        w.push({"w": np.ones(2, np.float32)})
        try:
            w.barrier()
        except paramserve.errors.DeadlineExceededError:
            print("gave up")
"""


def run(env_extra, script=HELD_STEP):
    env = {k: v for k, v in os.environ.items() if k not in ("PARAMSERVE_LOG", "RUST_LOG")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_held_step_is_logged_naming_the_shard_and_the_missing_worker():
    out = run({})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gave up", out.stdout + out.stderr
    held = [line for line in out.stderr.splitlines() if "step at clock 0 has waited" in line]
    assert held, out.stderr
    assert "for shard 0 (127.0.0.1:" in held[0] and "waits for workers [1] to push" in held[0], held[0]
    # Worker 1 was never started, and the line says so.
    assert "worker 1 has sent nothing to this shard since it started: start it" in held[0], held[0]
    # The shard, in the same process, says it too; info lines stay out by default.
    assert "a pull has waited" in out.stderr and "worker joined" not in out.stderr, out.stderr


def test_paramserve_log_sets_the_level():
    out = run({"PARAMSERVE_LOG": "off"})
    assert out.returncode == 0, out.stderr
    assert "has waited" not in out.stderr, out.stderr


def test_a_held_barrier_is_logged_naming_the_missing_worker():
    out = run({}, HELD_BARRIER)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gave up", out.stdout + out.stderr
    held = [line for line in out.stderr.splitlines() if "barrier at clock 1 has waited" in line]
    assert held, out.stderr
    assert "reach clock 1" in held[0] and "waits for workers [1] to push" in held[0], held[0]
    assert "a barrier has waited" in out.stderr, out.stderr
