"""What is explained: the model's output tensor, and one scalar score per image taken from it.

A target is ``None`` (the predicted class), an ``int`` (one class for every image), a sequence or
tensor with one class per image, or a callable ``f(output) -> (B,)`` scores. The named targets below
are such callables: ``Class``, ``Versus`` ("why this class, not that one"), ``Labels`` (multi-label),
``Output`` (regression), ``Region`` (a segmentation region), ``Detection`` (a detector's box),
``Similarity`` (cosine to an embedding);
``parse_target`` reads them from a command-line spec. Models returning a tuple or dict are read through
an output selector: an index, a key, or a callable; by default the first tensor, the
``"logits"``/``"out"`` key, or, for a torchvision detector's list of dicts, its (B, M, 6) detections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Target = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None
OutputSelector = int | str | Callable[[object], Tensor] | None


def select_output(output: object, selector: OutputSelector = None) -> Tensor:
    """The tensor explained from a model's raw output."""
    if callable(selector):
        output = selector(output)
    elif selector is not None:
        try:
            output = output[selector]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(
                f"output selector {selector!r} does not fit the model's output ({type(output).__name__}): {error}"
            ) from None
    elif isinstance(output, dict):
        key = next((k for k in ("logits", "out") if k in output), None)
        if key is None:
            raise ValueError(
                f"the model returns a dict with keys {sorted(output)}; pass output='<key>' to say which one to explain"
            )
        output = output[key]
    elif isinstance(output, (tuple, list)) and output and all(isinstance(o, dict) and "boxes" in o for o in output):
        output = detections(output)
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the selected model output is {type(output).__name__}, not a tensor; "
            "pass output=<index, key or callable> to select a tensor"
        )
    if not torch.isfinite(output).all():
        bad = (~torch.isfinite(output.detach())).flatten(1).any(1).nonzero().flatten().tolist()
        raise FloatingPointError(
            f"the model's output contains NaN or infinity for image(s) {bad}; check the "
            "input's scale and the model's weights"
        )
    return output


def target_classes(output: Tensor, target: Target) -> Tensor:
    """One class index per image (B,) for a class target; ``None`` gives the argmax."""
    if output.dim() != 2:
        raise ValueError(
            f"a class target needs a (B, classes) output, the model gives {tuple(output.shape)}; "
            "pass target=<callable mapping the output to (B,) scores>"
        )
    batch, n_classes = output.shape
    if target is None:
        return output.detach().argmax(1)
    classes = class_indices(target, batch, output.device)
    if ((classes < 0) | (classes >= n_classes)).any():
        raise ValueError(
            f"target class(es) {classes.tolist()} out of range: the model has {n_classes} classes (0..{n_classes - 1})"
        )
    return classes


def class_indices(target: int | Sequence[int] | Tensor, batch: int, device=None) -> Tensor:
    """One class index per image (B,) from one class or one per image (the range is checked against
    the model's output by ``target_classes``)."""
    classes = torch.as_tensor(target, device=device).long().flatten()
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise ValueError(f"got {classes.numel()} targets for {batch} images; give one class, or one per image")
    return classes


def callable_scores(target: Callable[[Tensor], Tensor], output: Tensor) -> Tensor:
    """``target(output)``, refused unless it is one score per image, (B,)."""
    scores = target(output)
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != output.shape[0]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"a callable target must return one score per image, shape ({output.shape[0]},); it returned {shape}"
        )
    return scores


def target_scores(output: Tensor, target: Target) -> tuple[Tensor, Tensor | None]:
    """The score explained for each image (B,), and the class indices when the target is a class."""
    if callable(target):
        return callable_scores(target, output), None
    classes = target_classes(output, target)
    return output.gather(1, classes[:, None]).squeeze(1), classes


def pin_target(target: Target, batch: int, predict: Callable[[], Tensor]) -> Tensor | Callable[[Tensor], Tensor]:
    """The target fixed for a batch of ``batch`` unaltered images: one class per image, or the callable
    itself. ``None`` becomes the predicted class, from ``predict()`` (the unaltered images' output),
    which runs only then. Methods that run the model on many perturbed or noisy copies explain the
    same class for every copy of an image."""
    if callable(target):
        return target
    if target is None:
        return target_classes(predict(), None)
    return class_indices(target, batch)


def target_rows(pinned: Tensor | Callable[[Tensor], Tensor], rows: Tensor) -> Target:
    """A pinned target for an expanded batch whose row r is a copy of image ``rows[r]`` (a callable
    target is applied to the expanded batch's output as it is)."""
    return pinned if callable(pinned) else pinned[rows.to(pinned.device)]


# ----------------------------------------------------------------------------- named targets
# Each is a callable ``target(output) -> (B,)`` scores, applied to the selected output of a batch (or of
# a chunk of perturbed copies: every named target scores each row on its own).


class Class:
    """The logit of class ``index`` (one class, or one per image): ``output[b, c_b]``. The default
    target ``None`` is the predicted class."""

    def __init__(self, index: int | Sequence[int]):
        self.index = index

    def __str__(self) -> str:
        return f"class:{self.index}"

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 2:
            raise ValueError(f"a class target needs a (B, classes) output, the model gives {tuple(output.shape)}")
        classes = torch.as_tensor(self.index, device=output.device).long().flatten()
        classes = classes.expand(output.shape[0]) if classes.numel() == 1 else classes
        return output.gather(1, classes[:, None]).squeeze(1)


class Versus:
    """ "Why ``target``, not ``versus``": the logit difference ``output[b, target] - output[b, versus]``,
    two class indices. Any class-score method explains it as this score; FinerCAM reads it as its own
    score with the comparison set {versus} (which is the same score: one class's weight cancels)."""

    def __init__(self, target: int, versus: int):
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in (target, versus)):
            raise ValueError(f"Versus takes two class indices, got {target!r} and {versus!r}")
        if target == versus:
            raise ValueError(f"Versus compares two different classes, got {target} twice")
        self.target, self.versus = target, versus

    def __str__(self) -> str:
        return f"versus:{self.target},{self.versus}"

    def __repr__(self) -> str:
        return f"Versus({self.target}, {self.versus})"

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 2 or max(self.target, self.versus) >= output.shape[1]:
            raise ValueError(
                f"classes {self.target} and {self.versus} do not fit the model's output {tuple(output.shape)}"
            )
        return output[:, self.target] - output[:, self.versus]


def describe_target(target: Target) -> str:
    """A callable target as text: a named target as its command-line spec, anything else "callable"."""
    named = (Class, Versus, Labels, Output, Region, Similarity, Detection)
    return str(target) if isinstance(target, named) else "callable"


class Labels:
    """Several labels of a multi-label model: the sum of their logits, ``sum_{c in labels} output[b, c]``."""

    def __init__(self, labels: Sequence[int]):
        if not labels:
            raise ValueError("Labels needs at least one label index")
        self.labels = list(labels)

    def __str__(self) -> str:
        return "labels:" + ",".join(map(str, self.labels))

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 2 or max(self.labels) >= output.shape[1]:
            raise ValueError(f"labels {self.labels} do not fit the model's output {tuple(output.shape)}")
        return output[:, self.labels].sum(1)


class Output:
    """A regression output: ``output[b, index]`` (a (B,) or (B, 1) output needs no index)."""

    def __init__(self, index: int = 0):
        self.index = index

    def __str__(self) -> str:
        return f"output:{self.index}"

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() == 1:
            return output
        if output.dim() != 2 or self.index >= output.shape[1]:
            raise ValueError(f"output index {self.index} does not fit the model's output {tuple(output.shape)}")
        return output[:, self.index]


class Region:
    """A region of a segmentation output, (B, classes, h, w) or, for volumes, (B, classes, d, h, w): the
    class logits summed over a mask, ``sum_v output[b, c, v] * mask[b, v]`` over the output's grid
    cells v (as pytorch-grad-cam's SemanticSegmentationTarget).

    ``mask``: the grid's shape, (H, W) or (D, H, W), or one per image, (B, H, W) or (B, D, H, W),
    resized to the output's grid by nearest neighbour; a mask whose sides are not the grid's at one
    common scale (axes swapped, a 2-D mask for a volume) is refused. ``None`` takes the cells the
    model assigns to class c (its argmax)."""

    def __init__(self, label: int, mask: Tensor | None = None):
        self.label = label
        self.mask = mask

    def __str__(self) -> str:
        return f"region:{self.label}" + ("" if self.mask is None else "@mask")

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() not in (4, 5) or self.label >= output.shape[1]:
            raise ValueError(
                f"a region target needs a segmentation output (B, classes, h, w) or (B, classes, d, h, w) with "
                f"class {self.label}; the model gives {tuple(output.shape)}"
            )
        grid = tuple(output.shape[2:])
        if self.mask is None:
            mask = (output.detach().argmax(1) == self.label).to(output.dtype)
        else:
            mask = region_mask(torch.as_tensor(self.mask, device=output.device), output.shape[0], grid)
            mask = mask.to(output.dtype)
        return (output[:, self.label] * mask).flatten(1).sum(1)


def region_mask(mask: Tensor, batch: int, grid: tuple[int, ...]) -> Tensor:
    """A region's mask, (*side) or (B, *side) with as many sides as the output's ``grid``, as (B, *grid)
    by nearest neighbour; refused unless its sides are the grid's at one common scale f, each side
    within one cell of grid * f (an output at the input's resolution, or downsampled by a stride)."""
    axes = "x".join("DHW"[-len(grid) :])
    if mask.dim() == len(grid):
        mask = mask.expand(batch, *mask.shape)
    if mask.dim() != len(grid) + 1 or mask.shape[0] != batch:
        raise ValueError(
            f"a region mask for a {len(grid)}-D segmentation output (grid {'x'.join(map(str, grid))}) is ({axes}) "
            f"or ({batch}x{axes}) for {batch} images; got {tuple(mask.shape)}"
        )
    sides = mask.shape[1:]
    low = max(n / (g + 1) for n, g in zip(sides, grid, strict=True))
    high = min(n / (g - 1) if g > 1 else float("inf") for n, g in zip(sides, grid, strict=True))
    if low >= high:
        raise ValueError(
            f"the region mask's sides {tuple(sides)} are not the output grid {grid} at one scale (axes swapped, "
            f"or a mask of another image?); give a ({axes}) mask of the input's or the output's shape, "
            "with its axes in the output's order"
        )
    return F.interpolate(mask[:, None].float(), size=grid, mode="nearest")[:, 0]


class Similarity:
    """Cosine similarity between the output embedding (B, D) and a reference embedding (D,) or (B, D):
    image-image retrieval, or image-text for a CLIP-style model given a text embedding."""

    def __init__(self, reference: Tensor):
        self.reference = torch.as_tensor(reference).float()

    def __str__(self) -> str:
        return f"similarity:({self.reference.shape[-1]}-d embedding)"

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 2 or output.shape[1] != self.reference.shape[-1]:
            raise ValueError(
                f"a similarity target needs a (B, {self.reference.shape[-1]}) embedding output, the model gives "
                f"{tuple(output.shape)}; pass output=<the embedding's key or index>"
            )
        return F.cosine_similarity(output, self.reference.to(output), dim=-1)


class Detection:
    """The score of the detection that best matches ``box`` (x1, y1, x2, y2; by IoU, among boxes of
    ``label`` if given) in a torchvision detector's output, read as (B, M, 6) rows ``x1, y1, x2, y2,
    score, label`` (``select_output`` turns the detector's list of dicts into that). An image with
    no overlapping detection scores 0."""

    def __init__(self, box: Sequence[float], label: int | None = None):
        self.box = torch.as_tensor(box, dtype=torch.float32).flatten()
        if self.box.numel() != 4:
            raise ValueError(f"a detection target's box is x1, y1, x2, y2; got {box!r}")
        self.label = label

    def __str__(self) -> str:
        box = ",".join(f"{v:g}" for v in self.box.tolist())
        return f"box:{box}" + ("" if self.label is None else f"@{self.label}")

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 3 or output.shape[2] != 6:
            raise ValueError(
                f"a detection target reads a torchvision detector's output (a list of dicts with boxes, scores "
                f"and labels); the model gives {tuple(output.shape)}"
            )
        boxes, scores, labels = output[..., :4].detach(), output[..., 4], output[..., 5].detach()
        box = self.box.to(boxes)
        width = (torch.minimum(boxes[..., 2], box[2]) - torch.maximum(boxes[..., 0], box[0])).clamp(min=0)
        height = (torch.minimum(boxes[..., 3], box[3]) - torch.maximum(boxes[..., 1], box[1])).clamp(min=0)
        inter = width * height
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        iou = inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter).clamp(min=1e-9)
        if self.label is not None:
            iou = torch.where(labels == self.label, iou, 0.0)
        best = iou.argmax(1, keepdim=True)
        return torch.where(iou.gather(1, best) > 0, scores.gather(1, best), 0.0).squeeze(1)


def detections(output: Sequence[dict]) -> Tensor:
    """A torchvision detector's list of ``{boxes, scores, labels}`` as one (B, M, 6) tensor, rows
    ``x1, y1, x2, y2, score, label``, padded with zero rows of label -1 to the largest M."""
    rows = [torch.cat([d["boxes"], d["scores"][:, None], d["labels"][:, None].to(d["boxes"].dtype)], 1) for d in output]
    most = max(1, max(r.shape[0] for r in rows))
    padding = [r.new_tensor([0.0, 0, 0, 0, 0, -1]).expand(most - r.shape[0], 6) for r in rows]
    return torch.stack([torch.cat([r, p]) for r, p in zip(rows, padding, strict=True)])


TARGET_KINDS = ("class", "versus", "labels", "output", "region", "box", "similarity")


def parse_target(spec: str, load: Callable[[str], Tensor] | None = None) -> Target:
    """A target from a command-line spec: ``3`` or ``class:3``, ``versus:3,5`` (why 3, not 5),
    ``labels:3,5``, ``output:0``,
    ``region:2`` (the pixels predicted as class 2) or ``region:2@mask.png``, ``box:x1,y1,x2,y2[@label]``,
    ``similarity:embedding.npy``. ``load`` reads a file (a mask or an embedding) into a tensor."""
    kind, _, value = spec.partition(":") if ":" in spec else ("class", ":", spec)
    try:
        if kind == "class":
            return int(value)
        if kind == "versus":
            classes = [int(v) for v in value.split(",")]
            if len(classes) != 2:
                raise ValueError("give two classes, versus:TARGET,OTHER")
            return Versus(*classes)
        if kind == "labels":
            return Labels([int(v) for v in value.split(",")])
        if kind == "output":
            return Output(int(value or 0))
        if kind == "region":
            label, _, path = value.partition("@")
            return Region(int(label), _load(load, path) if path else None)
        if kind == "box":
            box, _, label = value.partition("@")
            return Detection([float(v) for v in box.split(",")], int(label) if label else None)
        if kind == "similarity":
            return Similarity(_load(load, value))
    except ValueError as error:
        raise ValueError(f"cannot read the target {spec!r}: {error}") from None
    raise ValueError(f"unknown target kind {kind!r} in {spec!r}; choose one of {', '.join(TARGET_KINDS)}")


def _load(load: Callable[[str], Tensor] | None, path: str) -> Tensor:
    if load is None:
        raise ValueError(f"the target needs a file ({path}) and no file reader was given")
    return load(path)
