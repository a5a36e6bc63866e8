"""The PyTorch glue: a module's parameters declared by name, one call per
step, and an optimizer-shaped wrapper; then a short real training run."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import paramserve  # noqa: E402
import paramserve.torch as pst  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 3)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def test_declare_module_by_name_with_pytorchs_default_scale(make_cluster):
    cluster = make_cluster(shards=2, workers=2, policy="sync")
    torch.manual_seed(1)
    a = Small()
    torch.manual_seed(2)
    b = Small()  # other random values, same architecture
    with paramserve.Worker(cluster.shards, 0) as w0, paramserve.Worker(cluster.shards, 1) as w1:
        pst.declare_module(w0, a, seed=3)
        pst.declare_module(w1, b, seed=3)  # the same declarations: no conflict
        assert set(w0.shapes) == {"fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"}
        assert w0.shapes["fc1.weight"] == (5, 6)
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.equal(pa, pb), name  # both loaded the server's values
        assert torch.equal(a.norm.weight, torch.ones(5)) and torch.equal(a.norm.bias, torch.zeros(5))
        bound = 1 / np.sqrt(6)
        assert a.fc1.weight.abs().max() <= bound and a.fc1.bias.abs().max() <= bound
        assert a.fc1.weight.std() > bound / 4
        assert torch.equal(a.frozen, torch.ones(2))  # not held by the server


def test_one_worker_sync_equals_local_sgd(make_cluster):
    """The server's SGD on the pushed .grads matches torch.optim.SGD step for step."""
    cluster = make_cluster(shards=2, workers=1, policy="sync", optimizer={"kind": "sgd", "lr": 0.1})
    torch.manual_seed(0)
    remote, local = Small(), Small()
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(5)]
    with paramserve.Worker(cluster.shards, 0) as w:
        pst.declare_module(w, remote)
        local.load_state_dict(remote.state_dict())
        opt = torch.optim.SGD(local.parameters(), lr=0.1)
        params_before = [p for p in remote.parameters()]
        for x, y in data:
            remote.zero_grad()
            F.cross_entropy(remote(x), y).backward()
            pst.step_module(w, remote)
            opt.zero_grad()
            F.cross_entropy(local(x), y).backward()
            opt.step()
            for (name, pr), pl in zip(remote.named_parameters(), local.parameters()):
                torch.testing.assert_close(pr, pl, atol=1e-6, rtol=1e-5, msg=name)
        assert w.clock == len(data)
        # Loaded in place: the same Parameter objects.
        assert all(p is q for p, q in zip(params_before, remote.parameters()))


def test_server_optimizer_is_a_two_line_change(make_cluster):
    cluster = make_cluster(shards=1, workers=1, policy="async", optimizer={"kind": "adam", "lr": 0.05})
    torch.manual_seed(0)
    model = Small()
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    with paramserve.Worker(cluster.shards, 0) as w:
        opt = pst.ServerOptimizer(w, model)  # instead of torch.optim.Adam(model.parameters())
        losses = []
        for _ in range(60):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        assert float(opt.step(closure)) == pytest.approx(losses[-1], rel=0.5)
        opt.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in model.parameters())
        opt.step()  # no gradients: zeros are sent, the values stay
        assert w.clock == 62
    assert losses[-1] < 0.5 * losses[0], losses


def test_short_cnn_run_learns(tmp_path, monkeypatch):
    """The example, cut short: 4 worker processes on an embedded cluster, sync and async."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # also the spawned workers' path
    import fashion_mnist_cnn as example

    results = example.main(["--quick", "--out", str(tmp_path)])
    for policy in ("sync", "async"):
        r = results[policy]
        assert r["final"] > 0.65, (policy, r["final"])  # chance is 0.10
        assert r["evals"][-1][1] > r["evals"][0][1] + 0.3, (policy, r["evals"])
    for f in ("steps.csv", "evals.csv", "summary.md"):
        assert (tmp_path / f).stat().st_size > 0
