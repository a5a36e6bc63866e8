"""What the Python layer costs: paramserve's Worker.step against the same
step loop in Rust alone (``paramserve._native.rust_step_loop``: the worker
library called from Rust, no Python per step), on the same embedded
cluster, runtime and machine, in one run.

    python python/bench/bench.py [--quick] [--csv FILE]

1. Push-then-pull throughput (one ``step``: push a gradient, pull the new
   values) of one 4 MiB and one 64 MiB tensor: bytes moved (pushed +
   pulled) per second, Python vs Rust.
2. Per-step overhead for an 8-tensor model (a small CNN's shapes): median
   step time, Python minus Rust.

Both sides run alternately, several rounds, and report medians, so that
drift of the machine (another build, CPU frequency) hits both alike. The
cluster is async, so a worker never waits for the other, idle one.
"""

import argparse
import csv
import os
import statistics
import time

import numpy as np

import paramserve
from paramserve._native import rust_step_loop

MODEL_8 = {
    "conv1.weight": (16, 1, 3, 3),
    "conv1.bias": (16,),
    "conv2.weight": (32, 16, 3, 3),
    "conv2.bias": (32,),
    "fc1.weight": (64, 1568),
    "fc1.bias": (64,),
    "fc2.weight": (10, 64),
    "fc2.bias": (10,),
}


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def python_steps(worker, grads, steps):
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        worker.step(grads)
        times.append(time.perf_counter() - start)
    return times


def compare(shapes, steps, rounds):
    """Step seconds on a fresh cluster over `rounds` rounds of `steps`
    steps of each side, Python as worker 0 (tensors under namespace "py"),
    Rust as worker 1 (under "rust"): the medians of all Python and all Rust
    steps, and the medians over rounds of (Python's round median minus
    Rust's) and of (Rust's over Python's). The overhead and the ratio are
    read from those paired values: load from other processes drifts over
    seconds and hits the two halves of one round alike."""
    with paramserve.LocalCluster(shards=2, workers=2, policy="async") as cluster:
        with paramserve.Worker(cluster, 0, namespace="py") as w:
            for name, shape in shapes.items():
                w.declare(name, shape)
            grads = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
            w.pull()
            py, rs, diffs, ratios = [], [], [], []
            rust_shapes = {n: list(s) for n, s in shapes.items()}
            for i in range(rounds):
                # Who goes first alternates, so neither always gets a warmer (or colder) machine.
                if i % 2:
                    r = rust_step_loop(cluster, 1, rust_shapes, steps, namespace="rust")
                    p = python_steps(w, grads, steps)
                else:
                    p = python_steps(w, grads, steps)
                    r = rust_step_loop(cluster, 1, rust_shapes, steps, namespace="rust")
                py += p
                rs += r
                diffs.append(statistics.median(p) - statistics.median(r))
                ratios.append(statistics.median(r) / statistics.median(p))
    return statistics.median(py), statistics.median(rs), statistics.median(diffs), statistics.median(ratios)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--csv", help="also write the rows here")
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs); paramserve {paramserve.__version__}")
    print("per case a fresh cluster: 2 embedded shards on 127.0.0.1 (async), Python worker 0, Rust worker 1, one process\n")
    rows = []
    for label, elements, steps in [("4 MiB", 1 << 20, 20), ("64 MiB", 16 << 20, 3)]:
        if args.quick:
            steps = max(2, steps // 4)
        py, rs, _, ratio = compare({"t": (elements,)}, steps, rounds)
        moved = 2 * 4 * elements  # pushed + pulled bytes
        row = {
            "case": f"step {label}",
            "python_ms": py * 1e3,
            "rust_ms": rs * 1e3,
            "python_gb_s": moved / py / 1e9,
            "rust_gb_s": moved / rs / 1e9,
            "ratio": ratio,
        }
        rows.append(row)
        print(
            f"push-then-pull {label:>6}: Python {row['python_gb_s']:.2f} GB/s ({row['python_ms']:.2f} ms), "
            f"Rust {row['rust_gb_s']:.2f} GB/s ({row['rust_ms']:.2f} ms): Python/Rust throughput = {row['ratio']:.2f}x (median of {rounds} paired rounds)"
        )
    py, rs, diff, ratio = compare(MODEL_8, 50, rounds * (1 if args.quick else 4))
    row = {
        "case": "step 8 tensors",
        "python_ms": py * 1e3,
        "rust_ms": rs * 1e3,
        "overhead_us": diff * 1e6,
        "ratio": ratio,
    }
    rows.append(row)
    params = sum(int(np.prod(s)) for s in MODEL_8.values())
    print(
        f"8-tensor model ({params} parameters) step: Python {py * 1e6:.0f} us, Rust {rs * 1e6:.0f} us: "
        f"Python layer overhead {row['overhead_us']:.0f} us per step (median of {rounds * (1 if args.quick else 4)} paired rounds)"
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case", "python_ms", "rust_ms", "python_gb_s", "rust_gb_s", "overhead_us", "ratio"])
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
