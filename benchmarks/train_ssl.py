"""Self-supervised backbones (no labels) and a supervised ViT for docs/results.md "Without labels".

    python benchmarks/train_ssl.py                  # every model, reusing cached weights
    python benchmarks/train_ssl.py --retrain        # reproduce them from scratch
    python benchmarks/train_ssl.py --models dino-vit
    python benchmarks/train_ssl.py --check /tmp/again   # retrain into /tmp/again, compare with the cache

- ``dino-vit``: ``ssl_models.SmallViT`` trained by DINO self-distillation (Caron et al., ICCV 2021)
  on the objects task's training scenes, labels unused: a student and a teacher (the student's
  exponential moving average), multi-crop (2 global 64 px crops, seen by both, and 4 local 32 px
  crops, seen by the student), the teacher's outputs centred (c <- m c + (1 - m) mean(t)) and
  sharpened (temperature 0.04 against the student's 0.1), loss
  ``sum_{i != j} -softmax((t_i - c) / tau_t) . log softmax(s_j / tau_s)``. The teacher is kept.
- ``simclr-cnn``: ``train_tasks.SmallCNN`` without its linear layer, SimCLR (Chen et al., ICML 2020)
  on the same scenes: two augmented views, a projection head, the NT-Xent loss at temperature 0.2.
- ``simclr-retina``: the same on healthy retina crops of the anomaly task only (max pooling, as the
  supervised anomaly model), with weak colour jitter and rotations by multiples of 90 degrees.
- ``supervised-vit``: the same ViT with a linear head on the class token, trained with the labels of
  the objects task (cross-entropy, flips and mild crops): the supervised upper reference.

Each is seeded (initialisation, crops, batch order), cached as ``benchmarks/cache/<model>-seed<seed>
.safetensors`` (weights only; the recipe, the time and the probe accuracies in the JSON metadata).
Feature quality is stated after training by probes fitted on labels the training never saw: k-NN
(k = 20, cosine) and logistic regression on the backbone's features, training split -> validation
split, beside the same probes on the randomly initialised backbone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
import train_tasks  # noqa: E402
from ssl_models import DINOHead, ProjectionHead, SmallViT  # noqa: E402

CACHE = train_tasks.CACHE
VIT = {"size": 64, "patch": 8, "dim": 64, "depth": 4, "heads": 4}
CNN_STRIDES = (2, 2, 2, 1)  # as the objects and anomaly models: an 8x8 map at block4


@dataclass(frozen=True)
class Recipe:
    """How one model is built and trained. ``data``: "objects" (training scenes) or "retina" (healthy
    training crops); ``scale``: the area fraction of the (global) crops; ``jitter``: colour jitter
    strength; ``grey``: probability of a greyscale view; ``rotate``: random multiples of 90 degrees."""

    model: str
    method: str  # "dino", "simclr" or "supervised"
    arch: str  # "vit" or "cnn"
    data: str
    train: int
    epochs: int
    batch: int
    lr: float
    pool: str = "avg"
    scale: tuple[float, float] = (0.4, 1.0)
    jitter: float = 0.4
    grey: float = 0.2
    rotate: bool = False
    weight_decay: float = 0.04
    # DINO
    local_crops: int = 4
    local_scale: tuple[float, float] = (0.1, 0.4)
    prototypes: int = 1024
    teacher_temperature: float = 0.04
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    ema: float = 0.98  # the teacher's momentum at the start, rising to 1 on a cosine
    # SimCLR
    temperature: float = 0.2
    probe_train: int = 6000
    probe_val: int = 1000


RECIPES = {
    "dino-vit": Recipe(
        "dino-vit", "dino", "vit", "objects", train=6000, epochs=3, batch=32, lr=1e-3, prototypes=256, ema=0.99
    ),
    "simclr-cnn": Recipe("simclr-cnn", "simclr", "cnn", "objects", train=6000, epochs=5, batch=128, lr=2e-3),
    "simclr-retina": Recipe(
        "simclr-retina",
        "simclr",
        "cnn",
        "retina",
        train=4000,
        epochs=6,
        batch=128,
        lr=2e-3,
        pool="max",
        scale=(0.5, 1.0),
        jitter=0.1,
        grey=0.0,
        rotate=True,
        probe_train=2000,
    ),
    "supervised-vit": Recipe(
        "supervised-vit", "supervised", "vit", "objects", train=6000, epochs=4, batch=64, lr=1e-3, scale=(0.7, 1.0)
    ),
}


def build(recipe: Recipe) -> nn.Module:
    """The recipe's model: a ViT backbone or classifier, or the CNN backbone (SmallCNN without fc)."""
    if recipe.arch == "vit":
        return SmallViT(5 if recipe.method == "supervised" else 0, **VIT)
    model = train_tasks.SmallCNN(1, recipe.pool, CNN_STRIDES)
    model.fc = nn.Identity()
    return model


def features_dim(recipe: Recipe) -> int:
    return VIT["dim"] if recipe.arch == "vit" else 128


# ---------------------------------------------------------------- data and augmentation


def training_images(recipe: Recipe, seed: int, source: str | None = None) -> tuple[Tensor, Tensor | None]:
    """The training images: objects scenes (with their labels only for the supervised recipe), or
    the healthy retina crops (before lesions)."""
    if recipe.data == "objects":
        scenes = tasks.objects("train", recipe.train, seed, source)
        return scenes.images, scenes.labels if recipe.method == "supervised" else None
    return tasks.anomaly("train", recipe.train, seed).extras["healthy"], None


def training_head(recipe: Recipe) -> nn.Module:
    """What training puts on the backbone: DINO's head, SimCLR's projection, or nothing (supervised)."""
    if recipe.method == "dino":
        return DINOHead(features_dim(recipe), recipe.prototypes)
    return ProjectionHead(features_dim(recipe)) if recipe.method == "simclr" else nn.Identity()


def probe_data(recipe: Recipe, split: str, seed: int, source: str | None = None) -> tasks.TaskData:
    """Labelled images for the probes: object scenes (5 labels) or retina crops (healthy/diseased)."""
    n = recipe.probe_train if split == "train" else recipe.probe_val
    return tasks.objects(split, n, seed, source) if recipe.data == "objects" else tasks.anomaly(split, n, seed)


def augment(
    images: Tensor,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    jitter: float = 0.4,
    grey: float = 0.2,
    rotate: bool = False,
) -> Tensor:
    """One random view of each image: a random resized crop (area fraction in ``scale``, aspect ratio
    in [3/4, 4/3]) to ``size`` (bilinear, torchvision's roi_align), a horizontal flip with probability
    1/2, with probability 0.8 a brightness, contrast and saturation jitter of factors in
    [1 - jitter, 1 + jitter], a greyscale view with probability ``grey``, a random rotation by a
    multiple of 90 degrees if ``rotate``."""
    b, _, h, w = images.shape

    def uniform(low: float, high: float) -> Tensor:
        return torch.empty(b).uniform_(low, high, generator=generator)

    area = uniform(*scale) * h * w
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    width, height = (area * ratio).sqrt().clamp(max=w), (area / ratio).sqrt().clamp(max=h)
    x0, y0 = uniform(0, 1) * (w - width), uniform(0, 1) * (h - height)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + width, y0 + height], 1)
    views = roi_align(images, boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    views = torch.where((uniform(0, 1) < 0.5)[:, None, None, None], views.flip(-1), views)
    if jitter:
        apply = (uniform(0, 1) < 0.8)[:, None, None, None]
        brightness, contrast, saturation = (uniform(1 - jitter, 1 + jitter)[:, None, None, None] for _ in range(3))
        jittered = views * brightness
        mean = jittered.mean((1, 2, 3), keepdim=True)
        jittered = (jittered - mean) * contrast + mean
        gray = jittered.mean(1, keepdim=True)
        jittered = (jittered - gray) * saturation + gray
        views = torch.where(apply, jittered, views)
    if grey:
        views = torch.where(
            (uniform(0, 1) < grey)[:, None, None, None], views.mean(1, keepdim=True).expand_as(views), views
        )
    if rotate:
        turns = torch.randint(4, (b,), generator=generator)
        views = torch.stack([torch.rot90(v, int(t), (1, 2)) for v, t in zip(views, turns, strict=True)])
    return views.clamp(0, 1)


# ---------------------------------------------------------------- objectives


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, recipe: Recipe) -> Tensor:
    """Mean over pairs (teacher global view i, student view j != i) of the cross-entropy between the
    centred, sharpened teacher distribution and the student's: -softmax((t_i - c)/tau_t) . log softmax(s_j/tau_s)."""
    targets = [F.softmax((t - center) / recipe.teacher_temperature, -1) for t in teacher]
    losses = [
        -(target * F.log_softmax(s / recipe.student_temperature, -1)).sum(-1).mean()
        for i, target in enumerate(targets)
        for j, s in enumerate(student)
        if i != j
    ]
    return torch.stack(losses).mean()


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of the same image among the 2B - 1
    others, -log exp(cos(z_i, z_j)/tau) / sum_{k != i} exp(cos(z_i, z_k)/tau), averaged over 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(similarity, positives)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def cosine(step: int, steps: int, start: float, end: float, warmup: int = 0) -> float:
    """A linear warm-up from 0 to ``start`` over ``warmup`` steps, then a cosine from ``start`` to ``end``."""
    if step < warmup:
        return start * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- training


def train(recipe: Recipe, seed: int = 0, source: str | None = None, log=print) -> tuple[nn.Module, dict]:
    """Train one model from scratch; returns the eval-mode backbone (DINO: the teacher) and its record."""
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    backbone = build(recipe)
    initial = copy.deepcopy(backbone).eval()
    images, labels = training_images(recipe, seed, source)
    student = nn.Sequential(backbone, training_head(recipe))
    teacher = copy.deepcopy(student).requires_grad_(False) if recipe.method == "dino" else None
    center = torch.zeros(recipe.prototypes)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimiser = adamw(parameters, recipe)
    per_epoch = len(images) // recipe.batch
    steps, warmup = recipe.epochs * per_epoch, max(1, recipe.epochs * per_epoch // 10)
    generator = torch.Generator().manual_seed(seed)
    log(f"{recipe.model}: {len(images)} images, {steps} steps ({time.perf_counter() - start:.0f} s)")
    step, losses = 0, []
    for epoch in range(recipe.epochs):
        student.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(per_epoch):
            index = order[i * recipe.batch : (i + 1) * recipe.batch]
            batch = images[index]
            for group in optimiser.param_groups:
                group["lr"] = cosine(step, steps, recipe.lr, recipe.lr / 100, warmup)
            loss, center = objective(recipe, student, teacher, center, batch, labels, index, generator)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 3.0)
            optimiser.step()
            if teacher is not None:
                ema_update(teacher, student, cosine(step, steps, recipe.ema, 1.0))
            total += loss.item()
            step += 1
        losses.append(total / per_epoch)
        log(
            f"{recipe.model}: epoch {epoch + 1}/{recipe.epochs} loss {losses[-1]:.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    trained = (teacher if teacher is not None else student)[0].eval()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    record = {
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "seed": seed,
        "source": tasks.default_source() if source is None else source,
        "steps": steps,
        "losses": [round(x, 5) for x in losses],
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "load": round(os.getloadavg()[0], 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **quality(trained, initial, recipe, seed, source),
    }
    log(f"{recipe.model}: probes {record['probe']} (random init {record['probe_random_init']}), {seconds:.0f} s")
    return trained, record


def adamw(parameters: list[nn.Parameter], recipe: Recipe) -> torch.optim.AdamW:
    """AdamW with the recipe's weight decay on weight matrices only (none on biases and norms)."""
    decay = [p for p in parameters if p.dim() > 1]
    rest = [p for p in parameters if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr)


def quality(trained: nn.Module, initial: nn.Module, recipe: Recipe, seed: int, source: str | None) -> dict:
    """The probes of the trained and the initial backbone, and a classifier's accuracies."""
    found = {"probe": probes(trained, recipe, seed, source), "probe_random_init": probes(initial, recipe, seed, source)}
    if recipe.method == "supervised":
        for split in ("val", "test"):
            data = tasks.objects(split, recipe.probe_val, seed, source)
            found[f"{split}_accuracy"] = train_tasks.accuracy(trained, data.images, data.labels)
    return found


def objective(recipe, student, teacher, center, batch, labels, index, generator) -> tuple[Tensor, Tensor]:
    """The recipe's loss on one batch, and the updated DINO centre."""
    views = {"jitter": recipe.jitter, "grey": recipe.grey, "rotate": recipe.rotate}
    if recipe.method == "supervised":
        crops = augment(batch, VIT["size"], recipe.scale, generator, jitter=0.0, grey=0.0)
        return F.cross_entropy(student(crops), labels[index]), center
    if recipe.method == "simclr":
        z1, z2 = (student(augment(batch, batch.shape[-1], recipe.scale, generator, **views)) for _ in range(2))
        return nt_xent(z1, z2, recipe.temperature), center
    globals_ = [augment(batch, VIT["size"], recipe.scale, generator, **views) for _ in range(2)]
    locals_ = [
        augment(batch, VIT["size"] // 2, recipe.local_scale, generator, **views) for _ in range(recipe.local_crops)
    ]
    with torch.no_grad():
        teacher_out = teacher(torch.cat(globals_)).chunk(2)
    student_out = [*student(torch.cat(globals_)).chunk(2), *student(torch.cat(locals_)).chunk(recipe.local_crops)]
    loss = dino_loss(student_out, list(teacher_out), center, recipe)
    batch_center = torch.cat(teacher_out).mean(0)
    return loss, center * recipe.center_momentum + batch_center * (1 - recipe.center_momentum)


@torch.no_grad()
def embed(backbone: nn.Module, images: Tensor, batch: int = 256) -> Tensor:
    """The backbone's features (N, D): the class token (ViT) or the pooled map (CNN); for a
    supervised ViT the final-norm class token before its head."""
    if isinstance(backbone, SmallViT) and not isinstance(backbone.head, nn.Identity):
        head, backbone.head = backbone.head, nn.Identity()
        try:
            return embed(backbone, images, batch)
        finally:
            backbone.head = head
    return torch.cat([backbone(images[i : i + batch]) for i in range(0, len(images), batch)])


def probes(backbone: nn.Module, recipe: Recipe, seed: int, source: str | None = None) -> dict[str, float]:
    """Validation accuracy of a k-NN (k = 20, cosine) and a logistic-regression probe fitted on the
    training split's labels, on the backbone's features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val = (probe_data(recipe, split, seed, source) for split in ("train", "val"))
    x_train, x_val = (embed(backbone, d.images).double().numpy() for d in (train, val))
    y_train, y_val = train.labels.numpy(), val.labels.numpy()
    knn = KNeighborsClassifier(20, metric="cosine").fit(x_train, y_train)
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    return {
        "knn": round(float(np.mean(knn.predict(x_val) == y_val)), 4),
        "linear": round(float(np.mean(linear.predict(x_val) == y_val)), 4),
    }


def cache_path(model: str, seed: int, cache: Path = CACHE) -> Path:
    return cache / f"{model}-seed{seed}.safetensors"


def load_or_train(
    model: str,
    seed: int = 0,
    source: str | None = None,
    retrain: bool = False,
    log=print,
    cache: Path = CACHE,
    **overrides,
) -> tuple[nn.Module, dict]:
    """A trained model (from the cache, or trained and cached) and its record; ``overrides`` change
    the recipe (tests train on tiny settings into their own ``cache``)."""
    recipe = replace(RECIPES[model], **overrides)
    path = cache_path(model, seed, cache)
    if path.exists() and not retrain:
        with safe_open(path, "pt") as f:
            record = json.loads(f.metadata()["record"])
        if record["recipe"] != json.loads(json.dumps(asdict(recipe))):
            raise ValueError(f"{path} was trained with another recipe; pass retrain=True (--retrain) to replace it")
        backbone = build(recipe)
        backbone.load_state_dict(load_file(path))
        return backbone.eval(), record
    backbone, record = train(recipe, seed, source, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    save_file(tensors, path, metadata={"record": json.dumps(record)})
    log(f"{model}: saved {path.name}")
    return backbone, record


def compare(model: str, seed: int, cache: Path, other: Path) -> dict:
    """Two trainings of one model (cached in ``cache`` and ``other``): are the weights bit-identical,
    their largest absolute difference, and both records' probe accuracies."""
    weights, probe = [], []
    for folder in (cache, other):
        path = cache_path(model, seed, folder)
        weights.append(load_file(path))
        with safe_open(path, "pt") as f:
            probe.append(json.loads(f.metadata()["record"])["probe"])
    difference = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
    return {"model": model, "identical": difference == 0.0, "max_abs_difference": difference, "probes": probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="train even where cached weights exist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the weights are read and written")
    parser.add_argument(
        "--check", type=Path, metavar="CACHE", help="compare the weights in --cache with those retrained into CACHE"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.models:
        if args.check:
            load_or_train(model, args.seed, cache=args.check)
            print(json.dumps(compare(model, args.seed, args.cache, args.check)), flush=True)
            continue
        record = load_or_train(model, args.seed, retrain=args.retrain, cache=args.cache)[1]
        print(json.dumps({"model": model, **{k: v for k, v in record.items() if k != "recipe"}}), flush=True)


if __name__ == "__main__":
    main()
