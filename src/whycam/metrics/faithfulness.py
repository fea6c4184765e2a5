"""Faithfulness: does removing what the map points at change the model's score?

Every metric takes ``(model, images, maps, targets)``: images (B, C, H, W) as the model takes them,
maps (B, H, W) from any explainer, and targets as in ``whycam.targets`` (None = the class the model
predicts on the original image, kept fixed through the perturbations). The class score is the
softmax probability by default (``score="probability"``) or the logit (``score="logit"``); a callable
target receives the softmax output or the logits accordingly. Perturbed images are built and scored
``batch_size`` at a time, never all at once, with the model in eval mode under ``torch.no_grad``; the
model comes back exactly as it was (modes, flags, hooks).
Pixels are ranked by map value; ties are broken by a random order seeded with ``seed + image index``,
the same for every metric and direction, so a constant map removes the same pixels first in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..methods.base import check_images, positive_int
from ..methods.baselines import blur
from ..taps import preserved
from ..targets import OutputSelector, Target, callable_scores, select_output, target_classes
from .imputation import impute, noise_fields
from .ranks import pixel_ranks
from .registry import metric
from .result import MetricResult

Transform = Callable[[Tensor], Tensor]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, and give it back exactly as it was."""
    with preserved(model), torch.no_grad():
        model.eval()
        yield


class _Scorer:
    """The model's score for each image's target, fixed on the original images."""

    def __init__(
        self, model: nn.Module, images: Tensor, target: Target, score: str, output: OutputSelector, batch_size: int
    ):
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit', not {score!r}")
        positive_int(batch_size, "batch_size")
        self.model, self.score, self.output, self.batch_size = model, score, output, batch_size
        self.target = target
        with evaluating(model):
            outputs = torch.cat([self._output(chunk) for chunk in images.split(batch_size)])
        self.classes = None if callable(target) else target_classes(outputs, target)
        self.original = self._select(outputs, torch.arange(images.shape[0], device=images.device))[0]

    def _output(self, images: Tensor) -> Tensor:
        output = select_output(self.model(images), self.output).float()
        return output.softmax(1) if self.score == "probability" else output

    def _select(self, output: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.classes is None:
            return callable_scores(self.target, output).float(), None
        classes = self.classes[index]
        return output.gather(1, classes[:, None])[:, 0], (output.argmax(1) == classes).float()

    def __call__(self, images: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scores (and whether the target class is still predicted) of perturbed images of ``index``."""
        return self._select(self._output(images), index)


def _inputs(model: nn.Module, images: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
    images = check_images(images, model)
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        raise ValueError(
            f"maps must be a (B, H, W) tensor, one map per image; got "
            f"{tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__}"
        )
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps {tuple(maps.shape)} do not match the images {tuple(images.shape)}: "
            "give one map per image at the image's size (explainers return exactly that)"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinity")
    return images, maps.to(images.device).float()


def _chunks(count: int, steps: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(image index, step index) pairs, ``batch_size`` at a time, step-major within each image."""
    pairs = torch.arange(count * steps)
    for chunk in pairs.split(batch_size):
        yield chunk // steps, chunk % steps


def _run(
    model: nn.Module, scorer: _Scorer, count: int, steps: int, perturb: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor | None]:
    """Score ``perturb(image index, step index)`` for every pair; (B, steps) scores and accuracies."""
    scores, hits = [], []
    with evaluating(model):
        for image, step in _chunks(count, steps, scorer.batch_size):
            score, hit = scorer(perturb(image, step), image.to(scorer.original.device))
            scores.append(score)
            hits.append(hit)
    accuracy = None if hits[0] is None else torch.cat(hits).view(count, steps)
    return torch.cat(scores).view(count, steps), accuracy


@metric("faithfulness")
def road(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target = None,
    percentages: Sequence[float] = tuple(range(10, 100, 10)),
    *,
    score: str = "probability",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 16,
    output: OutputSelector = None,
    denormalize: Transform | None = None,
    normalize: Transform | None = None,
) -> MetricResult:
    """ROAD (Rong et al., ICML 2022): RemOve And Debias with noisy linear imputation.

    At each percentage p, the p% most relevant pixels (MoRF) or least relevant pixels (LeRF) are
    removed and imputed (``noisy_linear_impute``), and the model scores the result. A faithful map
    makes the MoRF score fall fast and the LeRF score stay high. Per image the score is
    ``mean_p (LeRF_p - MoRF_p) / 2`` (pytorch-grad-cam's ROADCombined); higher is better.
    Curves ``morf``, ``lerf`` (scores) and ``morf_accuracy``, ``lerf_accuracy`` (target class still
    predicted) are (B, len(percentages)). p% means exactly round(p/100 * H*W) pixels.

    Imputation happens in the space of the images given (after the model's normalisation if the
    images are normalised, as pytorch-grad-cam does); pass ``denormalize`` and ``normalize`` to
    impute in pixel space instead.
    """
    images, maps = _inputs(model, images, maps)
    levels = torch.as_tensor(list(percentages), dtype=torch.float64)
    if levels.numel() == 0 or (levels <= 0).any() or (levels >= 100).any():
        raise ValueError(f"percentages must lie strictly between 0 and 100, got {levels.tolist()}")
    if (denormalize is None) != (normalize is None):
        raise ValueError("give both denormalize and normalize (pixel space and back), or neither")
    space = images if denormalize is None else denormalize(images)
    pixels = maps[0].numel()
    counts = (levels / 100 * pixels).round().long().tolist()
    ranks = {"morf": pixel_ranks(maps, True, seed), "lerf": pixel_ranks(maps, False, seed)}
    fields = noise_fields(space, range(space.shape[0]), seed) * noise
    scorer = _Scorer(model, images, targets, score, output, batch_size)
    count = torch.tensor(counts, device=images.device)

    def perturb(order: str) -> Callable[[Tensor, Tensor], Tensor]:
        def removed_images(image: Tensor, step: Tensor) -> Tensor:
            image, step = image.to(images.device), step.to(images.device)
            removed = ranks[order][image] < count[step][:, None, None]
            filled = impute(space[image], removed, fields[image])
            return filled if normalize is None else normalize(filled)

        return removed_images

    curves = {}
    for order in ("morf", "lerf"):
        curves[order], curves[f"{order}_accuracy"] = _run(model, scorer, images.shape[0], len(counts), perturb(order))
    curves = {k: v for k, v in curves.items() if v is not None}
    curves["original"] = scorer.original[:, None]
    per_image = ((curves["lerf"] - curves["morf"]) / 2).mean(1)
    return MetricResult(
        "road",
        per_image,
        True,
        curves,
        levels.float(),
        {
            "score": score,
            "noise": noise,
            "seed": seed,
            "imputation": "pixel space" if normalize is not None else "as given",
        },
    )


def _trapezoid(curve: Tensor) -> Tensor:
    """Area under (B, n+1) values at x = 0, 1/n, ..., 1 by the trapezoid rule."""
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * (curve.shape[1] - 1))


def _reveal(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target,
    start: Tensor,
    end: Tensor,
    name: str,
    higher_is_better: bool,
    steps: int,
    score: str,
    batch_size: int,
    output: OutputSelector,
    seed: int,
) -> MetricResult:
    """Move pixels from ``start`` to ``end`` in map order over ``steps`` steps; AUC of the score."""
    positive_int(steps, "steps")
    ranks = pixel_ranks(maps, True, seed)
    pixels = maps[0].numel()
    count = torch.tensor([math.floor(pixels * s / steps + 0.5) for s in range(steps + 1)], device=images.device)
    scorer = _Scorer(model, images, targets, score, output, batch_size)

    def perturb(image: Tensor, step: Tensor) -> Tensor:
        image, step = image.to(images.device), step.to(images.device)
        moved = (ranks[image] < count[step][:, None, None])[:, None]
        return torch.where(moved, end[image], start[image])

    curve, accuracy = _run(model, scorer, images.shape[0], steps + 1, perturb)
    curves = {"score": curve} | ({} if accuracy is None else {"accuracy": accuracy})
    return MetricResult(
        name,
        _trapezoid(curve),
        higher_is_better,
        curves,
        torch.linspace(0, 1, steps + 1),
        {"score": score, "steps": steps},
    )


@metric("faithfulness", higher_is_better=False)
def deletion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target = None,
    *,
    steps: int = 100,
    baseline: float | Tensor = 0.0,
    score: str = "probability",
    batch_size: int = 16,
    output: OutputSelector = None,
    seed: int = 0,
) -> MetricResult:
    """Deletion AUC (Petsiuk et al., RISE, BMVC 2018): lower is better.

    The most relevant pixels are set to ``baseline`` (0 by default, in the space of the images
    given; a tensor broadcastable to the images also works), a fraction k/steps of the pixels at step
    k = 0..steps; the score per step forms the ``score`` curve and the result is its trapezoid area
    over the fraction removed in [0, 1]. A faithful map makes the score collapse early.
    """
    images, maps = _inputs(model, images, maps)
    end = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).expand_as(images)
    return _reveal(model, images, maps, targets, images, end, "deletion", False, steps, score, batch_size, output, seed)


@metric("faithfulness")
def insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target = None,
    *,
    steps: int = 100,
    blur_sigma: float = 5.0,
    score: str = "probability",
    batch_size: int = 16,
    output: OutputSelector = None,
    seed: int = 0,
) -> MetricResult:
    """Insertion AUC (Petsiuk et al., RISE, BMVC 2018): higher is better.

    Starting from the image blurred by a Gaussian of standard deviation ``blur_sigma`` pixels
    (kernel 2*ceil(3 sigma)+1, reflect padding), the most relevant pixels of the original are put
    back, a fraction k/steps at step k = 0..steps; the result is the trapezoid area under the score.
    """
    images, maps = _inputs(model, images, maps)
    if blur_sigma <= 0:
        raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
    blurred = blur(images, blur_sigma)
    return _reveal(
        model, images, maps, targets, blurred, images, "insertion", True, steps, score, batch_size, output, seed
    )


def _masked_scores(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target,
    score: str,
    batch_size: int,
    output: OutputSelector,
    denormalize: Transform | None,
    normalize: Transform | None,
) -> tuple[Tensor, Tensor]:
    """Original scores Y and scores O on the images multiplied by their maps."""
    images, maps = _inputs(model, images, maps)
    if maps.min() < 0 or maps.max() > 1:
        raise ValueError(
            "maps must lie in [0, 1] to multiply the image: normalise them (explainers return [0, 1] maps)"
        )
    if (denormalize is None) != (normalize is None):
        raise ValueError("give both denormalize and normalize (pixel space and back), or neither")
    scorer = _Scorer(model, images, targets, score, output, batch_size)

    def masked(image: Tensor, step: Tensor) -> Tensor:
        image = image.to(images.device)
        if denormalize is None:
            return images[image] * maps[image][:, None]
        return normalize(denormalize(images[image]) * maps[image][:, None])  # type: ignore[misc]

    explained, _ = _run(model, scorer, images.shape[0], 1, masked)
    return scorer.original, explained[:, 0]


@metric("faithfulness", higher_is_better=False)
def average_drop(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target = None,
    *,
    score: str = "probability",
    batch_size: int = 16,
    output: OutputSelector = None,
    denormalize: Transform | None = None,
    normalize: Transform | None = None,
) -> MetricResult:
    """Average Drop % (Chattopadhay et al., Grad-CAM++, WACV 2018): lower is better.

    ``100 * max(0, Y - O) / Y`` per image, Y the score on the image, O the score on the image
    multiplied by its map (in the space of the images given, or in pixel space with
    ``denormalize``/``normalize``). Needs positive scores: use probabilities (the default).
    """
    original, explained = _masked_scores(
        model, images, maps, targets, score, batch_size, output, denormalize, normalize
    )
    if (original <= 0).any():
        raise ValueError(
            "Average Drop divides by the original score, which is <= 0 for some image; use score='probability'"
        )
    drop = 100 * (original - explained).clamp(min=0) / original
    return MetricResult(
        "average_drop",
        drop,
        False,
        {"original": original[:, None], "explained": explained[:, None]},
        settings={"score": score},
    )


@metric("faithfulness")
def increase_in_confidence(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Target = None,
    *,
    score: str = "probability",
    batch_size: int = 16,
    output: OutputSelector = None,
    denormalize: Transform | None = None,
    normalize: Transform | None = None,
) -> MetricResult:
    """Increase in Confidence % (Chattopadhay et al., Grad-CAM++, WACV 2018): higher is better.

    ``100 * [O > Y]`` per image (its mean is the percentage of images whose score rises when the
    image is multiplied by its map), with Y and O as in ``average_drop``.
    """
    original, explained = _masked_scores(
        model, images, maps, targets, score, batch_size, output, denormalize, normalize
    )
    increase = 100 * (explained > original).float()
    return MetricResult(
        "increase_in_confidence",
        increase,
        True,
        {"original": original[:, None], "explained": explained[:, None]},
        settings={"score": score},
    )
