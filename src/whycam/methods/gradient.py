"""Gradient attributions at input resolution: saliency, input x gradient, Integrated Gradients,
guided backpropagation, deconvnet, Guided Grad-CAM, and SmoothGrad around any explainer.

Each pixel method first computes a per-channel attribution a (B, C, H, W) (``per_channel``), then
reduces it over channels to the (B, H, W) map (``reduce``): ``"max_abs"`` (max_c |a_c|, Simonyan's
choice, the default of the unsigned gradient visualisations), ``"sum"`` (sum_c a_c, the default of
the signed attributions, which keeps completeness), ``"sum_abs"`` or ``"l2"``.

All gradients come from one helper, :func:`input_gradient`: ``torch.autograd.grad`` of the target
scores with respect to a new leaf tensor on the input's storage, under ``torch.enable_grad`` (so it works inside
``torch.no_grad()``), never touching parameter gradients.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..layers import LayerSpec
from ..taps import preserved
from ..targets import OutputSelector, Target, pin_target, target_rows, target_scores
from .base import Explainer, batches, check_images, positive_int, register
from .baselines import BaselineSpec, make_baseline
from .cam import GradCAM

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "max_abs": lambda a: a.abs().amax(1),
    "sum": lambda a: a.sum(1),
    "sum_abs": lambda a: a.abs().sum(1),
    "l2": lambda a: a.norm(dim=1),
}


def input_gradient(explainer: Explainer, inputs: Tensor, target: Target, *, unaltered: bool = False) -> Tensor:
    """``d y / d x`` for each image's target score y (``unaltered``: ``inputs`` are the call's own images).

    Images are independent (the model is in eval mode), so the gradient of the summed scores is
    each image's own gradient.
    """

    def gradient(x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # a new leaf on the same storage: no copy
            scores, _ = target_scores(explainer.forward(x, unaltered=unaltered), target)
            return torch.autograd.grad(scores.sum(), x)[0]

    return explainer.in_layout(gradient, inputs).contiguous()


def unaltered_output(explainer: Explainer, images: Tensor) -> Tensor:
    """The model's output for the images, without a graph (to pin a target of ``None``)."""
    with torch.no_grad():
        return explainer.in_layout(explainer.forward, images)


class PixelExplainer(Explainer):
    """A method whose map lives at input resolution, reduced over channels from ``per_channel``."""

    uses_gradient: ClassVar[bool] = True
    default_reduce: ClassVar[str] = "sum"

    def __init__(self, model: nn.Module, *, reduce: str | None = None, output: OutputSelector = None):
        super().__init__(model, output=output)
        reduce = self.default_reduce if reduce is None else reduce
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown channel reduction {reduce!r}; choose one of {sorted(REDUCTIONS)}")
        self.reduce = reduce

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        return [REDUCTIONS[self.reduce](self.attribute_pixels(images, target))]

    def attribute_pixels(self, images: Tensor, target: Target) -> Tensor:
        """The per-channel attribution (B, C, H, W)."""
        raise NotImplementedError

    def per_channel(self, images: Tensor, target: Target = None) -> Tensor:
        """The per-channel attribution (B, C, H, W), before the channel reduction."""
        images = check_images(images, self.model)
        with preserved(self.model):
            return self.attribute_pixels(images, target).detach()


@register
class Saliency(PixelExplainer):
    """Vanilla gradient (Simonyan et al., ICLR workshop 2014): a = |dy_c/dx|, map = max_c a_c."""

    name = "saliency"
    summary = "Vanilla gradient: |dy/dx|, max over colour channels."
    default_reduce = "max_abs"
    sees_output = True

    def attribute_pixels(self, images, target):
        return input_gradient(self, images, target, unaltered=True).abs()


@register
class InputXGradient(PixelExplainer):
    """Input x gradient (Shrikumar et al., 2016): a = x * dy_c/dx, map = sum_c a_c."""

    name = "inputxgradient"
    summary = "Input times gradient, summed over colour channels."
    sees_output = True

    def attribute_pixels(self, images, target):
        return images * input_gradient(self, images, target, unaltered=True)


def quadrature(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes alpha_i in [0, 1] and weights w_i of the rule approximating int_0^1 g(alpha) d alpha.

    The names are Captum's. ``riemann_left/right/middle``: n nodes, weights 1/n. ``riemann_trapezoid``:
    nodes linspace(0, 1, n), weights h/2, h, ..., h, h/2 with h = 1/(n-1), so they sum to 1 (Captum
    uses h = 1/n, whose weights sum to (n-1)/n). ``gausslegendre``: n-point Gauss-Legendre on [0, 1].
    """
    steps = positive_int(steps, "steps")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.tensor(0.5 * (nodes + 1)), torch.tensor(0.5 * weights)
    if method not in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"):
        raise ValueError(
            f"unknown integration method {method!r}; use 'gausslegendre', 'riemann_left', "
            "'riemann_right', 'riemann_middle' or 'riemann_trapezoid'"
        )
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (torch.arange(steps, dtype=torch.float64) + offset) / steps, torch.full(
        (steps,), 1.0 / steps, dtype=torch.float64
    )


class Completeness(NamedTuple):
    """Integrated Gradients' completeness check: ``total`` should equal ``difference``."""

    attributions: Tensor  # (B, C, H, W)
    total: Tensor  # (B,) sum of the attributions
    difference: Tensor  # (B,) f(x) - f(baseline)

    @property
    def delta(self) -> Tensor:
        """total - difference: the integration error (0 for the exact integral)."""
        return self.total - self.difference


@register
class IntegratedGradients(PixelExplainer):
    """Integrated Gradients (Sundararajan et al., ICML 2017):

    a = (x - x') * int_0^1 dy_c/dx (x' + alpha (x - x')) d alpha  ~  (x - x') * sum_i w_i g(alpha_i),

    map = sum_c a_c. Completeness: sum a = y_c(x) - y_c(x') for the exact integral (``completeness``).

    ``baseline``: ``"black"``, ``"blur"``, ``"uniform"``, a number or a tensor (see
    ``whycam.methods.baselines``); ``steps`` and ``method`` as Captum's (``quadrature``);
    ``batch_size`` bounds the images x steps evaluated per forward/backward pass.
    """

    name = "integratedgradients"
    summary = "Integrated Gradients: gradients integrated along a path from a baseline."

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: BaselineSpec = "black",
        steps: int = 50,
        method: str = "gausslegendre",
        batch_size: int = 32,
        blur_sigma: float | None = None,
        seed: int = 0,
        **options,
    ):
        super().__init__(model, **options)
        self.alphas, self.weights = quadrature(method, steps)
        self.baseline, self.steps, self.method = baseline, steps, method
        self.batch_size = positive_int(batch_size, "batch_size")
        self.blur_sigma, self.seed = blur_sigma, seed

    def baselines(self, images: Tensor) -> Tensor:
        """The baseline x' of each image."""
        generator = torch.Generator().manual_seed(self.seed)
        return make_baseline(images, self.baseline, sigma=self.blur_sigma, generator=generator)

    def _integrate(self, images: Tensor, baseline: Tensor, pinned) -> Tensor:
        difference = images - baseline
        integral = torch.zeros_like(images)
        alphas, weights = self.alphas.to(images), self.weights.to(images)
        for rows in batches(images.shape[0] * self.steps, self.batch_size):
            image, step = rows // self.steps, rows % self.steps
            image_dev = image.to(images.device)
            shape = (-1, *[1] * (images.dim() - 1))
            points = baseline[image_dev] + alphas[step].view(shape) * difference[image_dev]
            gradient = input_gradient(self, points, target_rows(pinned, image))
            integral.index_add_(0, image_dev, gradient.mul_(weights[step].view(shape)))
        return difference * integral

    def attribute_pixels(self, images, target):
        pinned = pin_target(target, len(images), lambda: unaltered_output(self, images))
        return self._integrate(images, self.baselines(images), pinned)

    def completeness(self, images: Tensor, target: Target = None) -> Completeness:
        """The attributions with their sum and y_c(x) - y_c(x') (for the same, pinned, target)."""
        images = check_images(images, self.model)
        with preserved(self.model):
            baseline = self.baselines(images)
            with torch.no_grad():
                output = self.forward(torch.cat([images, baseline]))
                pinned = pin_target(target, len(images), lambda: output[: len(images)])
                both = torch.arange(2 * len(images)) % len(images)
                scores, _ = target_scores(output, target_rows(pinned, both))
            attributions = self._integrate(images, baseline, pinned).detach()
        return Completeness(attributions, attributions.flatten(1).sum(1), scores[: len(images)] - scores[len(images) :])


_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
_NOT_GUIDED = (
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
)
_TORCH_DIR = str(Path(torch.__file__).parent)


class _FunctionalReLUWatch(TorchFunctionMode):
    """Records ReLUs called as functions (``F.relu``, ``torch.relu``, ``x.relu()``) outside an
    ``nn.ReLU`` module: hooks cannot reach them, so their gradient is not guided."""

    def __init__(self):
        super().__init__()
        self.inside_module = 0
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCTIONS and not self.inside_module:
            frame = next(
                (
                    f
                    for f in reversed(traceback.extract_stack()[:-1])
                    if not f.filename.startswith((_TORCH_DIR, __file__))
                ),
                None,
            )
            self.calls.append(
                f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
                if frame
                else getattr(func, "__name__", str(func))
            )
        return func(*args, **(kwargs or {}))


def _clamp_gradient(gradient: Tensor) -> Tensor:
    return gradient.clamp(min=0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU forward; backward ReLU(g), whatever the sign of the input (Zeiler & Fergus's rule)."""

    @staticmethod
    def forward(ctx, inputs: Tensor) -> Tensor:
        return inputs.clamp(min=0)

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tensor:
        return gradient.clamp(min=0)


@contextmanager
def _relu_rule(model: nn.Module, rule: str, enter: Callable, leave: Callable) -> Iterator[None]:
    """Run the block with ``enter`` as forward pre-hook and ``leave`` as forward hook of every
    ``nn.ReLU``, removed on exit (also on exceptions). ReLUs called as functions and other
    activations cannot follow the modified backward ``rule``: a warning names them."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    watch = _FunctionalReLUWatch()

    def pre(module, inputs):
        watch.inside_module += 1
        return enter(module, inputs)

    def post(module, inputs, output):
        watch.inside_module -= 1
        return leave(module, inputs, output)

    handles = [h for m in relus for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with watch:
            yield
    finally:
        for handle in handles:
            handle.remove()
    problems = []
    if watch.calls:
        places = sorted(set(watch.calls))
        problems.append(
            f"{len(watch.calls)} ReLU call(s) made as functions, not nn.ReLU modules "
            f"({', '.join(places[:5])}{', ...' if len(places) > 5 else ''}); replace them "
            f"by nn.ReLU modules to apply {rule} to them"
        )
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _NOT_GUIDED)})
    if others:
        problems.append(f"activations other than ReLU ({', '.join(others)}), for which {rule} is not defined")
    if not relus and not watch.calls:
        problems.append("no ReLU at all: the map is the plain gradient")
    if problems:
        warnings.warn(f"{rule} left gradients unmodified through " + "; and through ".join(problems), stacklevel=4)


def guided_relus(model: nn.Module):
    """Guided backpropagation (Springenberg et al., ICLR workshop 2015) through every ``nn.ReLU``:
    in the backward pass a ReLU passes ReLU(g) * 1[x > 0] instead of g * 1[x > 0].

    A forward hook registers ``clamp(min=0)`` as a hook on each ReLU output tensor (in-place ReLUs
    included): the modification lives on this forward pass's graph only, and the module hooks are
    removed on exit, also on exceptions. ReLUs called as functions and other activations cannot be
    guided: a warning names them (their gradients pass as in the plain gradient).
    """

    def leave(module, inputs, output):
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(_clamp_gradient)

    return _relu_rule(model, "guided backpropagation", lambda module, inputs: None, leave)


def deconv_relus(model: nn.Module):
    """The deconvnet's backward pass (Zeiler & Fergus, ECCV 2014) through every ``nn.ReLU``: a ReLU
    passes ReLU(g), whatever the sign of its input (the gradient passes g * 1[x > 0]).

    A forward pre-hook hands the ReLU a copy of its input (so that an in-place ReLU leaves the input
    intact) and the forward hook returns ``_DeconvReLU`` of that input in place of the ReLU's output:
    same values, the deconvnet's backward. Same warnings as ``guided_relus``.
    """
    inputs_seen: dict[int, Tensor] = {}

    def enter(module, inputs):
        if isinstance(inputs[0], Tensor) and inputs[0].requires_grad:
            inputs_seen[id(module)] = inputs[0]
            return (inputs[0].clone(), *inputs[1:])
        return None

    def leave(module, inputs, output):
        source = inputs_seen.pop(id(module), None)
        return None if source is None else _DeconvReLU.apply(source)

    return _relu_rule(model, "the deconvnet rule", enter, leave)


@register
class GuidedBackprop(PixelExplainer):
    """Guided backpropagation (Springenberg et al., 2015): the input gradient with every ReLU's
    backward replaced by ReLU(g) * 1[x > 0] (``guided_relus``); map = max_c |a_c|, like saliency."""

    name = "guidedbackprop"
    summary = "Guided backpropagation: gradients with negative signals stopped at every ReLU."
    default_reduce = "max_abs"
    sees_output = True

    def attribute_pixels(self, images, target):
        with guided_relus(self.model):
            return input_gradient(self, images, target, unaltered=True)


@register
class Deconvnet(PixelExplainer):
    """Deconvnet attribution (Zeiler & Fergus, ECCV 2014; related to the gradient by Simonyan et al.,
    2014, section 4): the input gradient with every ReLU's backward replaced by ReLU(g), the ReLU of
    the incoming signal whatever the sign of the forward input (``deconv_relus``); map = max_c |a_c|."""

    name = "deconvnet"
    summary = "Deconvnet: the backward pass with each ReLU applied to the incoming signal."
    default_reduce = "max_abs"
    sees_output = True

    def attribute_pixels(self, images, target):
        with deconv_relus(self.model):
            return input_gradient(self, images, target, unaltered=True)


@register
class GuidedGradCAM(PixelExplainer):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017): a_c = GB_c * up(ReLU(GradCAM)), the guided
    backpropagation per channel times the Grad-CAM map upsampled bilinearly to the input size (the
    mean of the layers' upsampled maps for several layers); map = max_c |a_c|."""

    name = "guidedgradcam"
    summary = "Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM."
    default_reduce = "max_abs"
    needs_layer = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *, reshape=None, **options):
        super().__init__(model, **options)
        self.gradcam = GradCAM(model, layer, output=self.output, reshape=reshape)
        self.guided = GuidedBackprop(model, output=self.output)

    def used_layers(self) -> list[str]:
        return self.gradcam.used_layers()

    def attribute_pixels(self, images, target):
        size = tuple(images.shape[2:])
        mode = "bilinear" if len(size) == 2 else "trilinear"
        cams = [
            F.interpolate(m.clamp(min=0)[:, None], size=size, mode=mode, align_corners=False)
            for m in self.gradcam.attribute(images, target)
        ]
        return self.guided.attribute_pixels(images, target) * torch.stack(cams).mean(0)


@register
class SmoothGrad(PixelExplainer):
    """SmoothGrad (Smilkov et al., 2017) around any explainer: the mean of its maps over noisy copies
    x + N(0, sigma^2), sigma = ``noise`` * (max(x) - min(x)) per image.

    ``variant``: ``"smoothgrad"`` (mean), ``"smoothgrad2"`` (mean of squares, SmoothGrad^2 of Hooker
    et al. 2019) or ``"vargrad"`` (variance, Adebayo et al. 2018). A pixel explainer is smoothed per
    channel, then reduced over channels by its own ``reduce``; any other explainer (CAM methods,
    DiffCAM) is smoothed on its raw maps. ``SmoothGrad(model)`` smooths ``Saliency(model)``.
    The ``samples`` standard-normal noise fields come from a generator seeded with ``seed``, drawn
    once per call and shared by every image (each scaled by its own sigma), so an image's map does
    not depend on the other images of its batch; a target of ``None`` is pinned to the class
    predicted for the noise-free image.
    """

    name = "smoothgrad"
    summary = "SmoothGrad: an explainer's maps averaged over noisy copies of the image (saliency by default)."
    variants = ("smoothgrad", "smoothgrad2", "vargrad")

    def __init__(
        self,
        explainer: Explainer | nn.Module,
        *,
        noise: float = 0.15,
        samples: int = 25,
        batch_size: int = 32,
        seed: int = 0,
        variant: str = "smoothgrad",
        output: OutputSelector = None,
    ):
        if not isinstance(explainer, Explainer):
            explainer = Saliency(explainer, output=output)
        reduce = explainer.reduce if isinstance(explainer, PixelExplainer) else None
        super().__init__(explainer.model, reduce=reduce, output=explainer.output)
        if variant not in self.variants:
            raise ValueError(f"unknown SmoothGrad variant {variant!r}; use one of {self.variants}")
        if not noise >= 0:
            raise ValueError(f"noise is a fraction of each image's value range and must be >= 0, got {noise}")
        self.explainer, self.noise, self.variant, self.seed = explainer, float(noise), variant, seed
        self.samples = positive_int(samples, "samples")
        self.batch_size = positive_int(batch_size, "batch_size")
        # the capabilities are those of the explainer smoothed
        self.needs_target = explainer.needs_target
        self.needs_layer = explainer.needs_layer
        self.uses_gradient = explainer.uses_gradient
        self.needs_reference = explainer.needs_reference
        self.needs_attention = explainer.needs_attention
        self.sign = explainer.sign

    def fit(self, references, **options) -> SmoothGrad:
        """Fit the smoothed explainer's reference group (DiffCAM); returns ``self``."""
        if not self.needs_reference:
            raise TypeError(f"{self.explainer!r} answers without a reference group; there is nothing to fit")
        self.explainer.fit(references, **options)
        return self

    def used_layers(self) -> list[str]:
        return self.explainer.used_layers()

    def attribute(self, images, target):
        if isinstance(self.explainer, PixelExplainer):
            return super().attribute(images, target)
        return self._smooth(self.explainer.attribute, images, target)

    def attribute_pixels(self, images, target):
        if not isinstance(self.explainer, PixelExplainer):
            raise TypeError(f"{type(self.explainer).__name__} has no per-channel attribution")
        return self._smooth(lambda x, t: [self.explainer.attribute_pixels(x, t)], images, target)[0]

    def _smooth(
        self, attribute: Callable[[Tensor, Target], list[Tensor]], images: Tensor, target: Target
    ) -> list[Tensor]:
        if self.explainer.needs_target:
            pinned = pin_target(target, len(images), lambda: unaltered_output(self, images))
        sigma = self.noise * (images.flatten(1).amax(1) - images.flatten(1).amin(1))
        generator = torch.Generator().manual_seed(self.seed)
        fields = torch.randn((self.samples, *images.shape[1:]), generator=generator, dtype=images.dtype)
        fields = fields.to(images.device)
        sums = squares = None
        for rows in batches(images.shape[0] * self.samples, self.batch_size):
            image = rows // self.samples
            image_dev, sample = image.to(images.device), (rows % self.samples).to(images.device)
            noisy = images[image_dev] + fields[sample] * sigma[image_dev].view(-1, *[1] * (images.dim() - 1))
            rows_target = target_rows(pinned, image) if self.explainer.needs_target else target
            maps = [m.detach().double() for m in attribute(noisy, rows_target)]
            if sums is None:
                sums = [m.new_zeros((images.shape[0], *m.shape[1:])) for m in maps]
                squares = [torch.zeros_like(s) for s in sums]
            for total, square, m in zip(sums, squares, maps):
                total.index_add_(0, image_dev, m)
                square.index_add_(0, image_dev, m * m)
        means = [s / self.samples for s in sums]
        if self.variant == "smoothgrad":
            result = means
        elif self.variant == "smoothgrad2":
            result = [q / self.samples for q in squares]
        else:
            result = [q / self.samples - m * m for q, m in zip(squares, means)]
        return [r.to(images.dtype) for r in result]

    def __repr__(self) -> str:
        return f"SmoothGrad({self.explainer!r}, variant={self.variant!r})"


__all__ = [
    "Completeness",
    "Deconvnet",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "PixelExplainer",
    "Saliency",
    "SmoothGrad",
    "deconv_relus",
    "guided_relus",
    "input_gradient",
    "quadrature",
]
