"""The three benchmark tasks of docs/results.md: real images, exact ground truth, seeded.

Every generator returns a ``TaskData``: images (N, 3, H, W) float32 in [0, 1] (the models of
``train_tasks`` normalise inside, so metrics that perturb pixels work in this space), labels (N,),
the class each image is explained against for "why not" (``contrast``, -1 elsewhere), masks
(N, H, W) bool and boxes (N, 4) int64 ``(x0, y0, x1, y1)`` with exclusive ends, i.e. the box is
``mask[y0:y1, x0:x1]`` (all -1 for an empty mask). The same (split, n, seed) gives the same tensors.

- ``objects``: Fashion-MNIST items (Debian ``dataset-fashion-mnist``; scikit-learn's digits where it
  is absent) pasted at random positions and scales on random crops of scikit-image's textures and
  photographs, with 0-2 distractor items of the distractor classes. The label is the class of the
  target item; its mask is exactly the pixels pasted for it.
- ``anomaly``: crops of scikit-image's retina photograph ("healthy") and the same crops with a small,
  subtle, dark-red elliptical lesion ("diseased", label 1); the mask is exactly the pixels changed.
- ``whynot``: plain items of confusable pairs (T-shirt vs shirt, ...; digits 3 vs 5, 7 vs 1, 4 vs 9);
  the ground truth of "why a, not b" is the top ``WHYNOT_TOP`` fraction of pixels of
  |mean_a - mean_b|, the class means taken over the training split, the same preprocessing.

Splits never share items: Fashion-MNIST train file [0, 50000) is "train", [50000, 60000) is "val",
the t10k file is "test"; digits are split 60/20/20 by a fixed permutation. Retina crops come from
disjoint regions of the photograph: left half (train), top-right (val), bottom-right (test).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
SPLITS = ("train", "val", "test")

SIZE = 64  # objects and anomaly images are SIZE x SIZE
ITEM_THRESHOLD = 0.25  # an item pixel is pasted where its resized intensity exceeds this
ITEM_SIZES = (22, 32)  # item side in pixels, uniform in [low, high]
# The label set and the clutter set never meet, so the label of a scene is never ambiguous.
TARGET_CLASSES = {"fashion": (0, 1, 3, 7, 8), "digits": (0, 1, 2, 3, 4)}
DISTRACTOR_CLASSES = {"fashion": (2, 4, 5, 6, 9), "digits": (5, 6, 7, 8, 9)}
WHYNOT_PAIRS = {"fashion": ((0, 6), (2, 4), (7, 9)), "digits": ((3, 5), (7, 1), (4, 9))}
WHYNOT_TOP = 0.15  # fraction of pixels in the "why not" ground truth
WHYNOT_SIZE = 32  # items padded from 28 to 32 pixels
LESION_AXES = (2.5, 6.0)  # lesion semi-axes in pixels
LESION_DARKENING = (0.05, 0.12)  # red-channel darkening at the lesion centre


@dataclass
class TaskData:
    """A split of a task: images in [0, 1], labels, ground-truth masks and boxes, and provenance."""

    task: str
    split: str
    seed: int
    source: str
    classes: tuple[str, ...]
    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    contrast: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> TaskData:
        """The images selected by a boolean or integer index, with everything that goes with them."""
        return TaskData(
            self.task,
            self.split,
            self.seed,
            self.source,
            self.classes,
            self.images[index],
            self.labels[index],
            self.masks[index],
            self.boxes[index],
            self.contrast[index],
            {k: v[index] for k, v in self.extras.items()},
        )


def default_source() -> str:
    """``"fashion"`` where Debian's dataset-fashion-mnist is installed, else ``"digits"``."""
    return "fashion" if (FASHION_DIR / "train-images-idx3-ubyte.gz").exists() else "digits"


def _rng(seed: int, task: str, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return np.random.default_rng([seed, sum(map(ord, task)), SPLITS.index(split)])


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@cache
def load_items(split: str, source: str) -> tuple[Tensor, Tensor]:
    """Item images (N, 28, 28) float32 in [0, 1] and labels (N,) of one split of a source."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if source == "fashion":
        if not FASHION_DIR.exists():
            raise FileNotFoundError(
                f"{FASHION_DIR} is missing: `apt-get install dataset-fashion-mnist`, or use source='digits'"
            )
        prefix = "t10k" if split == "test" else "train"
        images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        part = {"train": slice(0, 50000), "val": slice(50000, 60000), "test": slice(None)}[split]
        images = torch.from_numpy(images[part].astype(np.float32) / 255)
        return images, torch.from_numpy(labels[part].astype(np.int64))
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(0).permutation(len(digits.target))
        first, second = int(0.6 * len(order)), int(0.8 * len(order))
        cut = {"train": order[:first], "val": order[first:second], "test": order[second:]}[split]
        small = torch.from_numpy(digits.images[cut].astype(np.float32) / 16)
        images = F.interpolate(small[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
        return images.clamp(0, 1), torch.from_numpy(digits.target[cut].astype(np.int64))
    raise ValueError(f"source must be 'fashion' or 'digits', not {source!r}")


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes (N, 4) ``(x0, y0, x1, y1)``, exclusive ends, of (N, H, W) masks; -1s for empty ones."""
    rows, cols = masks.any(2), masks.any(1)
    boxes = torch.full((len(masks), 4), -1, dtype=torch.int64)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        if r.any():
            ys, xs = r.nonzero().flatten(), c.nonzero().flatten()
            boxes[i] = torch.stack([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
    return boxes


def _resize(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """(C, h, w) -> (C, size) with antialiased bilinear interpolation."""
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


# ---------------------------------------------------------------- objects on scenes


@cache
def backgrounds() -> tuple[tuple[str, Tensor], ...]:
    """scikit-image's textures (brick, grass, gravel) and photographs as (3, H, W) float32 in [0, 1]."""
    from skimage import data

    out = []
    for name in ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut", "rocket"):
        array = torch.from_numpy(getattr(data, name)().astype(np.float32) / 255)
        out.append((name, array.expand(3, -1, -1).clone() if array.dim() == 2 else array.permute(2, 0, 1)))
    return tuple(out)


@dataclass
class Scene:
    """One composed scene: the image, the background it was pasted on, and what was pasted where."""

    image: Tensor  # (3, SIZE, SIZE)
    background: Tensor  # (3, SIZE, SIZE)
    label: int
    target_mask: Tensor  # (SIZE, SIZE) bool
    distractor_mask: Tensor
    distractor_labels: tuple[int, ...]


def _background(rng: np.random.Generator) -> Tensor:
    """A random crop (side 96..256, resized to SIZE) of a random background, dimmed to [0.1, 0.7]."""
    _, image = backgrounds()[rng.integers(len(backgrounds()))]
    _, h, w = image.shape
    side = int(rng.integers(96, min(256, h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = _resize(image[:, y : y + side, x : x + side], SIZE)
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return (0.1 + 0.6 * crop).clamp(0, 1)


def _place(rng: np.random.Generator, side: int, taken: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """A top-left corner for a side x side square overlapping no square in ``taken`` (100 tries)."""
    for _ in range(100):
        y, x = int(rng.integers(0, SIZE - side + 1)), int(rng.integers(0, SIZE - side + 1))
        if all(y + side <= ty or ty + ts <= y or x + side <= tx or tx + ts <= x for ty, tx, ts in taken):
            return y, x
    return None


def paste(image: Tensor, item: Tensor, y: int, x: int, colour: Tensor) -> Tensor:
    """Paste a (s, s) item in [0, 1] at (y, x): pixels with intensity > ITEM_THRESHOLD become
    ``colour * intensity``; returns the (SIZE, SIZE) mask of exactly those pixels."""
    side = item.shape[-1]
    keep = item > ITEM_THRESHOLD
    window = image[:, y : y + side, x : x + side]
    window[:, keep] = colour[:, None] * item[keep]
    mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
    mask[y : y + side, x : x + side] = keep
    return mask


def object_scene(rng: np.random.Generator, items: Tensor, pools: dict[int, Tensor], source: str) -> Scene:
    """One scene: a background crop, one target item of a target class, 0-2 distractors of the
    distractor classes, all at random non-overlapping squares and random sizes in ITEM_SIZES.
    ``pools[c]``: the indices of ``items`` of class c."""
    background = _background(rng)
    image = background.clone()
    target_classes, distractor_classes = TARGET_CLASSES[source], DISTRACTOR_CLASSES[source]
    label = int(rng.integers(len(target_classes)))
    classes = [target_classes[label]] + [int(rng.choice(distractor_classes)) for _ in range(rng.integers(3))]
    taken: list[tuple[int, int, int]] = []
    masks, pasted = [], []
    for cls in classes:
        side = int(rng.integers(ITEM_SIZES[0], ITEM_SIZES[1] + 1))
        corner = _place(rng, side, taken)
        if corner is None:  # no room left for this distractor (the target always fits)
            continue
        taken.append((*corner, side))
        pool = pools[cls]
        item = _resize(items[pool[rng.integers(len(pool))]][None], side)[0].clamp(0, 1)
        colour = torch.from_numpy(rng.uniform(0.55, 1.0, 3).astype(np.float32))
        masks.append(paste(image, item, *corner, colour))
        pasted.append(cls)
    distractors = torch.stack(masks[1:]).any(0) if len(masks) > 1 else torch.zeros_like(masks[0])
    return Scene(image, background, label, masks[0], distractors, tuple(pasted[1:]))


def objects(split: str, n: int, seed: int = 0, source: str | None = None) -> TaskData:
    """``n`` object scenes of a split; labels index TARGET_CLASSES[source]; extras: ``distractors``
    (N, H, W) bool and ``distractor_labels`` (N, 2) source classes, -1 where absent."""
    source = source or default_source()
    rng = _rng(seed, "objects", split)
    items, item_labels = load_items(split, source)
    pools = {c: (item_labels == c).nonzero().flatten() for c in range(10)}
    scenes = [object_scene(rng, items, pools, source) for _ in range(n)]
    masks = torch.stack([s.target_mask for s in scenes])
    distractor_labels = torch.tensor(
        [list(s.distractor_labels) + [-1] * (2 - len(s.distractor_labels)) for s in scenes], dtype=torch.int64
    ).reshape(n, 2)
    names = FASHION_CLASSES if source == "fashion" else DIGIT_CLASSES
    return TaskData(
        "objects",
        split,
        seed,
        source,
        tuple(names[c] for c in TARGET_CLASSES[source]),
        torch.stack([s.image for s in scenes]),
        torch.tensor([s.label for s in scenes]),
        masks,
        mask_boxes(masks),
        torch.full((n,), -1),
        {"distractors": torch.stack([s.distractor_mask for s in scenes]), "distractor_labels": distractor_labels},
    )


# ---------------------------------------------------------------- anomaly vs healthy reference


@cache
def retina() -> tuple[Tensor, Tensor]:
    """scikit-image's fundus photograph (3, H, W) in [0, 1] and the mask of the fundus disc."""
    from skimage import data

    image = torch.from_numpy(data.retina().astype(np.float32) / 255).permute(2, 0, 1)
    return image, image.sum(0) > 0.45


def _retina_crop(rng: np.random.Generator, split: str) -> Tensor:
    """A random 128x128 window wholly inside the disc and the split's region, downsampled to SIZE,
    randomly rotated by a multiple of 90 degrees and flipped."""
    image, disc = retina()
    _, h, w = image.shape
    side = 2 * SIZE
    ys, xs = {"train": ((0, h), (0, w // 2)), "val": ((0, h // 2), (w // 2, w)), "test": ((h // 2, h), (w // 2, w))}[
        split
    ]
    while True:
        y = int(rng.integers(ys[0], ys[1] - side + 1))
        x = int(rng.integers(xs[0], xs[1] - side + 1))
        if disc[y : y + side, x : x + side].all():
            break
    crop = _resize(image[:, y : y + side, x : x + side], SIZE).clamp(0, 1)
    crop = torch.rot90(crop, int(rng.integers(4)), dims=(1, 2))
    return crop.flip(-1) if rng.random() < 0.5 else crop


def lesion(image: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Add a small dark-red elliptical lesion: inside the ellipse (semi-axes in LESION_AXES, random
    angle and place) ``x - d * (1 - 0.7 r^2) * (1, 0.5, 0.5)`` with r the elliptical radius and d in
    LESION_DARKENING; outside it nothing changes. Returns the diseased image and the lesion mask."""
    a, b = rng.uniform(*LESION_AXES, size=2)
    angle = rng.uniform(0, np.pi)
    margin = int(np.ceil(max(a, b))) + 1
    cy, cx = rng.uniform(margin, SIZE - margin, size=2)
    yy, xx = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    r2 = (u / a) ** 2 + (v / b) ** 2
    mask = r2 <= 1
    depth = float(rng.uniform(*LESION_DARKENING))
    shade = torch.tensor([1.0, 0.5, 0.5])[:, None, None] * (depth * (1 - 0.7 * r2) * mask)
    return (image - shade).clamp(0, 1), mask


def anomaly(split: str, n: int, seed: int = 0) -> TaskData:
    """``n`` retina crops, alternately healthy (label 0, empty mask) and diseased (label 1);
    extras: ``healthy`` (N, 3, H, W), each image before its lesion."""
    rng = _rng(seed, "anomaly", split)
    healthy = torch.stack([_retina_crop(rng, split) for _ in range(n)])
    images, masks = healthy.clone(), torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    labels = torch.arange(n) % 2
    for i in labels.nonzero().flatten().tolist():
        images[i], masks[i] = lesion(healthy[i], rng)
    return TaskData(
        "anomaly",
        split,
        seed,
        "retina",
        ("healthy", "diseased"),
        images,
        labels,
        masks,
        mask_boxes(masks),
        torch.full((n,), -1),
        {"healthy": healthy},
    )


# ---------------------------------------------------------------- why not


def _padded(items: Tensor) -> Tensor:
    """(N, 28, 28) items zero-padded to (N, WHYNOT_SIZE, WHYNOT_SIZE)."""
    pad = (WHYNOT_SIZE - items.shape[-1]) // 2
    return F.pad(items, (pad, pad, pad, pad))


def plain_items(split: str, source: str | None = None, n: int | None = None) -> TaskData:
    """The first ``n`` (None: every) items of a split as WHYNOT_SIZE RGB images (the 10-class
    training data of task 3); masks are empty, contrast is -1."""
    source = source or default_source()
    items, labels = (t[:n] for t in load_items(split, source))
    images = _padded(items)[:, None].expand(-1, 3, -1, -1).contiguous()
    n = len(labels)
    masks = torch.zeros(n, WHYNOT_SIZE, WHYNOT_SIZE, dtype=torch.bool)
    return TaskData(
        "items",
        split,
        0,
        source,
        FASHION_CLASSES if source == "fashion" else DIGIT_CLASSES,
        images,
        labels,
        masks,
        mask_boxes(masks),
        torch.full((n,), -1),
    )


@cache
def whynot_mask(a: int, b: int, source: str) -> Tensor:
    """Ground truth of "why a, not b": the top WHYNOT_TOP fraction of pixels of |mean_a - mean_b|,
    means over the training split's images of each class (ties broken by pixel index)."""
    items, labels = load_items("train", source)
    gray = _padded(items)
    difference = (gray[labels == a].mean(0) - gray[labels == b].mean(0)).abs().flatten()
    k = round(WHYNOT_TOP * difference.numel())
    order = torch.from_numpy(np.argsort(-difference.numpy(), kind="stable").copy())
    mask = torch.zeros(difference.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(WHYNOT_SIZE, WHYNOT_SIZE)


def whynot(split: str, n: int | None = None, seed: int = 0, source: str | None = None) -> TaskData:
    """Images of the confusable pairs of WHYNOT_PAIRS: an image of class a is explained as "why a,
    not b" (``contrast`` = b) and one of b as "why b, not a"; labels are source classes. ``n``:
    at most n images, drawn at random (seeded) with the pairs' proportions; None: all of them."""
    source = source or default_source()
    items = plain_items(split, source)
    parts = []
    for a, b in WHYNOT_PAIRS[source]:
        for this, other in ((a, b), (b, a)):
            index = (items.labels == this).nonzero().flatten()
            part = items.subset(index)
            part.contrast = torch.full((len(index),), other)
            part.masks = whynot_mask(a, b, source).expand(len(index), -1, -1).clone()
            parts.append(part)
    merged = TaskData(
        "whynot",
        split,
        seed,
        source,
        items.classes,
        *(torch.cat([getattr(p, k) for p in parts]) for k in ("images", "labels", "masks", "boxes", "contrast")),
    )
    merged.boxes = mask_boxes(merged.masks)
    if n is not None and n < len(merged):
        pick = np.sort(_rng(seed, "whynot", split).choice(len(merged), n, replace=False))
        merged = merged.subset(torch.from_numpy(pick))
    return merged


TASKS = {"objects": objects, "anomaly": anomaly, "whynot": whynot}
