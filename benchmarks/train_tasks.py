"""Train the small CNN of each benchmark task, seeded, on CPU in minutes; weights cached as safetensors.

    python benchmarks/train_tasks.py                 # every task, reusing cached weights
    python benchmarks/train_tasks.py --retrain       # reproduce them from scratch
    python benchmarks/train_tasks.py --tasks anomaly --seed 1

The model is four conv-BN-ReLU blocks (16, 32, 64, 128 channels), a global pooling (average, or
max for the anomaly task, the max-pooling CNN of the DiffCAM issue) and one linear layer; the
input normalisation is its first module, so it takes images in [0, 1]. Weights are written to
``benchmarks/cache/<task>-<source>-seed<seed>.safetensors`` with the configuration, the data sizes
and the validation and test accuracies in the file's metadata. Training is deterministic for a
given seed, torch version and thread count (Adam, fixed batch order from the seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
from common import table, write_section  # noqa: E402

CACHE = Path(__file__).resolve().parent / "cache"


@dataclass(frozen=True)
class Recipe:
    """How a task's model is built and trained."""

    task: str
    classes: int
    pool: str  # "avg" or "max"
    strides: tuple[int, ...]
    train: int  # images per split (for "whynot": the first ones of the item split)
    val: int
    test: int
    epochs: int
    lr: float = 3e-3
    batch: int = 64


RECIPES = {
    "objects": Recipe("objects", 5, "avg", (2, 2, 2, 1), train=6000, val=1000, test=1000, epochs=8),
    "anomaly": Recipe("anomaly", 2, "max", (2, 2, 2, 1), train=4000, val=1000, test=1000, epochs=8),
    "whynot": Recipe("whynot", 10, "avg", (1, 2, 2, 1), train=12000, val=2000, test=10000, epochs=3),
}
LAYER = "block4"  # the layer every CAM-style method of the results explains


class SmallCNN(nn.Module):
    """normalise -> 4 x (conv3x3-BN-ReLU) -> global avg/max pool -> linear."""

    def __init__(
        self,
        classes: int,
        pool: str = "avg",
        strides: tuple[int, ...] = (1, 2, 2, 2),
        widths: tuple[int, ...] = (16, 32, 64, 128),
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5])[:, None, None])
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25])[:, None, None])
        channels = (3, *widths)
        for i, stride in enumerate(strides):
            self.add_module(
                f"block{i + 1}",
                nn.Sequential(
                    nn.Conv2d(channels[i], channels[i + 1], 3, stride, 1, bias=False),
                    nn.BatchNorm2d(channels[i + 1]),
                    nn.ReLU(),
                ),
            )
        self.pool = {"avg": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1)}[pool]
        self.fc = nn.Linear(widths[-1], classes)
        self.depth = len(strides)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        for i in range(self.depth):
            x = getattr(self, f"block{i + 1}")(x)
        return self.fc(self.pool(x).flatten(1))


def build_model(recipe: Recipe) -> SmallCNN:
    return SmallCNN(recipe.classes, recipe.pool, recipe.strides)


def task_split(task: str, split: str, seed: int = 0, source: str | None = None, n: int | None = None) -> tasks.TaskData:
    """A split of the data a task's model is trained and tested on (for "whynot": every plain item
    of the 10 classes; its pair images for the explanations come from ``tasks.whynot``)."""
    recipe = RECIPES[task]
    n = n if n is not None else getattr(recipe, split)
    if task == "objects":
        return tasks.objects(split, n, seed, source)
    if task == "anomaly":
        return tasks.anomaly(split, n, seed)
    return tasks.plain_items(split, source, n)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of an eval-mode model."""
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (predicted == labels).float().mean().item()


def cache_path(task: str, seed: int, source: str | None) -> Path:
    source = "retina" if task == "anomaly" else (source or tasks.default_source())
    return CACHE / f"{task}-{source}-seed{seed}.safetensors"


def train(task: str, seed: int = 0, source: str | None = None, log=print) -> tuple[SmallCNN, dict]:
    """Train a task's model from scratch; returns the eval-mode model and its record."""
    recipe = RECIPES[task]
    start = time.perf_counter()
    data = {split: task_split(task, split, seed, source) for split in ("train", "val", "test")}
    log(f"{task}: data {', '.join(f'{k} {len(v)}' for k, v in data.items())} ({time.perf_counter() - start:.0f} s)")
    torch.manual_seed(seed)
    model = build_model(recipe)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    images, labels = data["train"].images, data["train"].labels
    steps = recipe.epochs * ((len(images) + recipe.batch - 1) // recipe.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for i in range(0, len(images), recipe.batch):
            index = order[i : i + recipe.batch]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
        model.eval()
        log(
            f"{task}: epoch {epoch + 1}/{recipe.epochs} loss {total / len(images):.3f} "
            f"val acc {accuracy(model, data['val'].images, data['val'].labels):.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    record = {
        "recipe": {**asdict(recipe), "strides": list(recipe.strides)},
        "seed": seed,
        "source": data["test"].source,
        "sizes": {k: len(v) for k, v in data.items()},
        "val_accuracy": accuracy(model, data["val"].images, data["val"].labels),
        "test_accuracy": accuracy(model, data["test"].images, data["test"].labels),
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return model, record


def load_or_train(
    task: str, seed: int = 0, source: str | None = None, retrain: bool = False, log=print
) -> tuple[SmallCNN, dict]:
    """The task's trained model (from the cache, or trained and cached) and its record."""
    path = cache_path(task, seed, source)
    if path.exists() and not retrain:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            record = json.loads(f.metadata()["record"])
        model = build_model(RECIPES[task])
        model.load_state_dict(tensors)
        return model.eval(), record
    model, record = train(task, seed, source, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"record": json.dumps(record)})
    log(f"{task}: saved {path.name}: val {record['val_accuracy']:.3f}, test {record['test_accuracy']:.3f}")
    return model, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["fashion", "digits"], default=None)
    parser.add_argument("--retrain", action="store_true", help="train even where cached weights exist")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = {}
    for task in args.tasks:
        records[task] = record = load_or_train(task, args.seed, args.source, args.retrain)[1]
        print(
            json.dumps(
                {
                    "task": task,
                    **{k: record[k] for k in ("source", "sizes", "val_accuracy", "test_accuracy", "seconds")},
                }
            )
        )
    for task in RECIPES:  # the table shows every cached model, trained now or before
        if task not in records and cache_path(task, args.seed, args.source).exists():
            records[task] = load_or_train(task, args.seed, args.source)[1]
    rows = []
    for task in (task for task in RECIPES if task in records):
        record = records[task]
        recipe, sizes = record["recipe"], record["sizes"]
        rows.append(
            [
                task,
                record["source"],
                recipe["classes"],
                recipe["pool"],
                recipe["epochs"],
                " / ".join(str(sizes[s]) for s in ("train", "val", "test")),
                f"{record['val_accuracy']:.3f}",
                f"{record['test_accuracy']:.3f}",
                f"{record['seconds']:.0f} s ({record['threads']} thread{'s' * (record['threads'] != 1)}, "
                f"torch {record['torch']})",
            ]
        )
    header = [
        "task",
        "data",
        "classes",
        "pooling",
        "epochs",
        "train / val / test",
        "val accuracy",
        "test accuracy",
        "training time",
    ]
    write_section("results.md", "models", f"Seed {args.seed}.\n\n" + table(header, rows))


if __name__ == "__main__":
    main()
