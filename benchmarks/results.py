"""The results of docs/results.md: every registered method on the three benchmark tasks.

    python benchmarks/results.py --quick      # small test sets, under 10 minutes on 2 CPU cores
    python benchmarks/results.py              # the full run
    python benchmarks/results.py --tasks anomaly --methods gradcam diffcam
    python benchmarks/results.py --quick --check   # does a quick run reproduce the committed table?
    python benchmarks/results.py --quick --check --tasks whynot   # that task's table only
    python benchmarks/results.py --tasks whynot --methods finercam --update   # add or rerun rows only

For each task (``tasks.py``) it loads the task's model (``train_tasks.py``: from the cache, or trains
it), explains the test images with every method of ``whycam.methods()`` and scores the maps:
localisation against the exact ground truth (AUPRC, top-k IoU, MaxBoxAcc, pointing game, energy
pointing game) and faithfulness to the model (ROAD combined, deletion, insertion, average drop),
through ``whycam.evaluate.score_maps``, the scoring of ``whycam evaluate``; plus the time per
image. Each cell is the mean over images with a 95% percentile-bootstrap interval; the best mean
per column is in bold. DiffCAM is fitted on the
task's reference group (objects: the training images of every other label class; anomaly: healthy
training images; why-not: training images of the contrast class). Its options are ablated on the
validation split, never the test split: each factor alone from the defaults, then every factor's
winner together; the best of these, when it beats the defaults, is run on the test split as the row
"diffcam (validation-chosen)" beside the defaults' row. Tables go to docs/results.md (one marked
section per task) and docs/results/<task>.csv. ``--update`` runs only ``--methods`` and puts their
rows into the committed table (every method's row depends only on its own maps, the images and the
seed), keeping the other rows, the figure and DiffCAM's ablation as committed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
import train_tasks  # noqa: E402
from common import DOCS, machine, table, write_section  # noqa: E402

import whycam  # noqa: E402
from whycam.evaluate import routed_truth, score_maps  # noqa: E402
from whycam.methods.factory import method_class, option_names  # noqa: E402
from whycam.metrics import get_metrics  # noqa: E402
from whycam.runs import Runner  # noqa: E402
from whycam.targets import Versus  # noqa: E402

BOOTSTRAP = 1000
BATCH = 50
QUICK = {"images": 40, "references": 100, "faithful": 10}
FULL = {"images": 500, "references": 300, "faithful": 100}
METRIC_BATCH = 64
FIGURE_IMAGES = 4
CHECK = train_tasks.CACHE / "check"  # where --check writes its tables (git-ignored)
# column -> whycam.metrics function
LOCALISATION = {
    "AUPRC": "auprc",
    "top-k IoU": "topk_iou",
    "MaxBoxAcc": "max_box_accuracy",
    "pointing": "pointing_game",
    "energy pointing": "energy_pointing_game",
}
FAITHFULNESS = {"ROAD": "road", "deletion": "deletion", "insertion": "insertion", "average drop": "average_drop"}
# One factor at a time from whycam.DiffCAM's defaults (issue 6 option names), scored by lesion /
# object / why-not AUPRC on the validation split.
ABLATION = {
    "embedding": [{"embedding": e} for e in ("auto", "avg", "max")],
    "shrinkage": [{"shrinkage": s} for s in ("ledoit-wolf", "oas", 0.1, 0.5, 1.0)],
    "k nearest references": [{"k": k} for k in (None, 20, 50)],
    "L2 normalisation": [{"normalize": v} for v in (False, True)],
    "layer": [{"layer": name} for name in ("block2", "block3", "block4")],
}


@dataclass
class Group:
    """Images of a job asked the same question: their indices, DiffCAM's reference images for them,
    and the target every other method explains (a class, or a score callable)."""

    index: Tensor
    references: Tensor
    target: object


@dataclass
class Job:
    """One task's explanation problem: the model, the images with their ground truth, and the groups
    of images that share a question."""

    task: str
    model: nn.Module
    record: dict
    data: tasks.TaskData
    groups: list[Group]
    notes: list[str] = field(default_factory=list)


def _sample(images: Tensor, n: int, seed: int) -> Tensor:
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[pick.sort().values]


def make_job(task: str, split: str, n: int, references: int, seed: int) -> Job:
    """The images of ``split`` a task's methods explain, grouped by question."""
    model, record = train_tasks.load_or_train(task, seed)
    if task == "objects":
        data = tasks.objects(split, n, seed)
        labels = range(len(data.classes))
        train = tasks.objects("train", references * len(labels), seed)
        groups = [
            Group((data.labels == c).nonzero().flatten(), _sample(train.images[train.labels != c], references, seed), c)
            for c in labels
        ]
        return Job(
            task,
            model,
            record,
            data,
            groups,
            ["target: the label", "DiffCAM's reference group: training scenes of every other label class"],
        )
    if task == "anomaly":
        data = tasks.anomaly(split, 2 * n, seed)
        data = data.subset(data.labels == 1)
        healthy = tasks.anomaly("train", 2 * references, seed)
        groups = [Group(torch.arange(len(data)), healthy.images[healthy.labels == 0], 1)]
        return Job(
            task,
            model,
            record,
            data,
            groups,
            [
                "only diseased images are explained (target: diseased)",
                "DiffCAM's reference group: healthy training crops",
            ],
        )
    data = tasks.whynot(split, n, seed)
    train = tasks.plain_items("train", data.source, train_tasks.RECIPES["whynot"].train)
    questions = sorted({(int(a), int(b)) for a, b in zip(data.labels, data.contrast, strict=True)})
    groups = [
        Group(
            ((data.labels == a) & (data.contrast == b)).nonzero().flatten(),
            _sample(train.images[train.labels == b], references, seed),
            Versus(a, b),
        )
        for a, b in questions
    ]
    return Job(
        task,
        model,
        record,
        data,
        groups,
        [
            "target: the logit difference y_a - y_b (Versus(a, b); FinerCAM: the comparison set {b})",
            "DiffCAM's reference group: training items of class b",
        ],
    )


def runner(name: str, job: Job, seed: int, reference: object = None, **options) -> Runner:
    """The run loop of one method on a job's model: the task's layer and the seed where the method
    takes them, ``options`` as they are, fitted on ``reference`` if it needs a reference group."""
    defaults = {"layer": train_tasks.LAYER, "seed": seed}
    accepted = option_names(name, options)
    settings = {**{k: v for k, v in defaults.items() if k in accepted}, **options}
    return Runner(job.model, {name: settings}, reference=reference, batch_size=BATCH, strict=True)


def explain(name: str, job: Job, seed: int, **options) -> tuple[Tensor, float, float]:
    """Maps (N, H, W) of every image of the job, the seconds per image of explaining and, for
    DiffCAM, the seconds spent fitting its reference groups (excluded from the time per image)."""
    maps = torch.zeros(job.data.masks.shape)
    fit = spent = 0.0
    reference_group = method_class(name).needs_reference
    method = None if reference_group else runner(name, job, seed, **options)
    for group in job.groups:
        if reference_group:
            start = time.perf_counter()
            method = runner(name, job, seed, group.references, **options)
            fit += time.perf_counter() - start
        for batch in method.iter_batches(job.data.images[group.index], group.target):
            rows = group.index[[int(i) for i in batch.ids]]
            maps[rows] = batch.maps[name]
            spent += batch.seconds[name]
    return maps, spent / len(job.data), fit


def random_maps(job: Job, seed: int) -> Tensor:
    """The chance baseline: uniform noise maps, seeded."""
    return torch.rand(job.data.masks.shape, generator=torch.Generator().manual_seed(seed))


class Cell(NamedTuple):
    """One table cell: the metric's headline value, its 95% bootstrap interval, and its direction."""

    mean: float
    low: float
    high: float
    higher_is_better: bool


def score(job: Job, maps: Tensor, faithful: int, seed: int, columns: tuple[str, ...] | None = None) -> dict[str, Cell]:
    """Each column's cell, through ``whycam.evaluate.score_maps`` (the engine of ``whycam evaluate``):
    the mean of per-image scores, or MaxBoxAcc's dataset-level best threshold. Localisation uses
    every image of the job, faithfulness the first ``faithful`` (ROAD is the costly one), on the
    softmax probability of the explained class (the label)."""
    chosen = {
        c: m
        for c, m in {**LOCALISATION, **(FAITHFULNESS if faithful else {})}.items()
        if columns is None or c in columns
    }
    truth = routed_truth(get_metrics(list(chosen.values())), job.data.masks, job.data.boxes)
    # the pointing game's 15 px tolerance is for 224 px images: scaled to ours
    options = {
        "pointing_game": {"tolerance": 15 * maps.shape[-1] / 224},
        **{m: {"batch_size": METRIC_BATCH} for m in FAITHFULNESS.values()},
    }
    scored = score_maps(
        job.model,
        job.data.images,
        maps,
        job.data.labels,
        list(chosen.values()),
        truth,
        options=options,
        faithful=faithful,
        seed=seed,
        resamples=BOOTSTRAP,
    )
    return {c: Cell(*scored.summary[m], scored.higher_is_better[m]) for c, m in chosen.items()}


def report(
    job: Job,
    rows: dict[str, dict[str, Cell]],
    times: dict[str, float],
    seed: int,
    failures: dict[str, str],
    faithful: int,
) -> str:
    """The Markdown section of one task: the table, best per column in bold, and how it was made."""
    columns = [c for c in (*LOCALISATION, *FAITHFULNESS) if any(c in r for r in rows.values())]
    higher = {c: cells[c].higher_is_better for cells in rows.values() for c in cells}
    best = {}
    for c in columns:
        means = {m: r[c][0] for m, r in rows.items() if c in r and m != "random (baseline)"}
        best[c] = (max if higher[c] else min)(means, key=means.get) if means else None
    body = []
    for method, cells in rows.items():
        line = [method]
        for c in columns:
            if c not in cells:
                line.append("n/a")
                continue
            mean, low, high, _ = cells[c]
            text = f"{mean:.3f} [{low:.3f}, {high:.3f}]"
            line.append(f"**{text}**" if best[c] == method else text)
        line.append(f"{1000 * times[method]:.1f}" if method in times else "-")
        body.append(line)
    header = ["method", *(f"{c} {'↑' if higher[c] else '↓'}" for c in columns), "ms / image"]
    record = job.record
    lines = [
        f"### {job.task} ({job.data.source}, {job.data.split} split)",
        "",
        f"N = {len(job.data)} images explained "
        f"({f'faithfulness: the first {faithful}' if faithful else 'faithfulness not scored'}); "
        f"model test accuracy {record['test_accuracy']:.3f} (validation {record['val_accuracy']:.3f}, "
        f"{record['sizes']['test']} test images); "
        f"seed {seed}; {'; '.join(job.notes)}.",
        "",
        table(header, body),
    ]
    if failures:
        lines += ["", "Not run: " + "; ".join(f"{m}: {e}" for m, e in failures.items())]
    return "\n".join(lines)


def write_csv(path: Path, job: Job, rows: dict, times: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "metric", "mean", "ci_low", "ci_high", "n"])
        for method, cells in rows.items():
            for column, (mean, low, high, _) in cells.items():
                writer.writerow([job.task, method, column, f"{mean:.6f}", f"{low:.6f}", f"{high:.6f}", len(job.data)])
            if method in times:
                writer.writerow([job.task, method, "seconds per image", f"{times[method]:.6f}", "", "", len(job.data)])


def figure(job: Job, shown: dict[str, Tensor], path: Path) -> None:
    """The first images of the test set with the ground truth outlined, and each method's maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(next(iter(shown.values())))
    columns = len(shown) + 1
    fig, axes = plt.subplots(count, columns, figsize=(1.3 * columns, 1.3 * count), squeeze=False)
    for i in range(count):
        axes[i, 0].imshow(job.data.images[i].permute(1, 2, 0).numpy())
        axes[i, 0].contour(job.data.masks[i].numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
        for j, maps in enumerate(shown.values(), start=1):
            axes[i, j].imshow(maps[i].numpy(), cmap="jet", vmin=0, vmax=1)
            axes[i, j].contour(job.data.masks[i].numpy(), levels=[0.5], colors="white", linewidths=0.6)
    for j, title in enumerate(["image", *shown]):
        axes[0, j].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout(pad=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def committed_rows(path: Path, higher: dict[str, bool], n: int) -> tuple[dict[str, dict[str, Cell]], dict[str, float]]:
    """A committed results CSV as table rows and seconds per image (``higher``: each column's
    direction), refused unless it scored the same ``n`` images."""
    rows, times = {}, {}
    with path.open() as f:
        for r in csv.DictReader(f):
            if int(r["n"]) != n:
                raise SystemExit(f"{path} scored {r['n']} images, this run {n}: rerun the table in full")
            if r["metric"] == "seconds per image":
                times[r["method"]] = float(r["mean"])
            else:
                cell = Cell(float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]), higher[r["metric"]])
                rows.setdefault(r["method"], {})[r["metric"]] = cell
    return rows, times


def committed_tail(task: str) -> str:
    """What follows the table in the task's committed section of docs/results.md: the methods not
    run, the figure, DiffCAM's ablation and the footer."""
    text = (DOCS / "results.md").read_text()
    section = text.split(f"<!-- results-{task}:start -->")[1].split(f"<!-- results-{task}:end -->")[0].strip()
    return section[section.index("\n\n", section.index("| method |")) :]


def run_task(
    task: str,
    names: list[str],
    n: int,
    references: int,
    seed: int,
    faithful: int,
    out: Path,
    chosen: dict | None = None,
    update: bool = False,
) -> str:
    """Explain and score one task's test images with every method, plus DiffCAM with the options
    ``chosen`` on the validation split (a row of its own) when they differ from its defaults; the
    CSV and figure go to ``out``, the Markdown section is returned. ``update``: the rows of these
    methods replace or join those of the committed CSV and section, whose figure and text stay."""
    job = make_job(task, "test", n, references, seed)
    faithful = min(faithful, len(job.data))
    runs = {name: (name, {}) for name in names}
    if chosen:
        runs["diffcam (validation-chosen)"] = ("diffcam", chosen)
    rows, times, failures, shown = {}, {}, {}, {}
    for name, (method, options) in runs.items():
        try:
            maps, per_image, fit = explain(method, job, seed, **options)
        except (TypeError, ValueError, RuntimeError) as error:  # e.g. CAM with a logit-difference target
            failures[name] = str(error).split("\n")[0]
            print(f"{task}: {name} not run: {failures[name]}")
            continue
        times[name] = per_image
        shown[name] = maps[:FIGURE_IMAGES]
        rows[name] = score(job, maps, faithful, seed)
        print(
            f"{task}: {name} {per_image * 1000:.1f} ms/image"
            + (f", fit {fit:.1f} s" if fit else "")
            + f", AUPRC {rows[name]['AUPRC'][0]:.3f}"
        )
    rows["random (baseline)"] = score(job, random_maps(job, seed), faithful, seed)
    if update:
        higher = {column: cell.higher_is_better for column, cell in rows["random (baseline)"].items()}
        kept, kept_times = committed_rows(out / f"{task}.csv", higher, len(job.data))
        rows = dict(sorted({**kept, **rows}.items(), key=lambda row: (row[0] == "random (baseline)", row[0])))
        write_csv(out / f"{task}.csv", job, rows, {**kept_times, **times})
        return report(job, rows, {**kept_times, **times}, seed, failures, faithful) + committed_tail(task)
    write_csv(out / f"{task}.csv", job, rows, times)
    if shown:
        figure(job, shown, out / f"{task}.png")
    picture = f"\n\n![{task}: the maps of each method](results/{task}.png)" if shown else ""
    return report(job, rows, times, seed, failures, faithful) + picture


def ablation(task: str, n: int, references: int, seed: int) -> tuple[str, dict]:
    """DiffCAM's options on the validation split, scored by AUPRC: each factor varied alone from
    the defaults, then every factor's winner together. The options returned are the best of the
    defaults, each factor's winner alone, and the winners together ({} when the defaults are)."""
    job = make_job(task, "val", n, references, seed)

    def auprc(options: dict) -> Cell:
        maps, _, _ = explain("diffcam", job, seed, **options)
        return score(job, maps, 0, seed, ("AUPRC",))["AUPRC"]

    def cell(value: Cell, best: bool) -> str:
        text = f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"
        return f"**{text}**" if best else text

    default = auprc({})
    body, winners, scored = [["defaults", "{}", cell(default, False)]], {}, {}
    for factor, settings in ABLATION.items():
        results = [(options, auprc(options)) for options in settings]
        best = max(results, key=lambda r: r[1].mean)
        winners[factor], scored[factor] = best[0], best
        body += [[factor, json.dumps(options), cell(value, options is best[0])] for options, value in results]
    combined = {k: v for options in winners.values() for k, v in options.items()}
    together = auprc(combined)
    candidates = [({}, default), *((options, value) for options, value in scored.values()), (combined, together)]
    chosen, best = max(candidates, key=lambda c: c[1].mean)
    body.append(["every winner together", json.dumps(combined), cell(together, chosen is combined)])
    chosen = {} if best.mean <= default.mean else chosen
    markdown = "\n".join(
        [
            f"#### DiffCAM ablation: {task} (validation split, N = {len(job.data)}, AUPRC)",
            "",
            table(["factor", "options", "AUPRC ↑"], body),
        ]
    )
    return markdown, chosen


def read_cells(path: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """A results CSV's cells with intervals: (method, metric) -> (mean, low, high)."""
    with path.open() as f:
        return {
            (r["method"], r["metric"]): (float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
            for r in csv.DictReader(f)
            if r["ci_low"]
        }


def check(task: str, new: Path, committed: Path) -> bool:
    """Whether this run reproduces the committed table: every cell's 95% interval overlaps the
    committed one's. Prints the count, how many new means lie inside the committed intervals, and
    every disagreeing cell."""
    ours, theirs = read_cells(new), read_cells(committed)
    shared = sorted(ours.keys() & theirs.keys())
    apart = [k for k in shared if ours[k][1] > theirs[k][2] or theirs[k][1] > ours[k][2]]
    inside = sum(theirs[k][1] <= ours[k][0] <= theirs[k][2] for k in shared)
    print(
        f"{task}: {len(shared) - len(apart)} of {len(shared)} cells overlap the committed intervals; "
        f"{inside} of {len(shared)} means lie inside them"
    )
    for method, metric in apart:
        print(f"  {method} / {metric}: {ours[method, metric]} against committed {theirs[method, metric]}")
    return not apart


def arguments() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"presets {QUICK} instead of {FULL}")
    parser.add_argument("--tasks", nargs="+", default=list(tasks.TASKS), choices=list(tasks.TASKS))
    parser.add_argument("--methods", nargs="+", default=None, help="registered names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, help="test images explained per task")
    parser.add_argument("--references", type=int, help="DiffCAM references per group")
    parser.add_argument("--faithful", type=int, help="images scored for faithfulness (0: none)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare with the committed docs/results/<task>.csv instead of writing docs/ "
        f"(tables go to {CHECK}); exit 1 if any cell's interval misses the committed one",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="run only --methods and put their rows into the committed tables (the others, the figures "
        "and DiffCAM's ablation kept)",
    )
    args = parser.parse_args()
    if args.update and (args.check or not args.methods or "diffcam" in args.methods):
        parser.error("--update writes the rows of --methods (not diffcam, whose ablation is a full run's) to docs")
    return args


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else FULL
    n, references, faithful = (
        preset[k] if getattr(args, k) is None else getattr(args, k) for k in ("images", "references", "faithful")
    )
    registry = whycam.methods()
    names = args.methods or list(registry)
    start = time.perf_counter()
    sections = {}
    out = CHECK if args.check else DOCS / "results"
    for task in args.tasks:
        markdown, chosen = "", {}
        if "diffcam" in names and not args.check and not args.update:
            markdown, chosen = ablation(task, n, references, args.seed)
            verdict = (
                f'the best is {json.dumps(chosen)}, the row "diffcam (validation-chosen)" of the test table'
                if chosen
                else "the best is whycam.DiffCAM's defaults"
            )
            markdown = "\n\n" + markdown + f"\n\nOn validation, {verdict}."
        sections[task] = run_task(task, names, n, references, args.seed, faithful, out, chosen, args.update) + markdown
    minutes = (time.perf_counter() - start) / 60
    if args.check:
        agree = [check(task, CHECK / f"{task}.csv", DOCS / "results" / f"{task}.csv") for task in args.tasks]
        if args.quick and set(args.tasks) == set(tasks.TASKS):  # "Without labels" too (results_unlabelled.py)
            import results_unlabelled

            agree.append(results_unlabelled.main(["--quick", "--check", "--threads", str(args.threads)]) == 0)
        print(f"done in {minutes:.1f} min")
        sys.exit(0 if all(agree) else 1)
    command = " ".join(["python benchmarks/results.py", *sys.argv[1:]])
    for task, markdown in sections.items():
        footer = (
            f"_`{command}`: {n} images, {references} references per group, faithfulness on "
            f"{faithful}; {machine()}; whole run {minutes:.1f} min._"
        )
        if args.update:
            footer = f"_The rows of {', '.join(names)}:_ {footer}"
        write_section("results.md", f"results-{task}", f"{markdown}\n\n{footer}")
    print(f"done in {minutes:.1f} min")


if __name__ == "__main__":
    main()
