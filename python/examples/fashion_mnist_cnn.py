"""A PyTorch CNN on Fashion-MNIST, trained on the parameter server by 4
worker processes under sync, ssp(3) and async, against a single-process
PyTorch baseline with the same global batch.

    python python/examples/fashion_mnist_cnn.py            # the full run (see python/README.md)
    python python/examples/fashion_mnist_cnn.py --quick    # a short smoke run

Each policy gets its own embedded cluster (2 shards on 127.0.0.1, in this
process); the workers are separate processes (started with 'spawn') that
connect to it over gRPC, and the server runs Adam. While they train, an
observer in this process snapshots the parameters every
``--snapshot-every`` seconds; after the run each snapshot is evaluated on
2,000 test images (accuracy vs time), and the last on all 10,000.

Writes to ``--out`` (default ``out/python-cnn``): ``steps.csv`` (every
worker step: loss, wait, staleness), ``evals.csv`` (every snapshot's
accuracy), ``accuracy_vs_time.png``, ``loss_vs_clock.png`` and
``summary.md``.
"""

import argparse
import csv
import gzip
import hashlib
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import paramserve
import paramserve.torch as pst

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "examples" / "data" / "fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel statistics
EVAL_IMAGES = 2000


class Net(nn.Module):
    """Two 3x3 conv layers (16 and 32 channels, each ReLU and 2x2 max-pool) and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its shape."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape), raw


def load(data_dir: Path):
    """(train_x, train_y, test_x, test_y): images normalised, N x 1 x 28 x 28
    float32; every file checked against SHA256SUMS when it is there."""
    sums = {}
    if (data_dir / "SHA256SUMS").exists():
        for line in (data_dir / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split()
            sums[name] = digest
    out = []
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        path = data_dir / name if (data_dir / name).exists() else data_dir / f"{name}.gz"
        array, raw = read_idx(path)
        if name in sums and hashlib.sha256(raw).hexdigest() != sums[name]:
            sys.exit(f"{path}: SHA-256 does not match SHA256SUMS")
        out.append(array)
    norm = lambda x: ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None, :, :]
    return norm(out[0]), out[1].astype(np.int64), norm(out[2]), out[3].astype(np.int64)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            logits = model(torch.from_numpy(x[i : i + 1000]))
            correct += int((logits.argmax(1).numpy() == y[i : i + 1000]).sum())
    model.train()
    return correct / len(x)


# ---------------------------------------------------------------- training


def batches(n_train, worker, workers, batch, clocks, seed):
    """Worker `worker`'s batches: each epoch a seeded permutation of the
    training set, dealt round-robin, so the W workers' batches of one clock
    are one global batch of W x `batch` distinct examples."""
    rng = np.random.default_rng(seed)
    per_epoch = n_train // (workers * batch)
    clock = 0
    while clock < clocks:
        order = rng.permutation(n_train)
        for c in range(min(per_epoch, clocks - clock)):
            start = (c * workers + worker) * batch
            yield order[start : start + batch]
        clock += per_epoch


def worker_main(args, shards, worker_id, queue, go):
    """One worker process: trains the CNN through the server and sends its step records back."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed + worker_id)  # the server's init is the same whatever this is
    train_x, train_y, _, _ = load(args.data_dir)
    if args.train_examples:
        train_x, train_y = train_x[: args.train_examples], train_y[: args.train_examples]
    model = Net()
    rows = []
    with paramserve.Worker(shards, worker_id) as worker:
        opt = pst.ServerOptimizer(worker, model, optimizer=optimizer(args), seed=args.seed)
        queue.put(("ready", worker_id))
        go.wait()  # every worker set up: the clock starts for all at once
        start = time.perf_counter()
        for idx in batches(len(train_x), worker_id, args.workers, args.batch, args.clocks, args.seed):
            clock = worker.clock
            opt.zero_grad()
            loss = F.cross_entropy(model(torch.from_numpy(train_x[idx])), torch.from_numpy(train_y[idx]))
            loss.backward()
            opt.step()
            versions = [v for vv in worker.versions.values() for v in vv]
            # Clocks of other workers' updates this read lacks beyond a sync read's.
            staleness = max(0, clock - min(versions)) if versions else 0
            rows.append((worker_id, clock, time.perf_counter() - start, float(loss), worker.waited, staleness))
    queue.put(("rows", rows))


def optimizer(args):
    return {"kind": "adam", "lr": args.lr}


def snapshot_loop(observer, names, stop, every, snapshots, start):
    """Snapshots the parameters every `every` seconds until `stop` is set."""
    while True:
        snapshots.append((time.perf_counter() - start, {n: observer.observe(n) for n in names}))
        if stop.wait(every):
            snapshots.append((time.perf_counter() - start, {n: observer.observe(n) for n in names}))
            return


def collect(queue, kind, procs, policy):
    """One `kind` message from every worker process; exits if one dies first."""
    got = []
    while len(got) < len(procs):
        try:
            k, value = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: check that every worker still lives
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                sys.exit(f"{policy}: a worker process exited with {dead[0]} (its error is above)")
            continue
        assert k == kind, (k, kind)
        got.append(value)
    return got


def run_policy(args, policy, staleness):
    """Trains under `policy` on a fresh cluster; returns (step rows, snapshots, seconds)."""
    ctx = mp.get_context("spawn")
    with paramserve.LocalCluster(shards=args.shards, workers=args.workers, policy=policy, staleness=staleness) as cluster:
        observer = paramserve.Worker(cluster.shards, 0, observer=True)
        pst.declare_module(observer, Net(), optimizer=optimizer(args), seed=args.seed, load=False)
        names = list(observer.shapes)
        queue, go = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=worker_main, args=(args, cluster.shards, w, queue, go)) for w in range(args.workers)]
        for p in procs:
            p.start()
        # Starting Python, importing torch and loading data are not training.
        collect(queue, "ready", procs, policy)
        go.set()
        start = time.perf_counter()
        stop, snapshots = threading.Event(), []
        snapper = threading.Thread(target=snapshot_loop, args=(observer, names, stop, args.snapshot_every, snapshots, start))
        snapper.start()
        rows = [row for got in collect(queue, "rows", procs, policy) for row in got]
        for p in procs:
            p.join()
        stop.set()
        snapper.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            sys.exit(f"{policy}: worker processes exited with {failed}")
        return rows, snapshots, time.perf_counter() - start


def run_baseline(args):
    """Single-process PyTorch: same model, Adam, global batch W x batch, same clocks."""
    torch.set_num_threads(args.baseline_threads)
    torch.manual_seed(args.seed)
    train_x, train_y, _, _ = load(args.data_dir)
    if args.train_examples:
        train_x, train_y = train_x[: args.train_examples], train_y[: args.train_examples]
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rows, snapshots = [], []
    start = last = time.perf_counter()
    snapshots.append((0.0, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}))
    for clock, idx in enumerate(batches(len(train_x), 0, 1, args.batch * args.workers, args.clocks, args.seed)):
        opt.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(train_x[idx])), torch.from_numpy(train_y[idx]))
        loss.backward()
        opt.step()
        now = time.perf_counter()
        rows.append((0, clock, now - start, float(loss), 0.0, 0))
        if now - last >= args.snapshot_every:
            snapshots.append((now - start, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}))
            last = now
    elapsed = time.perf_counter() - start
    snapshots.append((elapsed, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}))
    return rows, snapshots, elapsed


# ---------------------------------------------------------------- report


def evaluate(snapshots, test_x, test_y):
    """Accuracy of every snapshot on the first EVAL_IMAGES test images, and of the last on all."""
    model = Net()
    out = []
    for t, values in snapshots:
        pst.load_values(model, values)
        out.append((t, accuracy(model, test_x[:EVAL_IMAGES], test_y[:EVAL_IMAGES])))
    pst.load_values(model, snapshots[-1][1])
    return out, accuracy(model, test_x, test_y)


def time_to(evals, target):
    return next((t for t, a in evals if a >= target), None)


def report(args, results):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "worker", "clock", "time_s", "loss", "waited_s", "staleness"])
        for name, r in results.items():
            for row in r["rows"]:
                w.writerow([name, *row])
    with open(out / "evals.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "time_s", "accuracy"])
        for name, r in results.items():
            for t, a in r["evals"]:
                w.writerow([name, f"{t:.3f}", f"{a:.4f}"])
    base = time_to(results["baseline"]["evals"], args.target) if "baseline" in results else None
    lines = [
        f"| policy | time to {args.target} acc (s) | vs baseline | final acc | steps/s | staleness mean | staleness max | blocked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        rows = r["rows"]
        t = time_to(r["evals"], args.target)
        steps = len(rows) * (args.workers if name == "baseline" else 1)
        stale = [row[5] for row in rows]
        blocked = sum(row[4] for row in rows) / (r["seconds"] * (1 if name == "baseline" else args.workers))
        fmt_t = f"{t:.1f}" if t is not None else "-"
        vs = f"{t / base:.2f}x" if (t is not None and base) else "-"
        sm, sx = ("-", "-") if name == "baseline" else (f"{np.mean(stale):.2f}", f"{max(stale)}")
        bl = "-" if name == "baseline" else f"{100 * blocked:.1f}%"
        lines.append(f"| {name} | {fmt_t} | {vs} | {r['final']:.4f} | {steps / r['seconds']:.0f} | {sm} | {sx} | {bl} |")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    summary = "\n".join(
        [
            f"CNN on Fashion-MNIST: {args.workers} workers x batch {args.batch} (baseline: batch {args.workers * args.batch}), "
            f"{args.clocks} clocks, server Adam lr {args.lr}, {args.shards} shards; {os.cpu_count()} CPUs ({cpu}).",
            "",
            *lines,
            "",
        ]
    )
    (out / "summary.md").write_text(summary)
    print(summary)
    plot(out, results)


def plot(out, results):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot([t for t, _ in r["evals"]], [a for _, a in r["evals"]], label=name)
    ax.set(xlabel="wall time (s)", ylabel=f"test accuracy ({EVAL_IMAGES} images)", title="CNN on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        by_clock = {}
        for row in r["rows"]:
            by_clock.setdefault(row[1], []).append(row[3])
        clocks = sorted(by_clock)
        loss = np.array([np.mean(by_clock[c]) for c in clocks])
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(clocks[: len(smooth)], smooth, label=name)
    ax.set(xlabel="clock", ylabel="training loss (mean over workers, smoothed)", title="CNN on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "loss_vs_clock.png", dpi=110, bbox_inches="tight")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="baseline,sync,ssp3,async", help="comma-separated: baseline, sync, sspN, async")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="per worker; the baseline uses workers x batch")
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--baseline-threads", type=int, default=1, help="torch threads of the baseline (workers use 1 each)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (on the server)")
    p.add_argument("--train-examples", type=int, default=0, help="use only the first N training images (0: all)")
    p.add_argument("--snapshot-every", type=float, default=1.0, help="seconds between parameter snapshots")
    p.add_argument("--target", type=float, default=0.85, help="the accuracy 'time to' is measured to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", default="out/python-cnn")
    p.add_argument("--quick", action="store_true", help="a smoke run: 6,000 images, 1 epoch, sync and async")
    args = p.parse_args(argv)
    if args.quick:
        args.train_examples, args.epochs, args.policies = 6000, 1.0, "sync,async"
        args.snapshot_every = 1.0
    n = args.train_examples or 60000
    args.clocks = int(args.epochs * (n // (args.workers * args.batch)))
    return args


def main(argv=None):
    args = parse(argv)
    _, _, test_x, test_y = load(args.data_dir)
    results = {}
    for name in args.policies.split(","):
        if name == "baseline":
            rows, snaps, secs = run_baseline(args)
        elif name in ("sync", "async"):
            rows, snaps, secs = run_policy(args, name, 0)
        elif name.startswith("ssp"):
            rows, snaps, secs = run_policy(args, "ssp", int(name[3:]))
            name = f"ssp({int(name[3:])})"
        else:
            sys.exit(f"unknown policy {name!r}: use baseline, sync, sspN or async")
        evals, final = evaluate(snaps, test_x, test_y)
        results[name] = {"rows": rows, "evals": evals, "final": final, "seconds": secs}
        print(f"{name}: final accuracy {final:.4f} in {secs:.1f} s", flush=True)
    report(args, results)
    return results


if __name__ == "__main__":
    main()
