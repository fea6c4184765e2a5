"""Find the layer to explain, and read its output as a channels-first activation map (B, K, *grid).

A layer is named by a dotted path (``"layer4"``, ``"features.28"``, ``"blocks.11"``), given as a
module of the model, or chosen automatically (``None``): the last transformer block (ViT, Swin), else
the last module whose output has a spatial grid larger than 1x1. The automatic layer is always an
activation that depends on the input batch, never a parameter or buffer read by a module.

Layouts are read from the output's shape, the model and the input size, never guessed:

- channels-first maps (B, K, h, w), or (B, K, d, h, w) for volumes, are used as they are;
- channels-last maps (B, h, w, C) (timm/torchvision Swin, ConvNeXt blocks in NHWC, MaxViT) are permuted;
- token sequences (B, N, D) drop their prefix tokens (class, distillation, register tokens: counted from
  the model) and fold the rest into the patch grid of the input.

A grid is "of the input" when each of its sides is the input's side divided by one common stride (up
to rounding and padding). A shape that fits both channel orders, or several token splits, is refused
with the ``reshape=`` fix unless the layer's own type settles it.
"""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UsageError

LayerSpec = str | nn.Module | None

_RESAMPLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Identity, nn.Dropout)


class LayerNotFoundError(UsageError):
    """A layer name that the model does not have."""


class LayoutError(ValueError):
    """A layer output whose layout whycam cannot read for sure; the message names the ``reshape=`` fix."""


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
    """The layer a CAM explains by default, found by one forward pass on two images.

    The probe is ``images[:1]`` and a perturbed copy of it: only module outputs with one row per image
    whose rows differ count (a parameter, a buffer, a position-bias table or a detector's per-box
    features never do), from modules that run once per pass (not a head shared across levels). A
    transformer (token outputs, or channels-last maps, of repeated blocks) gives its last block, read
    at the block's first LayerNorm: the tokens the block's attention reads, which reach a class-token
    head (the block's own output does not). A CNN gives the last module, in
    execution order, whose output is a channels-first map with a grid larger than 1x1, skipping
    adaptive pooling that only resamples.
    """
    fired = _probe(model, images)
    size = tuple(images.shape[2:])
    calls: dict[int, int] = {}
    for _, module, _ in fired:
        calls[id(module)] = calls.get(id(module), 0) + 1
    live = [  # a module run several times per pass (a head shared by a detector's levels) has no one map
        (i, name, m, o) for i, (name, m, o) in enumerate(fired) if _depends_on_batch(o) and calls[id(m)] == 1
    ]
    orders = _orders(fired)
    spatial = [
        i
        for i, _, m, o in live
        if o.dim() == len(size) + 2
        and o.shape[2:].numel() > 1
        and not isinstance(m, _RESAMPLING)
        and _settled(_read(o.shape, model, size, m, strict=False), orders[i]) == "channels_first"
    ]
    blocks = _blocks(model, fired, live, orders, size)
    if blocks and (not spatial or blocks[-1] > spatial[-1]):
        name, block, _ = fired[blocks[-1]]
        norm = next((n for n, m in block.named_modules() if isinstance(m, nn.LayerNorm)), None)
        return f"{name}.{norm}" if norm else name
    if spatial:
        return fired[spatial[-1]][0]
    raise LayerNotFoundError(
        "could not choose a layer automatically: no module returns a spatial map or a grid of tokens for "
        "each image; pass layer='<dotted name>' (see model.named_modules())"
    )


def _probe(model: nn.Module, images: Tensor) -> list[tuple[str, nn.Module, Tensor]]:
    """``(name, module, output)`` of every module run on ``images[:1]`` and a perturbed copy of it."""
    fired: list[tuple[str, nn.Module, Tensor]] = []

    def record(name: str, module: nn.Module, output) -> None:
        tensor = first_tensor(output)
        if tensor is not None:
            fired.append((name, module, tensor))

    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, m, o))
        for name, module in model.named_modules()
        if name
    ]
    generator = torch.Generator(device=images.device).manual_seed(0)
    first = images[:1].detach()
    noise = torch.randn(first.shape, generator=generator, device=images.device, dtype=first.dtype)
    probe = torch.cat([first, first + 0.5 * first.std().clamp(min=1e-3) * noise])
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return fired


def _blocks(model: nn.Module, fired: list, live: list, orders: list, size: tuple[int, ...]) -> list[int]:
    """Indices into ``fired`` of the innermost repeated transformer blocks whose outputs are tokens or
    channels-last maps (a stage of blocks, Swin's, is itself repeated: its blocks are what is read)."""
    parents, counts = {}, {}
    for module in model.modules():
        counts[type(module)] = counts.get(type(module), 0) + 1
        for child in module.children():
            parents[id(child)] = module
    blocks = []
    for i, _, module, out in live:
        parent = parents.get(id(module))
        if parent is None or not isinstance(parent, (nn.Sequential, nn.ModuleList)) or counts[type(module)] < 2:
            continue
        if not any(module.children()):  # a block holds layers; a repeated Linear or Dropout is no block
            continue
        if _settled(_read(out.shape, model, size, module, strict=False), orders[i]) in ("tokens", "channels_last"):
            blocks.append(i)
    held = {id(fired[i][1]) for i in blocks}
    return [i for i in blocks if not any(id(m) in held for m in list(fired[i][1].modules())[1:])]


def _orders(fired: list[tuple[str, nn.Module, Tensor]]) -> list[str | None]:
    """For each recorded output, the channel order of the last layout-telling module that produced an
    output of the same shape up to it (see ``_traced_hint``)."""
    last: dict[tuple[int, ...], str] = {}
    orders = []
    for _, module, output in fired:
        hint = _hint(module, output.shape) if not any(module.children()) else None
        if hint is not None:
            last[tuple(output.shape)] = hint
        orders.append(last.get(tuple(output.shape)))
    return orders


def _settled(kind: str | None, order: str | None) -> str | None:
    """An ambiguous channel order settled by the traced one."""
    return order if kind == "ambiguous" else kind


def first_tensor(output: object) -> Tensor | None:
    """A module's output tensor: itself, or the first tensor of a tuple/list (Hugging Face blocks)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _depends_on_batch(output: Tensor) -> bool:
    """Whether a module's output on the two-image probe has one row per image, and the rows differ."""
    return output.dim() >= 3 and output.shape[0] == 2 and not torch.equal(output[0], output[1])


def grid_like(grid: Sequence[int], size: Sequence[int], strides: Sequence[int] | None = None) -> bool:
    """Whether ``grid`` is the input ``size`` divided by one integer stride s (among ``strides`` if
    given), every side rounded the same way (all floor(S / s) or all ceil(S / s)), or multiplied by one
    integer (an upsampled map). A volume's depth (a clip's time, a scan's slices) may be divided by its
    own stride t <= s (mc3_18, X3D, (1, 2, 2) pooling). Large grids (every side >= 16) may instead keep
    the input's aspect within 5%: a detector resizes its input before its backbone."""
    grid, size = tuple(grid), tuple(size)
    if len(grid) != len(size) or min(grid) < 1:
        return False
    for s in strides or range(1, max(size) + 1):
        if _divided(grid, size, s):
            return True
        if strides is None and len(size) == 3 and _divided(grid[1:], size[1:], s):
            if any(_divided(grid[:1], size[:1], t) for t in range(1, s)):
                return True
    if strides is None and all(g % n == 0 and g // n == grid[0] // size[0] for g, n in zip(grid, size, strict=True)):
        return True
    ratios = [g / n for g, n in zip(grid, size, strict=True)]
    return strides is None and min(grid) >= 16 and max(ratios) <= 1.05 * min(ratios)


def _divided(grid: tuple[int, ...], size: tuple[int, ...], s: int) -> bool:
    """Whether ``grid`` is ``size`` divided by s, every side rounded up, or every side rounded down."""
    return grid == tuple(-(-n // s) for n in size) or grid == tuple(n // s for n in size)


_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
)


def _hint(module: nn.Module | None, shape: Sequence[int]) -> str | None:
    """The channel order a layer's own type implies: a linear layer or a plain LayerNorm acts on the
    last axis (channels last); a convolution, batch/group/instance norm or pooling on the second."""
    if type(module) is nn.Linear or (type(module) is nn.LayerNorm and tuple(module.normalized_shape) == (shape[-1],)):
        return "channels_last"
    if isinstance(module, _CHANNELS_FIRST):
        return "channels_first"
    return None


class _Reached(Exception):
    """Ends a tracing forward pass once the layer has run."""


def _traced_hint(model: nn.Module, module: nn.Module, images: Tensor) -> str | None:
    """The channel order of the last layout-telling leaf module (convolution, norm, linear, pooling)
    that ran up to ``module`` with an output of ``module``'s own shape: an element-wise layer (ReLU,
    dropout) or a block keeps the order of what it transforms. One forward pass on ``images[:1]``."""
    hints: list[str] = []
    found: list[str | None] = []

    def leaf(m: nn.Module, inputs, output) -> None:
        if isinstance(output, Tensor) and _hint(m, output.shape) is not None:
            hints.append((tuple(output.shape), _hint(m, output.shape)))

    def reached(m: nn.Module, inputs, output) -> None:
        shape = tuple(first_tensor(output).shape) if first_tensor(output) is not None else None
        found.append(next((h for s, h in reversed(hints) if s == shape), None))
        raise _Reached

    handles = [m.register_forward_hook(leaf) for m in model.modules() if not any(m.children())]
    handles.append(module.register_forward_hook(reached))
    try:
        with torch.no_grad():
            model(images[:1])
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _read(
    shape: Sequence[int],
    model: nn.Module,
    size: tuple[int, ...],
    module: nn.Module | None,
    strict: bool,
    images: Tensor | None = None,
):
    """The layout kind of an output of ``shape``, or None (strict: a LayoutError) when unreadable."""
    shape = tuple(shape)
    if len(shape) == 3 and len(size) == 2:
        return "tokens" if token_layout(model, shape[1], size, strict=strict) is not None else None
    if len(shape) == len(size) + 2:
        first, last = grid_like(shape[2:], size), grid_like(shape[1:-1], size)
        if first and last:
            hint = _hint(module, shape)
            if hint is None and module is not None and images is not None:
                hint = _traced_hint(model, module, images)
            if hint is None and not strict:
                return "ambiguous"
            if hint is None:
                raise LayoutError(
                    f"the layer's output {shape} reads both as channels-first (B, K, *grid) and channels-last "
                    f"(B, *grid, C) for a {'x'.join(map(str, size))} input; pass reshape=<callable returning "
                    "(B, K, *grid)>, e.g. reshape=lambda a: a.permute(0, 3, 1, 2) for channels-last"
                )
            return hint
        if first or last:
            return "channels_first" if first else "channels_last"
    if strict:
        raise LayoutError(
            f"the layer's output has shape {shape}, which is neither a map (B, K, *grid), a channels-last map "
            f"(B, *grid, C) nor tokens (B, N, D) whose grid fits the {'x'.join(map(str, size))} input; pass "
            "reshape=<callable returning (B, K, *grid)>, or explain another layer"
        )
    return None


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT's N tokens split: ``prefix`` leading tokens, then a ``grid`` of patch tokens."""

    prefix: int
    grid: tuple[int, int]


_PREFIX_TOKENS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token", "register_tokens")


_TOKEN_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    """The patch size of a ViT: the first Conv2d whose kernel equals its stride."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.kernel_size[0] > 1:
            return module.kernel_size
    return None


def _token_facts(model: nn.Module) -> tuple[tuple[int, int] | None, int | None]:
    """``(patch size, prefix tokens)`` of a model, read once per model."""
    if model not in _TOKEN_FACTS:
        _TOKEN_FACTS[model] = (_patch_size(model), prefix_tokens(model))
    return _TOKEN_FACTS[model]


def prefix_tokens(model: nn.Module) -> int | None:
    """How many tokens a transformer puts before its patch tokens: timm's ``num_prefix_tokens``, else
    the tokens of its class / distillation / register token parameters (CLIP's ``class_embedding`` is
    one); 0 for a patch-embedding model with none (Swin); None when the model says nothing."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    count = None
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _PREFIX_TOKENS:
            count = (count or 0) + (parameter.shape[-2] if parameter.dim() >= 2 else 1)
        elif leaf == "class_embedding":
            count = (count or 0) + 1
    if count is None and _patch_size(model) is not None:
        return 0
    return count


def token_layout(model: nn.Module, n_tokens: int, input_hw: tuple[int, int], strict: bool = True) -> TokenLayout | None:
    """Split ``n_tokens`` tokens into prefix tokens and a patch grid of an ``input_hw`` input.

    With a patch embedding (a Conv2d with kernel == stride), the first-level grid is input // patch,
    after the model's own prefix tokens (or none), and a later stage's grid has a stride of the patch
    times a power of two (Swin's patch merging). Every split into the model's prefix tokens (any of
    0..16 if it declares none) and such a grid is a candidate; exactly one must remain.
    """
    height, width = input_hw
    patch, prefix = _token_facts(model)
    if patch is not None:
        grid = (height // patch[0], width // patch[1])
        rest = n_tokens - grid[0] * grid[1]
        if rest == 0 or (rest == prefix if prefix is not None else 0 <= rest <= 16):
            return TokenLayout(rest, grid)
    candidates = []
    for pre in [prefix] if prefix is not None else range(17):
        n = n_tokens - pre
        candidates += [TokenLayout(pre, (gh, n // gh)) for gh in range(1, n + 1) if n % gh == 0]
    strides = None if patch is None else [patch[0] * 2**k for k in range(8)] if patch[0] == patch[1] else None
    candidates = [c for c in candidates if grid_like(c.grid, input_hw, strides)]
    if len(candidates) == 1:
        return candidates[0]
    if strict:
        found = "; ".join(f"{c.prefix} prefix + {c.grid[0]}x{c.grid[1]}" for c in candidates) or "none fits"
        raise LayoutError(
            f"cannot read {n_tokens} tokens as prefix tokens + a patch grid of a {height}x{width} input "
            f"({found}); pass reshape=<callable turning (B, N, D) into (B, D, h, w)>"
        )
    return None


@dataclass(frozen=True)
class Layout:
    """How a layer's output becomes (B, K, *grid): ``kind`` is channels_first, channels_last or tokens."""

    kind: str
    tokens: TokenLayout | None = None

    def apply(self, activation: Tensor) -> Tensor:
        if self.kind == "channels_first":
            return activation
        if self.kind == "channels_last":
            return activation.movedim(-1, 1)
        patches = activation[:, self.tokens.prefix :, :]
        return patches.transpose(1, 2).reshape(activation.shape[0], activation.shape[2], *self.tokens.grid)


def read_layout(
    shape: Sequence[int],
    model: nn.Module,
    input_size: Sequence[int],
    module: nn.Module | None = None,
    images: Tensor | None = None,
) -> Layout:
    """The layout of ``module``'s output of ``shape`` for an input of spatial ``input_size``, or a
    LayoutError. A shape that fits both channel orders is settled by the layer's type, else (given
    ``images``) by the last layout-telling module that ran before it with the same output shape."""
    size = tuple(input_size)
    kind = _read(shape, model, size, module, strict=True, images=images)
    tokens = token_layout(model, shape[1], size) if kind == "tokens" else None
    return Layout(kind, tokens)


def to_spatial(
    activation: Tensor,
    model: nn.Module,
    input_size: Sequence[int],
    module: nn.Module | None = None,
    images: Tensor | None = None,
) -> Tensor:
    """A layer's output as a channels-first map (B, K, *grid): see the module's docstring for the layouts."""
    return read_layout(activation.shape, model, input_size, module, images).apply(activation)


def spatial_layers(model: nn.Module, images: Tensor) -> list[str]:
    """The modules, in execution order, whose output on ``images[:1]`` is a map a CAM can read: one
    row per image, a layout whycam reads (channels-first, channels-last or tokens) and a grid of
    more than one cell, not a pure resampling."""
    outputs: dict[str, tuple[nn.Module, Tensor]] = {}

    def record(name: str, module: nn.Module, output: object) -> None:  # returns None: the output is kept
        outputs.setdefault(name, (module, output))

    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, m, o))
        for name, module in model.named_modules()
        if name and not isinstance(module, _RESAMPLING)
    ]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, (module, out) in outputs.items() if _readable(out, model, images, module)]


def _readable(output: object, model: nn.Module, images: Tensor, module: nn.Module) -> bool:
    if not isinstance(output, Tensor) or output.dim() < 3 or output.shape[0] != 1:
        return False
    try:
        grid = read_layout(output.shape, model, images.shape[2:], module).apply(output).shape[2:]
    except LayoutError:
        return False
    return math.prod(grid) > 1
