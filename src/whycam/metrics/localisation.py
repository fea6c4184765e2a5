"""Localisation: does the map fall on the object? Maps (B, H, W) against ground truth.

Ground truth is given as boxes (B, 4) ``x0, y0, x1, y1`` in pixels, covering the pixels
``x0 <= x < x1, y0 <= y < y1`` (half-open, so a box's area is ``(x1 - x0) * (y1 - y0)``), as
several boxes per image (B, M, 4) (pad with empty boxes such as ``0, 0, 0, 0``), or as boolean
masks (B, H, W); every metric accepts each. Pixel metrics read several boxes as their union; the
box metrics match the map's box with the best-fitting ground-truth box (a hit on any object, as
Choe et al.'s MaxBoxAccV2). No model is needed. A map that is zero
everywhere (whycam's output for a constant map) is read as uniform: it points nowhere in
particular, so it scores at chance. Ties are broken by a random order seeded with
``seed + image index``. Everything is vectorised in torch except the connected components of the
box metrics (scipy.ndimage, one call for all images and thresholds).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .ranks import top_pixels
from .registry import metric
from .result import MetricResult


def _maps(maps: Tensor) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        raise ValueError(
            f"maps must be a (B, H, W) tensor; got "
            f"{tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__}"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinity")
    return maps.float()


def _is_boxes(truth: Tensor, batch: int) -> bool:
    return truth.shape[0] == batch and truth.shape[-1] == 4 and truth.dim() in (2, 3)


def ground_truth_masks(truth: Tensor, maps: Tensor) -> Tensor:
    """Ground truth as a bool (B, H, W) mask: a mask is checked, (B, 4) or (B, M, 4) boxes are drawn
    (several boxes: their union)."""
    batch, height, width = maps.shape
    if not isinstance(truth, Tensor):
        raise TypeError(
            f"ground truth must be (B, 4) or (B, M, 4) boxes or (B, H, W) masks, not {type(truth).__name__}"
        )
    if truth.shape == maps.shape:
        return truth.to(maps.device).bool()
    if _is_boxes(truth, batch):
        boxes = _truth_boxes(truth, maps)
        ys = torch.arange(height, device=maps.device)[None, None, :, None]
        xs = torch.arange(width, device=maps.device)[None, None, None, :]
        x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
        return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).any(1)
    raise ValueError(
        f"ground truth {tuple(truth.shape)} fits neither ({batch}, 4) or ({batch}, M, 4) boxes "
        f"nor {tuple(maps.shape)} masks matching the maps"
    )


def _boxes_of(masks: Tensor) -> Tensor:
    """Half-open bounding boxes (B, 4) of bool masks (an empty mask gives an empty box)."""
    rows, cols = masks.any(2), masks.any(1)
    height, width = masks.shape[-2:]
    ys, xs = torch.arange(height, device=masks.device), torch.arange(width, device=masks.device)
    x0 = torch.where(cols, xs, width).min(1).values
    x1 = torch.where(cols, xs + 1, 0).max(1).values
    y0 = torch.where(rows, ys, height).min(1).values
    y1 = torch.where(rows, ys + 1, 0).max(1).values
    return torch.stack([x0, y0, x1.clamp(min=x0), y1.clamp(min=y0)], 1).float()


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching half-open boxes (..., 4); 0 when both are empty."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = width * height
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0)


def _uniform_if_zero(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    zero = (flat == 0).all(1)[:, None, None]
    return torch.where(zero, torch.ones_like(maps), maps)


def _best_iou(boxes: Tensor, truth_boxes: Tensor) -> Tensor:
    """IoU of each box (N, 4) with the best-fitting of its ground-truth boxes (N, M, 4)."""
    return box_iou(boxes[:, None], truth_boxes).amax(1)


def _component_boxes(masks: Tensor, truth_boxes: Tensor, largest: bool) -> Tensor:
    """Box per (N, H, W) mask: of its largest 8-connected component, or of the component best matching
    any of its ``truth_boxes`` (N, M, 4) in IoU (MaxBoxAccV2's multi-contour rule)."""
    count = masks.shape[0]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity within a plane, none across planes
    labels, n = ndimage.label(masks.cpu().numpy(), structure=structure)
    if n == 0:
        return torch.zeros(count, 4, device=masks.device)
    slices = ndimage.find_objects(labels)
    extent = torch.tensor(
        [[s[0].start, s[2].start, s[1].start, s[2].stop, s[1].stop] for s in slices], device=masks.device
    )
    plane, boxes = extent[:, 0], extent[:, 1:].float()
    if largest:
        quality = torch.from_numpy(np.bincount(labels.ravel(), minlength=n + 1)[1:]).to(masks.device).float()
    else:
        quality = _best_iou(boxes, truth_boxes[plane])
    best = torch.full((count,), -1.0, device=masks.device).scatter_reduce(0, plane, quality, "amax")
    index = torch.arange(n, device=masks.device)
    candidate = torch.where(quality == best[plane], index, n)
    first = torch.full((count,), n, device=masks.device).scatter_reduce(0, plane, candidate, "amin")
    padded = torch.cat([boxes, torch.zeros(1, 4, device=masks.device)])  # planes without a component
    return padded[first]


def _truth_boxes(truth: Tensor, maps: Tensor) -> Tensor:
    """The ground-truth boxes (B, M, 4) for (B, H, W) maps: the boxes given, or each mask's bounding
    box (M = 1)."""
    if not isinstance(truth, Tensor) or truth.shape == maps.shape or not _is_boxes(truth, maps.shape[0]):
        return _boxes_of(ground_truth_masks(truth, maps))[:, None]
    boxes = truth.to(maps.device).float()
    boxes = boxes[:, None] if boxes.dim() == 2 else boxes
    if not torch.isfinite(boxes).all() or ((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])).any():
        raise ValueError("boxes must be finite x0, y0, x1, y1 with x0 <= x1 and y0 <= y1 (pad with 0, 0, 0, 0)")
    return boxes


@metric("localisation", truth="boxes")
def box_accuracy(maps: Tensor, truth: Tensor, tau: float = 0.2, iou_threshold: float = 0.5) -> MetricResult:
    """Box accuracy, the CAM protocol (Zhou et al., CVPR 2016): higher is better.

    The map is thresholded at ``tau * max``; the bounding box of its largest 8-connected component
    is a hit when its IoU with a ground-truth box (the best-fitting of several, or the mask's bounding
    box) is at least ``iou_threshold``. Per image 1 (hit) or 0; the summary is the fraction of hits.
    """
    maps = _uniform_if_zero(_maps(maps))
    reference = _truth_boxes(truth, maps)
    predicted = _component_boxes(maps >= tau * maps.flatten(1).max(1).values[:, None, None], reference, True)
    iou = _best_iou(predicted, reference)
    return MetricResult(
        "box_accuracy",
        (iou >= iou_threshold).float(),
        True,
        {"iou": iou[:, None]},
        settings={"tau": tau, "iou_threshold": iou_threshold},
    )


@metric("localisation", truth="boxes")
def max_box_accuracy(
    maps: Tensor,
    truth: Tensor,
    taus: Tensor | None = None,
    iou_thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
    *,
    component: str = "best",
) -> MetricResult:
    """MaxBoxAccV2 (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right",
    CVPR 2020): higher is better.

    For each threshold tau (default 0, 0.01, ..., 0.99 of the map's max) the map's boxes are taken
    from its 8-connected components (``component="best"``: the component box best matching the
    ground truth, as V2's multi-contour rule; ``"largest"``: the largest component, as V1);
    ``BoxAcc(tau, delta)`` is the fraction of images with IoU >= delta. The value is
    ``mean_delta max_tau BoxAcc(tau, delta)`` over delta in {0.3, 0.5, 0.7}; the best tau is chosen
    over the whole dataset (and again within each bootstrap resample). Per-image scores are the hits
    at each delta's best tau, averaged over delta, so their mean is the value.
    Choe et al. normalise maps by min-max first; whycam's maps already are.
    """
    if component not in ("best", "largest"):
        raise ValueError(f"component must be 'best' or 'largest', not {component!r}")
    maps = _uniform_if_zero(_maps(maps))
    reference = _truth_boxes(truth, maps)
    taus = torch.arange(100, dtype=torch.float64) / 100 if taus is None else torch.as_tensor(taus)
    taus = taus.to(maps.device).float()
    deltas = torch.as_tensor(iou_thresholds, device=maps.device).float()
    batch, steps = maps.shape[0], taus.numel()
    peak = maps.flatten(1).max(1).values[:, None, None, None]
    per_chunk = max(1, 2**24 // (steps * maps[0].numel()))  # at most ~16M thresholded pixels at once
    ious = []
    for start in range(0, batch, per_chunk):
        chunk = slice(start, start + per_chunk)
        thresholded = (maps[chunk, None] >= taus[None, :, None, None] * peak[chunk]).flatten(0, 1)
        truth_boxes = reference[chunk].repeat_interleave(steps, 0)
        predicted = _component_boxes(thresholded, truth_boxes, component == "largest")
        ious.append(_best_iou(predicted, truth_boxes).view(-1, steps))
    iou = torch.cat(ious)
    hits = (iou[:, None, :] >= deltas[None, :, None]).float()  # (B, deltas, taus)
    best = hits.mean(0).argmax(1)  # first best tau per delta
    per_image = hits.gather(2, best[None, :, None].expand(batch, -1, 1))[..., 0].mean(1)

    def statistic(indices: Tensor) -> Tensor:
        return hits[indices].mean(1).amax(2).mean(1)

    return MetricResult(
        "max_box_accuracy",
        per_image,
        True,
        {"iou": iou, "box_accuracy": hits.mean(0)},
        taus,
        {"iou_thresholds": tuple(iou_thresholds), "component": component, "best_tau": taus[best].tolist()},
        statistic,
    )


@metric("localisation", truth="mask")
def mask_iou(maps: Tensor, truth: Tensor, tau: float = 0.5) -> MetricResult:
    """IoU of the map thresholded at ``tau * max`` with the ground-truth mask: higher is better."""
    maps = _uniform_if_zero(_maps(maps))
    masks = ground_truth_masks(truth, maps)
    predicted = maps >= tau * maps.flatten(1).max(1).values[:, None, None]
    return MetricResult("mask_iou", _iou(predicted, masks), True, settings={"tau": tau})


def _iou(a: Tensor, b: Tensor) -> Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.nan)


def _top_k(maps: Tensor, masks: Tensor, seed: int) -> Tensor:
    """The k most relevant pixels of each map, k = the ground truth's area (ties: seeded order)."""
    return top_pixels(maps, masks.flatten(1).sum(1), seed)


@metric("localisation", truth="mask")
def topk_iou(maps: Tensor, truth: Tensor, seed: int = 0) -> MetricResult:
    """IoU of the map's top-k pixels with the ground truth, k = its area: higher is better."""
    maps = _maps(maps)
    masks = ground_truth_masks(truth, maps)
    return MetricResult("topk_iou", _iou(_top_k(maps, masks, seed), masks), True, settings={"seed": seed})


@metric("localisation", truth="mask")
def relevance_rank_accuracy(maps: Tensor, truth: Tensor, seed: int = 0) -> MetricResult:
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022): higher is better.

    The fraction of the map's top-k pixels inside the ground truth, k = its area (Quantus's
    RelevanceRankAccuracy). NaN for an empty ground truth.
    """
    maps = _maps(maps)
    masks = ground_truth_masks(truth, maps)
    inside = (_top_k(maps, masks, seed) & masks).flatten(1).sum(1).float()
    area = masks.flatten(1).sum(1).float()
    accuracy = torch.where(area > 0, inside / area.clamp(min=1), torch.nan)
    return MetricResult("relevance_rank_accuracy", accuracy, True, settings={"seed": seed})


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Average precision of each row of (B, N) scores against bool labels, as scikit-learn's
    ``average_precision_score``: ``sum_n (R_n - R_(n-1)) P_n`` over the distinct score thresholds.
    NaN for a row without positives."""
    ordered, order = scores.sort(dim=1, descending=True)
    hits = labels.gather(1, order).double()
    count = scores.shape[1]
    position = torch.arange(count, device=scores.device).expand_as(ordered)
    ends = torch.ones_like(ordered, dtype=torch.bool)
    ends[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    group_end = torch.where(ends, position, count).flip(1).cummin(1).values.flip(1)
    precision = hits.cumsum(1) / (position + 1)
    positives = hits.sum(1)
    ap = (hits * precision.gather(1, group_end)).sum(1) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, torch.nan)


@metric("localisation", truth="mask")
def auprc(maps: Tensor, truth: Tensor) -> MetricResult:
    """Area under the precision-recall curve of the map as a pixel classifier of the ground truth,
    as average precision: higher is better; chance is the ground truth's area fraction.

    The summary is the mean of the per-image AP; ``settings["pooled"]`` holds the AP of all pixels
    of all images pooled into one ranking (maps compared across images as they are).
    """
    maps = _maps(maps)
    masks = ground_truth_masks(truth, maps)
    per_image = average_precision(maps.flatten(1).double(), masks.flatten(1))
    pooled = float(average_precision(maps.flatten()[None].double(), masks.flatten()[None])[0])
    return MetricResult("auprc", per_image.float(), True, settings={"pooled": pooled})


@metric("localisation", truth="either")
def pointing_game(maps: Tensor, truth: Tensor, tolerance: float = 15.0, seed: int = 0) -> MetricResult:
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016):
    higher is better.

    A hit when the map's maximum lies within ``tolerance`` pixels (Euclidean) of the ground truth;
    ties for the maximum are broken by a seeded random order, so a constant map hits at chance.
    NaN for an empty ground truth.
    """
    maps = _maps(maps)
    masks = ground_truth_masks(truth, maps)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    peak = top_pixels(maps, torch.ones(maps.shape[0], dtype=torch.long), seed).flatten(1).float().argmax(1)
    width = maps.shape[-1]
    ys = torch.arange(maps.shape[-2], device=maps.device)[None, :, None] - (peak // width)[:, None, None]
    xs = torch.arange(width, device=maps.device)[None, None, :] - (peak % width)[:, None, None]
    near = (ys**2 + xs**2) <= tolerance**2
    hit = (near & masks).flatten(1).any(1).float()
    empty = ~masks.flatten(1).any(1)
    return MetricResult(
        "pointing_game", torch.where(empty, torch.nan, hit), True, settings={"tolerance": tolerance, "seed": seed}
    )


@metric("localisation", truth="boxes")
def energy_pointing_game(maps: Tensor, truth: Tensor) -> MetricResult:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020): higher is better.

    ``sum(map inside the ground truth) / sum(map)`` per image (Quantus's RelevanceMassAccuracy);
    maps must be non-negative, and a zero map counts as uniform (its score is the area fraction).
    """
    maps = _maps(maps)
    if (maps < 0).any():
        raise ValueError("energy_pointing_game needs non-negative maps: apply ReLU (explainers return maps in [0, 1])")
    maps = _uniform_if_zero(maps)
    masks = ground_truth_masks(truth, maps)
    energy = (maps * masks).flatten(1).sum(1) / maps.flatten(1).sum(1)
    empty = ~masks.flatten(1).any(1)
    return MetricResult("energy_pointing_game", torch.where(empty, torch.nan, energy), True)
