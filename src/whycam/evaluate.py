"""Methods x metrics over a dataset: one engine for ``whycam evaluate``, ``whycam benchmark`` and
``benchmarks/results.py``.

``evaluate(model, images, targets, methods=..., metrics=..., masks=..., boxes=...)`` explains every
image with every method through the run loop (``whycam.runs.Runner``), scores every map with every
metric of the registry (``whycam.metrics.registry``), and returns an ``Evaluation``: one row per
(image, method) with each metric's value and the method's time per image, plus a summary per
method: each metric's headline value with its 95% percentile bootstrap interval over the images
(``MetricResult.interval``) and whether higher is better.

``score_maps(model, images, maps, targets, metrics, truth)`` is the scoring alone, for maps made
elsewhere. Each localisation metric reads the ground truth it declares (``ground_truth``): boxes
for the box metrics and the energy pointing game where the dataset has boxes, masks for the rest.

Methods are registry names, ``{name: options}``, or ready explainers by name. A method that declares
``needs_reference`` (DiffCAM) is fitted on ``reference``; with no reference it is fitted on the
evaluated images themselves, and the notes say so. The caller's model and the global random
generator are left as they were.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .methods.base import methods as registered_methods
from .metrics.registry import Metric, get_metrics, ground_truth
from .models import Preprocess
from .runs import ExplainResult, MethodSpec, Runner
from .targets import OutputSelector

DEFAULT_METRICS = (
    "auprc",
    "topk_iou",
    "max_box_accuracy",
    "pointing_game",
    "energy_pointing_game",
    "road",
    "deletion",
    "insertion",
    "average_drop",
)
Truth = Tensor | Mapping[str, Tensor] | None


@dataclass
class Evaluation:
    """Per-image rows and per-method summary of an evaluation; ``save`` writes CSV and JSON.

    ``summary[i][metric]`` is ``(value, low, high)``: the metric's headline value (the mean of the
    per-image scores, or the metric's own dataset statistic such as MaxBoxAcc's best threshold)
    with its 95% bootstrap interval over the images. ``curves[metric][method]`` holds the mean curve
    of curve metrics: ``{"steps": [...], name: [...]}`` for each of the metric's curves.
    """

    rows: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    curves: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    maps: dict[str, Tensor] = field(default_factory=dict)
    accuracy: float | None = None
    n_images: int = 0

    def table(self) -> list[dict]:
        """One row per method: each metric as "value ± half-width" text, and the time per image."""
        rows = []
        for item in self.summary:
            row = {
                "method": item["method"],
                "images": item["n"],
                "time per image (s)": f"{item['time_s']:.3g}",
                "stride (px)": "×".join(f"{s:g}" for s in item["stride_px"]) if item.get("stride_px") else "pixel",
            }
            for metric, higher in self.higher_is_better.items():
                value, low, high = item[metric]
                row[f"{metric} {'↑' if higher else '↓'}"] = (
                    f"{value:.3f} ± {(high - low) / 2:.3f}" if value == value else "n/a"
                )
            rows.append(row)
        return rows

    def best(self) -> dict[str, str]:
        """The method with the best value of each metric."""
        best = {}
        for metric, higher in self.higher_is_better.items():
            values = [(item[metric][0], item["method"]) for item in self.summary if item[metric][0] == item[metric][0]]
            if values:
                best[metric] = (max if higher else min)(values)[1]
        return best

    def markdown(self) -> str:
        """The summary as a Markdown table, the best value of each metric in bold."""
        rows = self.table()
        if not rows:
            return ""
        best = self.best()
        columns = list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = [
                f"**{row[c]}**" if best.get(c.rsplit(" ", 1)[0]) == row["method"] and c != "method" else str(row[c])
                for c in columns
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``per_image.csv``, ``summary.csv``, ``summary.md`` and ``results.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "per_image": folder / "per_image.csv",
            "summary": folder / "summary.csv",
            "markdown": folder / "summary.md",
            "json": folder / "results.json",
        }
        _write_csv(paths["per_image"], self.rows)
        flat = []
        for item in self.summary:
            row = {"method": item["method"], "n": item["n"], "time_s": item["time_s"]}
            for metric in self.higher_is_better:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = item[metric]
            flat.append(row)
        _write_csv(paths["summary"], flat)
        paths["markdown"].write_text(self.markdown())
        paths["json"].write_text(
            json.dumps(
                {
                    "n_images": self.n_images,
                    "accuracy": self.accuracy,
                    "higher_is_better": self.higher_is_better,
                    "summary": flat,
                    "per_image": self.rows,
                    "curves": self.curves,
                    "notes": self.notes,
                    "failures": self.failures,
                },
                indent=2,
            )
        )
        return paths


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Scores:
    """One method's maps scored by several metrics.

    ``summary[metric]`` is ``(value, low, high)``: the headline value and its 95% bootstrap
    interval; ``per_image[metric]`` the (N,) scores (NaN where a metric did not score an image);
    ``curves[metric]`` the mean curves of curve metrics, ``{"steps": [...], name: [...]}``.
    """

    summary: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    per_image: dict[str, Tensor] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)


def routed_truth(entries: Mapping[str, Metric], masks: Tensor | None, boxes: Tensor | None) -> dict[str, Tensor]:
    """Each localisation metric's own ground truth from a dataset's masks and boxes (see ``ground_truth``)."""
    truth = {name: ground_truth(entry, masks, boxes) for name, entry in entries.items()}
    return {name: value for name, value in truth.items() if value is not None}


def score_maps(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    metrics: Sequence[str] | Mapping[str, Metric],
    truth: Truth = None,
    *,
    options: Mapping[str, Mapping[str, object]] | None = None,
    faithful: int | None = None,
    seed: int = 0,
    resamples: int = 1000,
) -> Scores:
    """Score maps (N, H, W) of ``images`` with each metric, each over all N images at once.

    ``truth``: the ground truth of every localisation metric, or a mapping from metric name to its
    own (e.g. masks for AUPRC, boxes for MaxBoxAcc); ``options``: each metric's keyword arguments,
    e.g. ``{"pointing_game": {"tolerance": 4.0}}``; ``faithful``: faithfulness metrics (which run
    the model, ROAD the costliest) score only the first ``faithful`` images of ``targets``' classes.
    """
    entries = metrics if isinstance(metrics, Mapping) else get_metrics(metrics)
    scored = Scores()
    for name, entry in entries.items():
        kwargs = dict((options or {}).get(name, {}))
        if entry.faithfulness:
            k = len(maps) if faithful is None else min(faithful, len(maps))
            result = entry.function(model, images[:k], maps[:k], targets[:k], **kwargs)
        else:
            given = truth.get(name) if isinstance(truth, Mapping) else truth
            if given is None:
                raise ValueError(f"{name} needs ground truth ({entry.truth})")
            result = entry.function(maps, given, **kwargs)
        values = torch.full((len(maps),), float("nan"), dtype=torch.float64)
        values[: result.scores.shape[0]] = result.scores.detach().double().cpu()
        scored.per_image[name] = values
        scored.summary[name] = (result.value, *result.interval(resamples=resamples, seed=seed))
        scored.higher_is_better[name] = bool(result.higher_is_better)
        if result.curves and result.steps is not None:
            curves = {k: v.double().nanmean(0).cpu().tolist() for k, v in result.curves.items()}
            scored.curves[name] = {"steps": result.steps.double().cpu().tolist(), **curves}
    return scored


def evaluate(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    *,
    methods: MethodSpec | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    truth: Truth = None,
    masks: Tensor | None = None,
    boxes: Tensor | None = None,
    labels: Tensor | None = None,
    names: Sequence[str] | None = None,
    layer: str | None = None,
    output: OutputSelector = None,
    preprocess: Preprocess | None = None,
    reference: object = None,
    options: Mapping[str, Mapping[str, object]] | None = None,
    metric_options: Mapping[str, Mapping[str, object]] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    skip_failures: bool = False,
    keep_maps: int = 0,
) -> Evaluation:
    """Score ``methods`` (default: every registered method) with ``metrics`` on ``images``.

    ``images``: (N, C, H, W) model inputs; ``targets``: (N,) classes explained (default: the
    prediction, through ``output``); ground truth: ``masks`` (N, H, W) and/or ``boxes`` (N, M, 4)
    ``(x0, y0, x1, y1)`` in input pixels, routed to each metric as it declares, or ``truth``: one
    tensor for every localisation metric or a mapping from metric name to its own; ``labels``: (N,)
    true classes, for the accuracy; ``names``: image names for the rows; ``layer``: the layer of the
    layer methods (default: each method's automatic choice); ``options``: per-method options, e.g.
    ``{"rise": {"masks": 500}}`` (a ``"layer"`` there overrides ``layer``); ``metric_options``:
    per-metric keyword arguments. Localisation metrics are skipped, with a note, without ground
    truth. ``skip_failures``: a method that raises is left out, its error kept in ``failures``.
    ``keep_maps``: keep the maps of the first k images of each method (for figures).
    """
    entries = get_metrics(list(metrics))
    if truth is None and (masks is not None or boxes is not None):
        truth = routed_truth(entries, masks, boxes)
    evaluation = Evaluation(n_images=len(images))
    for name in [n for n, entry in entries.items() if not entry.faithfulness and _truth_of(truth, n) is None]:
        evaluation.notes.append(f"{name} skipped: no ground truth")
        del entries[name]
    runner = _runner(model, methods, options, layer, output, preprocess, reference, images, batch_size, skip_failures)
    if runner.references and reference is None:
        evaluation.notes += [
            f"{name}: no reference group given; fitted on the evaluated images themselves "
            "(the question: what sets this image apart from the set)"
            for name in runner.references
        ]
    explained = runner.explain(images, targets, progress=progress)
    targets = explained.targets if targets is None else torch.as_tensor(targets).long()
    if labels is not None:
        evaluation.accuracy = (explained.predictions == torch.as_tensor(labels).cpu()).double().mean().item()
    scoring = _Scoring(model, images, targets, entries, truth, metric_options or {}, seed, skip_failures)
    names = list(names) if names is not None else explained.ids
    for method in explained.methods:
        _score_method(evaluation, method, explained, scoring, names)
        if keep_maps and method not in evaluation.failures:
            evaluation.maps[method] = explained.maps[method][:keep_maps]
    return evaluation


def _truth_of(truth: Truth, metric: str) -> Tensor | None:
    return truth.get(metric) if isinstance(truth, Mapping) else truth


def _runner(model, methods, options, layer, output, preprocess, reference, images, batch_size, skip_failures) -> Runner:
    """The run loop of an evaluation: each method with its options, DiffCAM-like ones fitted on
    ``reference`` (default: the evaluated images)."""
    if methods is None:
        methods = list(registered_methods())
    if not isinstance(methods, Mapping):
        methods = {name: dict((options or {}).get(name, {})) for name in methods}
    return Runner(
        model,
        methods,
        layer=layer,
        output=output,
        preprocess=preprocess,
        reference=images if reference is None else reference,
        batch_size=batch_size,
        strict=not skip_failures,
    )


@dataclass
class _Scoring:
    """What scoring each method of an evaluation needs."""

    model: nn.Module
    images: Tensor
    targets: Tensor
    entries: Mapping[str, Metric]
    truth: Truth
    options: Mapping[str, Mapping[str, object]]
    seed: int
    skip_failures: bool


def _score_method(evaluation: Evaluation, method: str, explained: ExplainResult, scoring: _Scoring, names) -> None:
    """Score one method's maps into ``evaluation`` (or record why it has none)."""
    failure = next((f.error for f in explained.failures if f.method == method), None)
    if failure is not None:
        evaluation.failures[method] = failure
        return
    images = scoring.images
    maps, targets = explained.maps[method].to(images.device), scoring.targets.to(images.device)
    try:
        scored = score_maps(
            scoring.model,
            images,
            maps,
            targets,
            scoring.entries,
            scoring.truth,
            options=scoring.options,
            seed=scoring.seed,
        )
    except Exception as error:
        if not scoring.skip_failures:
            raise
        evaluation.failures[method] = f"{type(error).__name__}: {error}"
        return
    seconds = float(explained.seconds[method].mean())
    evaluation.higher_is_better.update(scored.higher_is_better)
    for metric, curve in scored.curves.items():
        evaluation.curves.setdefault(metric, {})[method] = curve
    stride = explained.strides.get(method)
    summary = {"method": method, "n": len(images), "time_s": seconds, "stride_px": stride, **scored.summary}
    evaluation.summary.append(summary)
    for i, name in enumerate(names):
        row = {"image": name, "method": method, "target": int(targets[i]), "time_s": seconds}
        row.update({metric: values[i].item() for metric, values in scored.per_image.items()})
        evaluation.rows.append(row)
