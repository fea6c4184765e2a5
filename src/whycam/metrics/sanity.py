"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains the model must change when the model's weights are destroyed. The model is
deep-copied (the caller's model is never touched) and its layers, the modules that own parameters,
are re-initialised from the top (the output) down: *cascading* keeps the earlier randomisations
(layers 1..l random after step l), *independent* randomises one layer at a time. Each layer is
re-initialised by its own ``reset_parameters`` (parameters of modules without one are redrawn from a
normal distribution with their current standard deviation) under ``torch.manual_seed(seed)``, the
caller's random state left as it was. After each step the maps of the randomised model are compared
with the original maps by Spearman rank correlation (of the maps and of their absolute values),
SSIM and HOG correlation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import LayerSpec
from ..methods.base import Explainer, FunctionExplainer, check_images
from ..runs import Runner
from ..targets import Target, select_output
from .ranks import average_ranks
from .result import MetricResult

ExplainerFactory = Callable[[nn.Module], Callable[[Tensor, Target], Tensor]]


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of rows of (B, N) tensors (average ranks for ties, as
    scipy.stats.spearmanr); 0 when a row is constant (scipy: NaN), as a constant map keeps no order."""
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def _gaussian_window(sigma: float, truncate: float) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, gaussian_weights: bool = False) -> Tensor:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of each pair of (B, H, W) images,
    as scikit-image's ``structural_similarity`` with its defaults: a 7x7 uniform window (or an
    11-tap Gaussian of sigma 1.5 with ``gaussian_weights``), K1 = 0.01, K2 = 0.03, sample covariance,
    averaged over the pixels whose window lies inside the image."""
    window = _gaussian_window(1.5, 3.5) if gaussian_weights else torch.full((7,), 1 / 7, dtype=torch.float64)
    size = window.numel()
    if min(a.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {tuple(a.shape[-2:])}")
    kernel = (window[:, None] * window[None, :])[None, None].to(a.device)

    def mean(x: Tensor) -> Tensor:
        return F.conv2d(x[:, None], kernel)[:, 0]

    a, b = a.double(), b.double()
    cov_norm = size**2 / (size**2 - 1)
    mu_a, mu_b = mean(a), mean(b)
    var_a = cov_norm * (mean(a * a) - mu_a**2)
    var_b = cov_norm * (mean(b * b) - mu_b**2)
    cov = cov_norm * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1)


def hog(images: Tensor, cell: int = 8, bins: int = 9) -> Tensor:
    """Histogram of oriented gradients (Dalal & Triggs, CVPR 2005) of (B, H, W) images, (B, features):
    central-difference gradients, unsigned orientations in ``bins`` bins with linear interpolation
    between bins, magnitude-weighted sums over ``cell`` x ``cell`` cells, each 2x2 block of cells
    L2-normalised. (No L2-Hys clipping: not identical to scikit-image's ``hog``.)"""
    x = images.double()[:, None]
    gx = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0))
    gy = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1))
    magnitude = torch.sqrt(gx**2 + gy**2)
    position = (torch.atan2(gy, gx) % math.pi) / math.pi * bins - 0.5
    low = position.floor()
    upper = position - low
    histogram = sum(
        F.one_hot((low + shift).long() % bins, bins).movedim(-1, 1)[:, :, 0] * weight
        for shift, weight in ((0, 1 - upper), (1, upper))
    )
    cells = F.avg_pool2d(histogram * magnitude, cell)  # (B, bins, h, w)
    blocks = F.unfold(cells, 2)  # (B, bins*4, blocks)
    blocks = blocks / (blocks.norm(dim=1, keepdim=True) + 1e-12)
    return blocks.flatten(1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of rows of (B, N) tensors; 0 when a row is constant."""
    a, b = a.double() - a.double().mean(1, keepdim=True), b.double() - b.double().mean(1, keepdim=True)
    scale = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(scale > 0, (a * b).sum(1) / scale.clamp(min=1e-300), 0.0)


def similarities(original: Tensor, randomised: Tensor) -> dict[str, Tensor]:
    """Every similarity of the sanity check between two (B, H, W) batches of maps, each (B,)."""
    values = {
        "spearman": spearman(original, randomised),
        "spearman_abs": spearman(original.abs(), randomised.abs()),
        "ssim": ssim(original, randomised),
    }
    if min(original.shape[-2:]) >= 16:
        values["hog"] = pearson(hog(original), hog(randomised))
    return values


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the top (last registered) down."""
    return [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))][::-1]


def _randomise(module: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for param in module.parameters(recurse=False):
                param.copy_(torch.randn_like(param) * (param.std() if param.numel() > 1 else 1.0))


def method_factory(
    name: str, options: Mapping[str, object] | None = None, *, layer: LayerSpec = None, reference: object = None
) -> ExplainerFactory:
    """A factory of the registered method ``name`` for the check: on each model copy it is built with
    ``options`` at ``layer`` and, if it needs one (DiffCAM), fitted on ``reference`` again (the
    statistics belong to the weights)."""

    def build(model: nn.Module) -> Explainer:
        return Runner(model, {name: dict(options or {})}, layer=layer, reference=reference).explainers[name]

    return build


def _explain(factory: ExplainerFactory, model: nn.Module, images: Tensor, targets: Target, batch_size: int) -> Tensor:
    """The maps of ``factory(model)`` for every image, through the run loop (a plain function's maps
    are taken as they are, an explainer's as it returns them)."""
    explainer = factory(model)
    if not isinstance(explainer, Explainer):
        explainer = FunctionExplainer(model, explainer)
    runner = Runner(model, {"map": explainer}, batch_size=batch_size, strict=True)
    return runner.explain(images, targets).maps["map"].to(images.device)


def sanity_check(
    explainer: ExplainerFactory,
    model: nn.Module,
    images: Tensor,
    targets: Target = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    threshold: float = 0.5,
    modes: Sequence[str] = ("cascading", "independent"),
) -> dict[str, MetricResult]:
    """Model parameter randomisation test (Adebayo et al. 2018), cascading and independent.

    ``explainer``: an explainer class, ``method_factory(name, ...)`` for a registered method, or any
    ``factory(model) -> f(images, target) -> (B, H, W) maps``, called on deep copies only. ``layers``:
    module names randomised, top first (default: every module owning parameters, last registered
    first). ``targets``: fixed classes, or None for the class the original model predicts on each
    image (fixed through the randomisation).

    Returns ``{"cascading": ..., "independent": ...}`` (the ``modes`` asked for); each result's
    per-image score is the Spearman rank correlation between the original map and the map of the
    last step (for cascading: the fully randomised model; for independent: the mean over layers),
    lower is better; ``curves`` holds every
    similarity per step, (B, layers), and ``steps`` indexes ``settings["layers"]``. The check
    **passes** when the mean Spearman correlation after full cascading randomisation is below
    ``threshold`` (0.5: a map that keeps more than half its rank order once every weight is random
    reflects the input, not the model); ``settings["passed"]`` holds the verdict.
    """
    images = check_images(images, model)
    unknown_modes = set(modes) - {"cascading", "independent"}
    if unknown_modes or not modes:
        raise ValueError(f"modes must be 'cascading' and/or 'independent', got {list(modes)}")
    names = parameter_layers(model) if layers is None else list(layers)
    known = dict(model.named_modules())
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"no module named {missing} in the model; choose from parameter_layers(model)")
    if not names:
        raise ValueError("the model has no parameters to randomise")
    original_model = copy.deepcopy(model).eval()
    if targets is None:
        with torch.no_grad():
            targets = torch.cat([select_output(original_model(chunk)).argmax(1) for chunk in images.split(batch_size)])
    original = _explain(explainer, original_model, images, targets, batch_size)
    results = {}
    for mode in modes:
        randomised = copy.deepcopy(original_model)
        curves: dict[str, list[Tensor]] = {}
        for name in names:
            if mode == "independent":
                randomised = copy.deepcopy(original_model)
            _randomise(dict(randomised.named_modules())[name], seed)
            for key, value in similarities(
                original, _explain(explainer, randomised, images, targets, batch_size)
            ).items():
                curves.setdefault(key, []).append(value.float())
        stacked = {key: torch.stack(value, 1) for key, value in curves.items()}
        scores = stacked["spearman"][:, -1] if mode == "cascading" else stacked["spearman"].nanmean(1)
        settings: dict[str, object] = {"layers": names, "seed": seed, "threshold": threshold}
        if mode == "cascading":
            settings["passed"] = bool(scores.nanmean() < threshold)
        results[mode] = MetricResult(f"sanity_check_{mode}", scores, False, stacked, torch.arange(len(names)), settings)
    return results
