"""Capture layer activations during a forward pass, and make them differentiable leaves.

With ``grad=True`` the first tapped layer to run hands the rest of the network a fresh leaf tensor
(``A.detach().requires_grad_()``) and switches autograd on from there. Everything before the layer
runs without a graph, and ``torch.autograd.grad(score, tap.activations)`` back-propagates only
through the layers above it: never into the network's early layers, never into parameters.

The network downstream receives a copy of the captured tensor, so an in-place operation after the
layer (DenseNet's ``relu(norm5(x), inplace=True)``) cannot overwrite what was captured.
A layer returning a tuple (a Hugging Face block) is read at its first tensor. whycam's hooks are
removed on exit by their handles, also when the forward pass raises. If a layer runs several times in one
forward pass, the last call is kept, and ``calls`` counts them. With ``stop=True`` the forward pass
ends as soon as every tapped layer has run once (the rest of the network never runs; the ``with``
block ends there quietly): for a reader of activations that needs no output.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .layers import first_tensor


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

    def _capture(self, index: int, output):
        tensor = first_tensor(output)
        if tensor is None:
            raise TypeError(
                f"the tapped layer returns {type(output).__name__}, not a tensor; tap a layer that "
                "returns a tensor (e.g. one of its sub-modules)"
            )
        self.calls[index] += 1
        if not self.grad:
            self.activations[index] = tensor.detach()
            if self.stop and all(a is not None for a in self.activations):
                raise _LayersReached
            return _replace_first(output, tensor.clone())
        if not self._graph_started:
            self._graph_started = True
            tensor = tensor.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        self.activations[index] = tensor
        return _replace_first(output, tensor.clone())

    def captured(self) -> list[Tensor]:
        missing = [type(self.modules[i]).__name__ for i, a in enumerate(self.activations) if a is None]
        if missing:
            raise RuntimeError(
                f"the tapped layer(s) {', '.join(missing)} did not run in the forward pass; "
                "choose a layer the model actually calls"
            )
        return self.activations  # type: ignore[return-value]


def _replace_first(output, tensor: Tensor):
    """``output`` with its (first) tensor replaced by ``tensor``, in the same container type."""
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


@contextmanager
def preserved(model: nn.Module):
    """Give the model back exactly as it was: train/eval modes, ``requires_grad`` flags, hooks, and
    the buffers of modules in training mode (BatchNorm's running statistics move at every forward
    pass in training mode; they are copied before and written back after).

    Hooks are not touched: whycam removes its own by their handles, and a hook the model or its library
    registers during the call (transformers adds output-capturing hooks at a model's first forward
    pass) is the model's own and stays.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for m in model.modules() if m.training for b in m.buffers(recurse=False)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
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
