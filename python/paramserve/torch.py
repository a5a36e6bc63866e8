"""PyTorch glue: train an ``nn.Module`` on the parameter server.

The server holds each parameter (by its ``named_parameters()`` name) and
applies the optimizer; a worker computes gradients and, once per step,
sends every ``.grad`` and loads the values the server returns into the
parameters in place::

    model = Net()
    with paramserve.Worker(shards, worker_id) as worker:
        opt = paramserve.torch.ServerOptimizer(worker, model, optimizer={"kind": "sgd", "lr": 0.1})
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()          # push grads at clock c, load the values of clock c + 1

Only parameters with ``requires_grad`` are held by the server; buffers
(e.g. BatchNorm's running statistics) stay local to each worker.
"""

from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch

from ._native import Worker

__all__ = [
    "declare_module",
    "step_module",
    "load_values",
    "server_parameters",
    "torch_default_init",
    "ServerOptimizer",
]

InitSpec = Union[None, str, float, Tuple]


def server_parameters(module: torch.nn.Module) -> Iterable[Tuple[str, torch.nn.Parameter]]:
    """The parameters the server holds: those with ``requires_grad``, by name."""
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def torch_default_init(module: torch.nn.Module, seed: int = 0) -> Dict[str, InitSpec]:
    """Per parameter, a seeded server initializer of PyTorch's default
    scale, chosen from the architecture alone, so every worker declares the
    same one whatever its own random initialization was:

    - a parameter whose elements are all equal (a norm layer's weight or
      bias): that constant;
    - an ``nn.Embedding``'s weight: normal(0, 1), as PyTorch's;
    - a layer's ``weight`` of 2 or more dimensions, and that layer's
      ``bias``: uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, which is
      PyTorch's default for linear and conv layers;
    - anything else: uniform in ``[-m, m]``, ``m`` its largest magnitude
      (this one depends on the values: give every worker the same torch
      seed, or pass ``init`` a function).

    Parameter ``i`` (in ``named_parameters()`` order) gets seed ``seed * 1_000_003 + i``.
    """
    specs: Dict[str, InitSpec] = {}
    names = [n for n, _ in server_parameters(module)]
    for prefix, sub in module.named_modules():
        for local, p in sub.named_parameters(recurse=False):
            name = f"{prefix}.{local}" if prefix else local
            if name not in names:
                continue
            param_seed = seed * 1_000_003 + names.index(name)
            flat = p.detach().reshape(-1)
            weight = getattr(sub, "weight", None)
            if flat.numel() == 0 or bool((flat == flat[0]).all()):
                specs[name] = float(flat[0]) if flat.numel() else 0.0
            elif isinstance(sub, torch.nn.Embedding) and local == "weight":
                specs[name] = ("normal", 0.0, 1.0, param_seed)
            elif local in ("weight", "bias") and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                fan_in = int(np.prod(weight.shape[1:]))
                bound = 1.0 / float(np.sqrt(fan_in))
                specs[name] = ("uniform", -bound, bound, param_seed)
            else:
                m = float(flat.abs().max())
                specs[name] = ("uniform", -m, m, param_seed)
    return specs


def declare_module(
    worker: Worker,
    module: torch.nn.Module,
    *,
    optimizer=None,
    policy=None,
    init: Union[str, Callable[[str, torch.Tensor], InitSpec]] = "torch",
    seed: int = 0,
    load: bool = True,
) -> Optional[Dict[str, np.ndarray]]:
    """Declares every parameter of ``module`` on the server (name and shape
    from ``named_parameters()``) and, with ``load``, pulls them and loads
    them into the module (an observer passes ``load=False``).

    ``init`` is ``"torch"`` (:func:`torch_default_init`, seeded by
    ``seed``), ``"zeros"``, or a function ``(name, param) -> init``
    returning any initializer :meth:`Worker.declare` accepts. ``optimizer``
    and ``policy`` are passed to every declaration (``None``: the
    cluster's defaults). Every worker must declare the same initializer,
    optimizer and policy. Returns the pulled values (``None`` without ``load``).
    """
    defaults = torch_default_init(module, seed) if init == "torch" else {}
    for name, p in server_parameters(module):
        if callable(init):
            spec = init(name, p)
        elif init == "torch":
            spec = defaults[name]
        elif init == "zeros":
            spec = None
        else:
            raise ValueError(f"init: expected 'torch', 'zeros' or a function, got {init!r}")
        worker.declare(name, tuple(p.shape), init=spec, optimizer=optimizer, policy=policy)
    if not load:
        return None
    values = worker.pull()
    load_values(module, values)
    return values


def load_values(module: torch.nn.Module, values: Dict[str, np.ndarray]) -> None:
    """Copies ``values`` into the parameters of the same names, in place
    (the ``Parameter`` objects, and any optimizer or hook holding them,
    stay the same)."""
    with torch.no_grad():
        for name, p in server_parameters(module):
            p.copy_(torch.from_numpy(values[name]))


def step_module(worker: Worker, module: torch.nn.Module) -> Dict[str, np.ndarray]:
    """One step of ``module`` on the server: sends every parameter's
    ``.grad`` (zeros for a parameter that got none) at the worker's clock,
    and loads the values of the next clock into the parameters in place.
    The gradients are read in place, without a copy. Returns the values."""
    grads = {}
    for name, p in server_parameters(module):
        g = p.grad
        if g is None:
            g = torch.zeros_like(p)
        elif not g.is_contiguous():
            g = g.contiguous()
        grads[name] = g
    values = worker.step(grads)
    load_values(module, values)
    return values


class ServerOptimizer:
    """An optimizer-shaped handle: ``zero_grad()`` and ``step()``, so that a
    PyTorch training loop changes in two lines (construct this instead of a
    ``torch.optim`` optimizer; keep ``zero_grad``/``backward``/``step``).

    Construction declares the module's parameters and loads the server's
    initial values (:func:`declare_module`, with the same keyword
    arguments). The optimizer itself runs on the server.
    """

    def __init__(self, worker: Worker, module: torch.nn.Module, **declare_kwargs):
        self.worker = worker
        self.module = module
        declare_module(worker, module, **declare_kwargs)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clears every parameter's gradient (zeroes it, or sets it to ``None``)."""
        for _, p in server_parameters(self.module):
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Runs ``closure`` (if given, for its loss), then :func:`step_module`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step_module(self.worker, self.module)
        return loss
