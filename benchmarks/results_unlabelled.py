"""docs/results.md "Without labels": DiffCAM on self-supervised backbones, with no label and no head.

    python benchmarks/results_unlabelled.py            # the full run (500 test images per task)
    python benchmarks/results_unlabelled.py --quick    # 100 images, 100 references
    python benchmarks/results_unlabelled.py --quick --check   # reproduces the committed tables?

Objects (the objects task's test scenes, scored on the target item's mask, and on the mask of every
pasted item, since with no label nothing says which item is the question): on each self-supervised
backbone of ``train_ssl.py`` (the DINO ViT, the SimCLR CNN), DiffCAM against three label-free
reference groups — training scenes (every other scene: the paper's setting), each image's k = 20
nearest training scenes in the layer's embedding space (``DiffCAM(k=20)``), and background-only
scenes (the same textures and photographs with no item pasted) — against Eigen-CAM on the same layer
and, on the ViT, DINO's class-token attention of the last block (heads averaged); then the supervised
references: Grad-CAM and DiffCAM against the other label classes (as in the objects table) on the
objects task's CNN and on the supervised ViT. Anomaly (the anomaly task's diseased test crops,
scored on the lesion masks): DiffCAM against healthy training crops on a CNN trained with SimCLR on
healthy crops only, beside Eigen-CAM and the supervised anomaly CNN's Grad-CAM and DiffCAM.

Layers: a CNN's ``block4`` (8x8); a ViT's last block output (8x8 patch tokens) for DiffCAM (the mean
patch token as embedding) and Eigen-CAM, its ``norm1`` (the last block's attention input) for Grad-CAM,
since the class-token head never reads the last block's patch tokens. Scores: AUPRC, top-k IoU and
pointing game through ``whycam.evaluate.score_maps``, mean over images with 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
import train_ssl  # noqa: E402
import train_tasks  # noqa: E402
from common import DOCS, machine, table, write_section  # noqa: E402
from ssl_models import cls_attention  # noqa: E402

import whycam  # noqa: E402
from whycam.evaluate import score_maps  # noqa: E402
from whycam.methods.base import normalize_maps  # noqa: E402

QUICK = {"images": 100, "references": 100}
FULL = {"images": 500, "references": 300}
BOOTSTRAP = 1000
K_NEAREST = 20
BATCH = 50
FIGURE_IMAGES = 4
CHECK = train_tasks.CACHE / "check"
# column -> (whycam.metrics function, ground truth: "target" mask or the mask of "every item")
COLUMNS = {
    "AUPRC": ("auprc", "target"),
    "top-k IoU": ("topk_iou", "target"),
    "pointing": ("pointing_game", "target"),
    "AUPRC, any item": ("auprc", "items"),
}
REFERENCES = {"objects": "other labels", "anomaly": "healthy crops"}  # DiffCAM's group in results.py
VIT_LAYER, VIT_GRADIENT_LAYER = "blocks.3", "blocks.3.norm1"


@dataclass
class Row:
    """One line of a table: the backbone, how it was trained, the method, and its maps (N, H, W), or
    its cells read from another table (mean, low, high by column)."""

    backbone: str
    training: str
    method: str
    maps: Tensor | None = None
    cells: dict[str, tuple[float, float, float]] | None = None

    @property
    def name(self) -> str:
        return f"{self.backbone}, {self.training}: {self.method}"


def _sample(images: Tensor, n: int, seed: int) -> Tensor:
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[pick.sort().values]


def background_scenes(n: int, seed: int, source: str | None = None) -> Tensor:
    """``n`` scenes with nothing pasted: the background crops of the objects task's generator
    (training items drawn and discarded), from a generator of their own."""
    source = source or tasks.default_source()
    rng = np.random.default_rng([seed, sum(map(ord, "backgrounds"))])
    items, labels = tasks.load_items("train", source)
    pools = {c: (labels == c).nonzero().flatten() for c in range(10)}
    return torch.stack([tasks.object_scene(rng, items, pools, source).background for _ in range(n)])


def in_batches(method, images: Tensor, target=None) -> Tensor:
    return torch.cat([method(chunk, target=target) for chunk in images.split(BATCH)])


def attention_maps(model: nn.Module, images: Tensor) -> Tensor:
    """DINO's class-token attention of the last block, upsampled and min-max normalised like a CAM."""
    raw = torch.cat([cls_attention(model, chunk) for chunk in images.split(BATCH)])
    return normalize_maps(raw, tuple(images.shape[-2:]))


def label_free(model: nn.Module, layer: str, images: Tensor, groups: dict[str, Tensor]) -> dict[str, Tensor]:
    """DiffCAM against each reference group (a name ending in "nearest" uses the k nearest of its
    group in embedding space), and Eigen-CAM, on one layer of a backbone with no head."""
    maps = {}
    for name, references in groups.items():
        k = K_NEAREST if name.endswith("nearest") else None
        diffcam = whycam.DiffCAM(model, layer=layer, k=k).fit(references)
        maps[f"DiffCAM vs {name}"] = in_batches(diffcam, images)
    maps["Eigen-CAM"] = in_batches(whycam.EigenCAM(model, layer=layer), images)
    return maps


def supervised(
    model: nn.Module, layer: str, gradient_layer: str, data: tasks.TaskData, references: dict[int, Tensor]
) -> dict[str, Tensor]:
    """Grad-CAM of the label, and DiffCAM against ``references[label]``, image by image's label."""
    maps = {name: torch.zeros(data.masks.shape) for name in ("Grad-CAM", "DiffCAM vs other labels")}
    gradcam = whycam.GradCAM(model, layer=gradient_layer)
    for label, group in references.items():
        index = (data.labels == label).nonzero().flatten()
        if len(index):
            diffcam = whycam.DiffCAM(model, layer=layer).fit(group)
            maps["Grad-CAM"][index] = in_batches(gradcam, data.images[index], label)
            maps["DiffCAM vs other labels"][index] = in_batches(diffcam, data.images[index])
    return maps


def committed(task: str, n: int) -> list[Row]:
    """The supervised CNN's Grad-CAM and DiffCAM rows of the task's own table (docs/results/<task>.csv,
    written by results.py on the same test images when it explained as many), or none."""
    path = DOCS / "results" / f"{task}.csv"
    if not path.exists():
        return []
    with path.open() as f:
        lines = [r for r in csv.DictReader(f) if r["ci_low"] and int(r["n"]) == n]
    rows = []
    for method, label in (("gradcam", "Grad-CAM"), ("diffcam", "DiffCAM vs " + REFERENCES[task])):
        cells = {
            r["metric"]: tuple(float(r[k]) for k in ("mean", "ci_low", "ci_high"))
            for r in lines
            if r["method"] == method and r["metric"] in COLUMNS
        }
        if cells:
            rows.append(Row("CNN", f"supervised ({task} table)", label, cells=cells))
    return rows


def untrained_backbone(model: str, seed: int) -> nn.Module:
    """A self-supervised model's backbone as initialised before training (the same seed): what the
    maps owe to the architecture and the image contrast alone."""
    torch.manual_seed(seed)
    return train_ssl.build(train_ssl.RECIPES[model]).eval()


def objects_rows(n: int, references: int, seed: int) -> tuple[tasks.TaskData, list[Row], dict]:
    """Every map of the objects table, and the models' records."""
    data = tasks.objects("test", n, seed)
    train = tasks.objects("train", references * len(data.classes), seed)
    scenes = _sample(train.images, references, seed)
    groups = {
        "every other scene": scenes,
        f"{K_NEAREST} nearest": scenes,
        "background-only scenes": background_scenes(references, seed, data.source),
    }
    dino, dino_record = train_ssl.load_or_train("dino-vit", seed)
    simclr, simclr_record = train_ssl.load_or_train("simclr-cnn", seed)
    vit, vit_record = train_ssl.load_or_train("supervised-vit", seed)
    untrained = {name: untrained_backbone(name, seed) for name in ("dino-vit", "simclr-cnn")}
    bare = {"background-only scenes": groups["background-only scenes"]}
    others = {c: _sample(train.images[train.labels != c], references, seed) for c in range(len(data.classes))}
    rows = [
        *(Row("ViT", "DINO, no labels", m, v) for m, v in label_free(dino, VIT_LAYER, data.images, groups).items()),
        Row("ViT", "DINO, no labels", "class-token attention", attention_maps(dino, data.images)),
        *(Row("CNN", "SimCLR, no labels", m, v) for m, v in label_free(simclr, "block4", data.images, groups).items()),
        *(
            Row(arch, "none (random init)", m, v)
            for arch, (name, layer) in (("ViT", ("dino-vit", VIT_LAYER)), ("CNN", ("simclr-cnn", "block4")))
            for m, v in label_free(untrained[name], layer, data.images, bare).items()
        ),
        *committed("objects", len(data)),
        *(
            Row("ViT", "supervised", m, v)
            for m, v in supervised(vit, VIT_LAYER, VIT_GRADIENT_LAYER, data, others).items()
        ),
        Row("ViT", "supervised", "class-token attention", attention_maps(vit, data.images)),
    ]
    records = {
        "dino-vit": dino_record,
        "simclr-cnn": simclr_record,
        "supervised-vit": vit_record,
    }
    return data, rows, records


def anomaly_rows(n: int, references: int, seed: int) -> tuple[tasks.TaskData, list[Row], dict]:
    """Every map of the anomaly table (diseased test crops), and the models' records."""
    data = tasks.anomaly("test", 2 * n, seed)
    data = data.subset(data.labels == 1)
    healthy = tasks.anomaly("train", 2 * references, seed)
    healthy = healthy.images[healthy.labels == 0]
    ssl, ssl_record = train_ssl.load_or_train("simclr-retina", seed)
    label_free_maps = label_free(ssl, "block4", data.images, {"healthy crops": healthy})
    rows = [
        *(Row("CNN", "SimCLR on healthy crops, no labels", m, v) for m, v in label_free_maps.items()),
        *committed("anomaly", len(data)),
    ]
    return data, rows, {"simclr-retina": ssl_record}


def score(data: tasks.TaskData, maps: Tensor, seed: int) -> dict[str, tuple[float, float, float]]:
    """(mean, low, high) of each column, through whycam.evaluate.score_maps; the pointing game's
    15 px tolerance of 224 px images scaled to ours."""
    truths = {"target": data.masks, "items": data.masks | data.extras.get("distractors", data.masks)}
    cells = {}
    for truth in ("target", "items"):
        columns = {c: m for c, (m, t) in COLUMNS.items() if t == truth}
        if truth == "items" and "distractors" not in data.extras:
            continue
        scored = score_maps(
            nn.Identity(),
            data.images,
            maps,
            data.labels,
            list(columns.values()),
            truths[truth],
            options={"pointing_game": {"tolerance": 15 * maps.shape[-1] / 224}},
            seed=seed,
            resamples=BOOTSTRAP,
        )
        cells.update({c: scored.summary[m] for c, m in columns.items()})
    return cells


def markdown_table(rows: list[Row]) -> str:
    """Rows with each column's best mean in bold (the random baseline, last, excluded); "n/a" where a
    row read from another table lacks the column."""
    columns = [c for c in COLUMNS if c in rows[0].cells]
    best = {}
    for c in columns:
        scored = [i for i in range(len(rows) - 1) if c in rows[i].cells]
        best[c] = max(scored, key=lambda i: rows[i].cells[c][0])
    body = []
    for i, row in enumerate(rows):
        cell = row.cells
        texts = [f"{cell[c][0]:.3f} [{cell[c][1]:.3f}, {cell[c][2]:.3f}]" if c in cell else "n/a" for c in columns]
        body.append(
            [row.backbone, row.training, row.method]
            + [f"**{t}**" if best[c] == i else t for c, t in zip(columns, texts, strict=True)]
        )
    return table(["backbone", "training", "method", *(f"{c} ↑" for c in columns)], body)


def write_csv(path: Path, task: str, rows: list[Row], n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "metric", "mean", "ci_low", "ci_high", "n"])
        for row in rows:
            for column, (mean, low, high) in row.cells.items():
                writer.writerow([task, row.name, column, f"{mean:.6f}", f"{low:.6f}", f"{high:.6f}", n])


def figure(data: tasks.TaskData, rows: list[Row], path: Path) -> None:
    """The first test images, the target outlined (cyan; other items white), and each row's maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.method != "random maps"]  # rows with maps
    count, columns = FIGURE_IMAGES, len(shown) + 1
    fig, axes = plt.subplots(count, columns, figsize=(1.25 * columns, 1.35 * count), squeeze=False)
    for i in range(count):
        axes[i, 0].imshow(data.images[i].permute(1, 2, 0).numpy())
        for j, row in enumerate(shown, start=1):
            axes[i, j].imshow(row.maps[i].numpy(), cmap="jet", vmin=0, vmax=1)
        for ax in axes[i]:
            ax.contour(data.masks[i].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
            if "distractors" in data.extras:
                ax.contour(data.extras["distractors"][i].numpy(), levels=[0.5], colors="white", linewidths=0.5)
    titles = ["image", *(f"{r.training.split(',')[0]} {r.backbone}\n{r.method}" for r in shown)]
    for j, title in enumerate(titles):
        axes[0, j].set_title(title, fontsize=5)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout(pad=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_time(record: dict) -> str:
    """Wall time, and where recorded the process CPU time (all threads) and the load average at the end."""
    threads = f"{record['threads']} thread{'s' * (record['threads'] != 1)}"
    if "cpu_seconds" not in record:
        return f"{record['seconds']:.0f} s ({threads})"
    return f"{record['seconds']:.0f} s wall at load {record['load']:.1f}, {record['cpu_seconds']:.0f} s CPU ({threads})"


def models_table(records: dict[str, dict]) -> str:
    """The backbones: how trained, on what, how long, and their probe accuracies."""
    body = []
    for name, record in records.items():
        recipe = record.get("recipe", {})
        probe = record.get("probe")
        random_init = record.get("probe_random_init")
        body.append(
            [
                name,
                recipe.get("method", "supervised"),
                recipe.get("data", name.split()[0]),
                recipe.get("epochs", "-"),
                f"{probe['knn']:.3f} / {probe['linear']:.3f}" if probe else "-",
                f"{random_init['knn']:.3f} / {random_init['linear']:.3f}" if random_init else "-",
                f"{record['test_accuracy']:.3f}" if "test_accuracy" in record else "-",
                training_time(record),
            ]
        )
    header = [
        "model",
        "training",
        "data",
        "epochs",
        "probe k-NN / linear (val)",
        "same, random init",
        "test accuracy",
        "training time",
    ]
    return table(header, body)


def run(task: str, n: int, references: int, seed: int, out: Path) -> tuple[str, dict]:
    """Explain and score one task; writes its CSV and figure to ``out``, returns its Markdown and records."""
    data, rows, records = (objects_rows if task == "objects" else anomaly_rows)(n, references, seed)
    rows.append(
        Row("-", "-", "random maps", torch.rand(data.masks.shape, generator=torch.Generator().manual_seed(seed)))
    )
    for row in rows:
        if row.cells is None:
            row.cells = score(data, row.maps, seed)
        print(f"{task}: {row.name}: AUPRC {row.cells['AUPRC'][0]:.3f}", flush=True)
    write_csv(out / f"unlabelled-{task}.csv", task, [r for r in rows if r.maps is not None], len(data))
    figure(data, [r for r in rows if r.maps is not None], out / f"unlabelled-{task}.png")
    text = f"N = {len(data)} {data.split} images, {references} references per group, seed {seed}.\n\n"
    text += markdown_table(rows)
    text += f"\n\n![{task} without labels](results/unlabelled-{task}.png)"
    return text, records


def main(argv: list[str] | None = None) -> int:
    """Run, and write docs/ (0), or with --check compare with the committed CSVs (0 if they agree, else 1)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"presets {QUICK} instead of {FULL}")
    parser.add_argument("--tasks", nargs="+", default=["objects", "anomaly"], choices=["objects", "anomaly"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int)
    parser.add_argument("--references", type=int)
    parser.add_argument("--check", action="store_true", help="compare with the committed CSVs instead of writing docs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else FULL
    n = args.images or preset["images"]
    references = args.references or preset["references"]
    out = CHECK if args.check else DOCS / "results"
    start = time.perf_counter()
    sections, records = {}, {}
    for task in args.tasks:
        sections[task], found = run(task, n, references, args.seed, out)
        records.update(found)
    minutes = (time.perf_counter() - start) / 60
    print(f"done in {minutes:.1f} min")
    if args.check:
        from results import check

        names = [f"unlabelled-{task}" for task in args.tasks]
        agree = [check(name, CHECK / f"{name}.csv", DOCS / "results" / f"{name}.csv") for name in names]
        return 0 if all(agree) else 1
    command = " ".join(["python benchmarks/results_unlabelled.py", *(argv if argv is not None else sys.argv[1:])])
    footer = f"_`{command}`: {machine()}; whole run {minutes:.1f} min._"
    for task, markdown in sections.items():
        write_section("results.md", f"unlabelled-{task}", f"{markdown}\n\n{footer}")
    write_section("results.md", "unlabelled-models", models_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
