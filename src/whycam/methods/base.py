"""The contract every explainer keeps, and the registry that offers them by name.

``Explainer(model, ...)(images, target=None)`` maps (B, C, H, W) images to (B, H, W) float32 maps on
the images' device, and (B, C, D, H, W) volumes or clips to (B, D, H, W) maps: the raw signed map,
ReLU, per-image min-max (a constant map becomes zeros, never NaN), bilinear (trilinear) upsampling to
the input size, and min-max again to [0, 1]. Every map is checked to have one row per image.
``raw=True`` returns the signed map at the method's own resolution instead. The model comes back
exactly as it was (modes, ``requires_grad`` flags, its own hooks), also when the call raises.

``CAMExplainer`` is the base of every method of the form ``M = sum_k w_k A_k`` over a layer's K
activation maps A_k: a subclass supplies only ``weights``. Given several layers, each layer's map is
ReLU-ed, upsampled and min-max normalised, the maps are averaged, and the mean is min-max normalised
again (the fusion rule of pytorch-grad-cam); ``per_layer`` returns the maps one by one.

Evidence against (the counterfactual explanations of the Grad-CAM paper): a CAM method's ``sign``
says which part of its signed map M is shown. ``"positive"`` (the default): ReLU(M), min-max to
[0, 1]. ``"negative"``: ReLU(-M), min-max to [0, 1], the evidence against the target. ``"both"``: M
upsampled and divided by max |M| per image, in [-1, 1] with 0 kept at 0.
Methods whose weights are never negative (Grad-CAM++, LayerCAM, Score-CAM) on post-ReLU
activations find no evidence against: their negative map is 0.

After a call, ``stride_`` holds the map's resolution in input pixels per map cell, (rows, columns),
of the coarsest layer explained ((1.0, 1.0) for maps computed at input resolution): details finer
than that cannot be localised by the map.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import LayerSpec, Layout, read_layout, resolve_layers
from ..taps import Tap, preserved
from ..targets import OutputSelector, Target, select_output, target_scores

_REGISTRY: dict[str, type[Explainer]] = {}
T = TypeVar("T")
SIGNS = ("positive", "negative", "both")


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: offer an explainer under ``cls.name`` to the CLI, reports and benchmarks."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two explainers are registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def methods() -> dict[str, type[Explainer]]:
    """Every registered explainer, by name (``"gradcam"``, ``"scorecam"``, ``"diffcam"``, ...)."""
    from .. import methods as _families  # noqa: F401, PLC0415 (the families import this module; importing them registers them)

    return dict(sorted(_REGISTRY.items()))


def positive_int(value: int, what: str) -> int:
    """``value``, refused unless it is an integer >= 1 (batch sizes, steps, samples, masks)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def batches(total: int, batch_size: int) -> Iterator[Tensor]:
    """Consecutive index ranges of at most ``batch_size`` rows covering ``range(total)``."""
    for start in range(0, total, batch_size):
        yield torch.arange(start, min(start + batch_size, total))


def grid_dims(maps: Tensor) -> tuple[int, ...]:
    """The grid axes of a channels-first (B, K, *grid) tensor: (2, 3), or (2, 3, 4) for volumes."""
    return tuple(range(2, maps.dim()))


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max of (B, *grid) maps to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    low = flat.min(1).values.view(shape)
    span = flat.max(1).values.view(shape) - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def normalize_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """ReLU, per-image min-max, bilinear (trilinear for volumes) upsampling to ``size``, min-max again.

    The first min-max happens at the map's own resolution, so a constant map is zeros before any
    interpolation can turn rounding noise into a pattern."""
    maps = minmax(maps.float().clamp(min=0))
    if tuple(maps.shape[1:]) != tuple(size):
        mode = "bilinear" if len(size) == 2 else "trilinear"
        maps = minmax(F.interpolate(maps[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0])
    return maps


def normalize_signed(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Upsampling to ``size`` (bilinear, trilinear for volumes), then division by max |M| per image:
    [-1, 1], 0 stays 0."""
    maps = maps.float()
    if tuple(maps.shape[1:]) != tuple(size):
        mode = "bilinear" if len(size) == 2 else "trilinear"
        maps = F.interpolate(maps[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]
    scale = maps.flatten(1).abs().max(1).values.view((-1,) + (1,) * (maps.dim() - 1))
    return torch.where(scale > 0, maps / scale.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def normalize_sign(maps: Tensor, size: Sequence[int], sign: str = "positive") -> Tensor:
    """A raw signed map shown as ``sign`` says: its positive part, its negative part, or both."""
    if sign == "both":
        return normalize_signed(maps, size)
    return normalize_maps(-maps if sign == "negative" else maps, size)


def fuse_maps(maps: Sequence[Tensor], size: Sequence[int], sign: str = "positive") -> Tensor:
    """Fuse per-layer raw maps: normalise each, average, normalise the mean."""
    normalized = [normalize_sign(m, size, sign) for m in maps]
    if len(normalized) == 1:
        return normalized[0]
    return normalize_sign(torch.stack(normalized).mean(0), size, "both" if sign == "both" else "positive")


def check_images(images: object, model: nn.Module) -> Tensor:
    """Refuse, with the fix, input that is not a (B, C, H, W) image or (B, C, D, H, W) volume float
    tensor of the model's channel count."""
    if not isinstance(images, Tensor):
        raise TypeError(
            f"images must be a (B, C, H, W) tensor, not {type(images).__name__}; "
            "whycam.load_images turns files, PIL images and numpy arrays into one"
        )
    if images.dim() == 3:
        raise ValueError(
            f"images must be (B, C, H, W); got {tuple(images.shape)}. For a single image use images.unsqueeze(0)"
        )
    if images.dim() not in (4, 5):
        raise ValueError(f"images must be (B, C, H, W), or (B, C, D, H, W) volumes; got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"images have dtype {images.dtype}; convert to float and apply the model's "
            "preprocessing (e.g. images.float() / 255, then normalise)"
        )
    expected = next((m.in_channels for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if expected is not None and images.shape[1] != expected:
        fixes = {1: "grayscale: images.expand(-1, 3, -1, -1)", 4: "RGBA: images[:, :3]"}
        fix = fixes.get(images.shape[1], "")
        raise ValueError(
            f"the model expects {expected} channels, the images have {images.shape[1]}"
            + (f"; for {fix}" if fix and expected == 3 else "")
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinity")
    return images


class Explainer:
    """Base of every method: ``method(model, ...)`` then ``method(images, target=None) -> (B, H, W)``.

    Subclasses implement ``attribute(images, target) -> list of (B, h, w) raw signed maps`` (one per
    layer; pixel methods return one map at input resolution).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # declared capabilities, read by the run loop, the CLI and the reports (never guessed from attributes)
    needs_target: ClassVar[bool] = True  # explains a class score: the call's target is used
    needs_layer: ClassVar[bool] = False  # reads a layer through hooks: takes ``layer=``, not TorchScript
    uses_gradient: ClassVar[bool] = False  # back-propagates through the model
    needs_reference: ClassVar[bool] = False  # answers against a reference group: ``fit`` it first
    needs_attention: ClassVar[bool] = False  # reads attention probabilities: explains transformers only
    sign: str = "positive"  # which part of a signed map is shown (CAM methods take ``sign=``)
    stride_: tuple[float, ...] | None = None  # input pixels per map cell (per grid axis), after a call
    channels_last: bool = True  # see ``in_layout``; False once a model has refused it
    # a call runs the unaltered images through the whole model once, unmodified (``keep_output``)
    sees_output: ClassVar[bool] = False
    keep_output: bool = False  # set by the run loop: a call of a ``sees_output`` method keeps that output
    output_: object = None  # the model's raw output on the unaltered images, after a call with keep_output

    @classmethod
    def applies(cls, model: nn.Module) -> bool:
        """Whether the method can explain ``model`` at all (the attention methods need attention)."""
        return True

    def __init__(self, model: nn.Module, *, output: OutputSelector = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.output = output

    def __call__(self, images: Tensor, target: Target = None, *, raw: bool = False) -> Tensor:
        maps = self._attribute_checked(images, target)
        if raw:
            if len(maps) != 1:
                raise ValueError("raw maps are per layer: use per_layer(images, target, raw=True)")
            return maps[0].detach().float()
        return fuse_maps(maps, tuple(images.shape[2:]), self.sign).detach()

    def _attribute_checked(self, images: Tensor, target: Target) -> list[Tensor]:
        images = check_images(images, self.model)
        if self.model.training:
            warnings.warn(
                "the model is in training mode: BatchNorm and dropout make the map depend on the "
                "batch and on chance; call model.eval() first",
                stacklevel=3,
            )
        with preserved(self.model):
            maps = self.attribute(images, target)
        for m in maps:
            if m.shape[0] != images.shape[0] or m.dim() != images.dim() - 1:
                raise ValueError(
                    f"{type(self).__name__} made maps of shape {tuple(m.shape)} for {images.shape[0]} images of "
                    f"shape {tuple(images.shape[1:])}: the layer's output does not have one map per image; "
                    "choose a layer that runs once on the whole batch (layer='<dotted name>'), or pass reshape="
                )
        grid = images.shape[2:]
        self.stride_ = max((tuple(g / n for g, n in zip(grid, m.shape[1:], strict=True)) for m in maps), key=math.prod)
        return maps

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        raise NotImplementedError

    def used_layers(self) -> list[str]:
        """The dotted names of the layers explained, once resolved (empty for pixel methods)."""
        return []

    def forward(self, images: Tensor, *, unaltered: bool = False) -> Tensor:
        """The model's selected output for ``images`` (NaN and infinity refused); ``unaltered``: the
        images are the call's own, unmodified (see ``saw``)."""
        output = self.model(images)
        return select_output(self.saw(output) if unaltered else output, self.output)

    def saw(self, output: object) -> object:
        """``output``, the model's raw output on the call's unaltered images, kept as ``output_`` when
        ``keep_output`` is set: the run loop's predictions come from it instead of a pass of their own.
        Only a forward pass of the unmodified model on the images as given (any memory layout) may
        call this."""
        if self.keep_output:
            self.output_ = output
        return output

    def in_layout(self, run: Callable[[Tensor], T], images: Tensor) -> T:
        """``run(images)`` with the images channels-last (NHWC), the layout in which oneDNN's CPU
        convolutions and pooling are fastest (ResNet's max pooling: over 10x); the model is not
        converted. A model that cannot take it (a ``view`` of a convolution's output, say) raises
        PyTorch's error about strides or contiguity, and ``run`` is repeated with the images as given,
        for this call and every later one (``explainer.channels_last = False`` skips the attempt);
        any other error propagates. No operation's result depends on the layout; only a
        convolution's float rounding order does."""
        if self.channels_last and images.dim() == 4:
            try:
                return run(images.contiguous(memory_format=torch.channels_last))
            except RuntimeError as error:
                if not any(word in str(error) for word in ("stride", "contiguous")):
                    raise
                self.channels_last = False
        return run(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


class FunctionExplainer(Explainer):
    """A plain function ``f(images, target) -> (B, H, W)`` as an explainer; its maps are taken as they are."""

    def __init__(self, model: nn.Module, function: Callable[[Tensor, Target], Tensor]):
        super().__init__(model)
        self.function = function

    def __call__(self, images: Tensor, target: Target = None, *, raw: bool = False) -> Tensor:
        return self.function(images, target).detach()


@dataclass
class LayerPass:
    """What one forward pass through the tapped model gives a CAM method for one layer."""

    images: Tensor
    output: Tensor | None
    scores: Tensor | None
    classes: Tensor | None
    target: Target
    name: str
    module: nn.Module


class CAMExplainer(Explainer):
    """``M = sum_k w_k A_k`` over a layer's activation maps; subclasses implement ``weights``.

    ``layer``: a dotted name, a module, a list of them (fused), or None (chosen automatically).
    ``reshape``: a callable turning the layer's output into (B, K, h, w), for layouts whycam cannot
    read itself (channels-first and channels-last maps and ViT tokens are read automatically; an
    ambiguous layout is refused with this fix). ``sign``: ``"positive"``, ``"negative"`` or
    ``"both"`` (see the module's docstring).
    """

    uses_gradient: ClassVar[bool] = True
    needs_layer: ClassVar[bool] = True
    sees_output: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | Sequence[str | nn.Module] = None,
        *,
        output: OutputSelector = None,
        reshape: Callable[[Tensor], Tensor] | None = None,
        sign: str = "positive",
    ):
        super().__init__(model, output=output)
        if sign not in SIGNS:
            raise ValueError(f"sign={sign!r}: choose 'positive' (evidence for), 'negative' (against) or 'both'")
        self.layer = layer
        self.reshape = reshape
        self.sign = sign
        self._layers: list[tuple[str, nn.Module]] | None = None
        self._layouts: dict[tuple, Layout] | None = None  # read once per layer and input size

    def layers(self, images: Tensor) -> list[tuple[str, nn.Module]]:
        """The ``(name, module)`` pairs explained (resolved once, at the first call)."""
        if self._layers is None:
            with preserved(self.model):
                self._layers = resolve_layers(self.model, self.layer, images)
        return self._layers

    def used_layers(self) -> list[str]:
        return [] if self._layers is None else [name for name, _ in self._layers]

    def spatial(self, activation: Tensor, images: Tensor, module: nn.Module | None = None) -> Tensor:
        """A layer's output as a channels-first map (B, K, *grid), with one row per image."""
        if self.reshape is not None:
            spatial = self.reshape(activation)
        else:
            key = (id(module), tuple(activation.shape[1:]), tuple(images.shape[2:]))
            self._layouts = {} if self._layouts is None else self._layouts
            if key not in self._layouts:
                self._layouts[key] = read_layout(activation.shape, self.model, images.shape[2:], module, images)
            spatial = self._layouts[key].apply(activation)
        if spatial.shape[0] != images.shape[0] or spatial.dim() != images.dim():
            raise ValueError(
                f"the layer's output reads as {tuple(spatial.shape)} for {images.shape[0]} images of shape "
                f"{tuple(images.shape[1:])}, not (B, K, *grid) with B = {images.shape[0]}: it is not one map per "
                "image (a parameter, a buffer, per-box or per-window features); choose another layer or pass reshape="
            )
        return spatial

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        layers = self.layers(images)
        output, scores, classes, activations, gradients = self.in_layout(
            lambda x: self.tapped(x, layers, target), images
        )
        for (name, _), gradient in zip(layers, gradients, strict=True):
            if self.uses_gradient and gradient is None:
                raise ValueError(
                    f"the explained score does not depend on the layer {name!r} (its output never reaches the "
                    "target); choose a layer the score flows through (layer='<dotted name>')"
                )
        maps = []
        for (name, module), act, grad in zip(layers, activations, gradients, strict=True):
            act = self.spatial(act.detach(), images, module)
            grad = None if grad is None else self.spatial(grad, images, module)
            step = LayerPass(
                images,
                None if output is None else output.detach(),
                None if scores is None else scores.detach(),
                classes,
                target,
                name,
                module,
            )
            maps.append(self.layer_map(act, grad, step))
        return maps

    def tapped(self, images: Tensor, layers: list[tuple[str, nn.Module]], target: Target) -> tuple:
        """One forward pass: the selected output, the target scores and classes, the layers'
        activations and (for gradient methods) the scores' gradients with respect to them. A
        label-free method never reads the output: any model, with or without a head."""
        with Tap([module for _, module in layers], grad=self.uses_gradient) as tap, torch.no_grad():
            if self.needs_target:
                output = self.forward(images, unaltered=True)
                with torch.set_grad_enabled(self.uses_gradient):
                    scores, classes = target_scores(output, target)
            else:
                output, scores, classes = None, None, None
                self.saw(self.model(images))
            activations = tap.captured()
            gradients = self.gradients(scores, activations) if self.uses_gradient else [None] * len(activations)
        return output, scores, classes, activations, gradients

    def gradients(self, scores: Tensor, activations: list[Tensor]) -> list[Tensor]:
        """``dy_c/dA`` for each tapped layer's activations (in the layer's own layout)."""
        return list(torch.autograd.grad(scores.sum(), activations, allow_unused=True))

    def layer_map(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        """The signed map of one layer, (B, h, w): ``sum_k weights * A``."""
        return (self.weights(activation, gradient, step) * activation).sum(1)

    def weights(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        """Channel weights (B, K, 1, 1), or element-wise weights (B, K, h, w)."""
        raise NotImplementedError

    def per_layer(self, images: Tensor, target: Target = None, *, raw: bool = False) -> dict[str, Tensor]:
        """One map per layer, by layer name: normalised at input size, or raw at feature size."""
        maps = self._attribute_checked(images, target)
        size = tuple(images.shape[2:])
        return {
            name: (m.detach().float() if raw else normalize_sign(m, size, self.sign).detach())
            for (name, _), m in zip(self.layers(images), maps, strict=True)
        }
