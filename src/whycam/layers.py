"""Find the layer to explain, and read its output as a (B, K, h, w) activation map.

A layer is named by a dotted path (``"layer4"``, ``"features.28"``, ``"blocks.11"``), given as a
module of the model, or chosen automatically (``None``): the last transformer block of a ViT, else
the last module whose output has a spatial grid larger than 1x1. A ViT block's tokens (B, N, D)
become a (B, D, h, w) grid, with the grid and the number of prefix tokens (class, distillation,
register tokens) inferred from the model and the input size, never assumed to be 14x14.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UsageError

LayerSpec = str | nn.Module | None

_RESAMPLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Identity, nn.Dropout)


class LayerNotFoundError(UsageError):
    """A layer name that the model does not have."""


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for a layer given by name or as a module of ``model``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerNotFoundError(
            f"the module {type(layer).__name__} is not part of the model; pass one of model's own "
            "modules or its dotted name"
        )
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name, a module or None, not {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if n.startswith(layer.split(".")[0])][:5] or names[-5:]
    raise LayerNotFoundError(f"the model has no layer {layer!r}; closest names: {', '.join(close)}")


def resolve_layers(
    model: nn.Module, layers: LayerSpec | Sequence[str | nn.Module], images: Tensor
) -> list[tuple[str, nn.Module]]:
    """Resolve one layer, a list of layers, or ``None`` (automatic) to ``(name, module)`` pairs."""
    if layers is None:
        return [resolve_layer(model, auto_layer(model, images))]
    if isinstance(layers, (str, nn.Module)):
        return [resolve_layer(model, layers)]
    resolved = [resolve_layer(model, layer) for layer in layers]
    if not resolved:
        raise ValueError("the list of layers is empty; pass at least one layer, or None to choose automatically")
    return resolved


def auto_layer(model: nn.Module, images: Tensor) -> str:
    """The layer a CAM explains by default, found by one forward pass on ``images[:1]``.

    A ViT (token outputs that form a grid) gives its last transformer block (the last module whose
    parent holds several siblings of its own type), read at the block's first LayerNorm: the tokens
    the block's attention reads, which reach a class-token head (the block's own output does not).
    A CNN gives the last module, in execution order, whose output is a (B, K, h, w) map with
    h*w > 1, skipping adaptive pooling that only resamples.
    """
    parents = {}
    for module in model.modules():
        for child in module.children():
            parents[id(child)] = module
    fired: list[tuple[str, nn.Module, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(
                module.register_forward_hook(
                    lambda m, i, o, name=name: fired.append((name, m, o)) if isinstance(o, Tensor) else None
                )
            )
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    height, width = images.shape[-2:]
    spatial = [
        i
        for i, (_, m, o) in enumerate(fired)
        if o.dim() == 4 and o.shape[-1] * o.shape[-2] > 1 and not isinstance(m, _RESAMPLING)
    ]
    blocks = []
    for i, (_, module, out) in enumerate(fired):
        parent = parents.get(id(module))
        if out.dim() != 3 or parent is None or not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        if sum(type(c) is type(module) for c in parent.children()) < 2:
            continue
        if token_layout(model, out.shape[1], (height, width), strict=False) is not None:
            blocks.append(i)
    if blocks and (not spatial or blocks[-1] > spatial[-1]):
        name, block, _ = fired[blocks[-1]]
        norm = next((n for n, m in block.named_modules() if isinstance(m, nn.LayerNorm)), None)
        return f"{name}.{norm}" if norm else name
    if spatial:
        return fired[spatial[-1]][0]
    raise LayerNotFoundError(
        "could not choose a layer automatically: no module returns a spatial map or a grid of tokens; "
        "pass layer='<dotted name>' (see model.named_modules())"
    )


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT's N tokens split: ``prefix`` leading tokens, then a ``grid`` of patch tokens."""

    prefix: int
    grid: tuple[int, int]


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of a ViT: the first Conv2d whose kernel equals its stride."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.kernel_size[0] > 1:
            return module.kernel_size
    return None


def token_layout(model: nn.Module, n_tokens: int, input_hw: tuple[int, int], strict: bool = True) -> TokenLayout | None:
    """Infer the prefix-token count and patch grid of ``n_tokens`` tokens for an input of ``input_hw``.

    Uses the model's patch embedding (a Conv2d with kernel == stride) and timm's
    ``num_prefix_tokens`` where present; otherwise the smallest prefix (0..8) whose remainder
    tiles the input's aspect ratio.
    """
    height, width = input_hw
    patch = _patch_size(model)
    prefix = getattr(model, "num_prefix_tokens", None)
    if patch is not None:
        grid = (height // patch[0], width // patch[1])
        rest = n_tokens - grid[0] * grid[1]
        if 0 <= rest <= 16 and (prefix is None or prefix == rest):
            return TokenLayout(rest, grid)
    for pre in [prefix] if prefix is not None else range(9):
        n = n_tokens - pre
        for gh in range(1, n + 1):
            if n % gh == 0 and gh * width == (n // gh) * height:
                return TokenLayout(pre, (gh, n // gh))
    if strict:
        raise ValueError(
            f"cannot read {n_tokens} tokens as a patch grid for a {height}x{width} input; pass "
            "reshape=<callable turning (B, N, D) into (B, D, h, w)>"
        )
    return None


def to_spatial(activation: Tensor, model: nn.Module, input_hw: tuple[int, int]) -> Tensor:
    """Return a layer's output as (B, K, h, w): a conv map as is, ViT tokens as a grid of patch tokens."""
    if activation.dim() == 4:
        return activation
    if activation.dim() == 3:
        layout = token_layout(model, activation.shape[1], input_hw)
        tokens = activation[:, layout.prefix :, :]
        return tokens.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], *layout.grid)
    raise ValueError(
        f"the layer's output has shape {tuple(activation.shape)}; whycam reads (B, K, h, w) maps and "
        "(B, N, D) tokens. Pass reshape=<callable returning (B, K, h, w)>"
    )


def spatial_layers(model: nn.Module, images: Tensor) -> list[str]:
    """The modules, in execution order, whose output on ``images[:1]`` is a map a CAM can read: a
    (B, K, h, w) map with h*w > 1 (not a pure resampling) or ViT tokens that tile the input."""
    outputs: dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o))
        for name, module in model.named_modules()
        if name and not isinstance(module, _RESAMPLING)
    ]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    height, width = images.shape[-2:]
    return [
        name
        for name, out in outputs.items()
        if isinstance(out, Tensor)
        and out.shape[:1] == (1,)
        and (
            (out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1)
            or (out.dim() == 3 and token_layout(model, out.shape[1], (height, width), strict=False) is not None)
        )
    ]
