"""Capture layer activations during a forward pass, and make them differentiable leaves.

With ``grad=True`` the first tapped layer to run hands the rest of the network a fresh leaf tensor
(``A.detach().requires_grad_()``) and switches autograd on from there. Everything before the layer
runs without a graph, and ``torch.autograd.grad(score, tap.activations)`` back-propagates only
through the layers above it: never into the network's early layers, never into parameters.

The network downstream receives a copy of the captured tensor, so an in-place operation after the
layer (DenseNet's ``relu(norm5(x), inplace=True)``) cannot overwrite what was captured.
Hooks are removed on exit, also when the forward pass raises. If a layer runs several times in one
forward pass, the last call is kept, and ``calls`` counts them. With ``stop=True`` the forward pass
ends as soon as every tapped layer has run once (the rest of the network never runs; the ``with``
block ends there quietly): for a reader of activations that needs no output.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class _LayersReached(Exception):
    """Raised by a stopping tap once every tapped layer has run; its ``with`` block swallows it."""


class Tap:
    """Context manager that records the outputs of ``modules`` (in the given order)."""

    def __init__(self, modules: Sequence[nn.Module], grad: bool = False, stop: bool = False):
        self.modules = list(modules)
        self.grad = grad
        self.stop = stop
        self.activations: list[Tensor | None] = [None] * len(self.modules)
        self.calls = [0] * len(self.modules)
        self._handles: list = []
        self._graph_started = False

    def __enter__(self) -> Tap:
        for index, module in enumerate(self.modules):
            self._handles.append(
                module.register_forward_hook(lambda m, inputs, output, index=index: self._capture(index, output))
            )
        return self

    def __exit__(self, kind, error, trace) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return kind is _LayersReached

    def _capture(self, index: int, output) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"the tapped layer returns {type(output).__name__}, not a tensor; tap a layer that "
                "returns a tensor (e.g. one of its sub-modules)"
            )
        self.calls[index] += 1
        if not self.grad:
            self.activations[index] = output.detach()
            if self.stop and all(a is not None for a in self.activations):
                raise _LayersReached
            return output.clone()
        if not self._graph_started:
            self._graph_started = True
            output = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        self.activations[index] = output
        return output.clone()

    def captured(self) -> list[Tensor]:
        missing = [type(self.modules[i]).__name__ for i, a in enumerate(self.activations) if a is None]
        if missing:
            raise RuntimeError(
                f"the tapped layer(s) {', '.join(missing)} did not run in the forward pass; "
                "choose a layer the model actually calls"
            )
        return self.activations  # type: ignore[return-value]


@contextmanager
def preserved(model: nn.Module):
    """Give the model back exactly as it was: train/eval modes, ``requires_grad`` flags, hooks, and
    the buffers of modules in training mode (BatchNorm's running statistics move at every forward
    pass in training mode; they are copied before and written back after).

    Any hook registered inside the block is removed on exit, also when the block raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for m in model.modules() if m.training for b in m.buffers(recurse=False)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    hooks = [(m, name, set(getattr(m, name, {}))) for m in model.modules() for name in hook_dicts]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, name, keys in hooks:
            table = getattr(module, name, None)
            if table is not None:
                for key in [k for k in table if k not in keys]:
                    del table[key]
