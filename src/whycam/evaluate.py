"""Methods x metrics over a dataset: one engine for ``whycam evaluate``, ``whycam benchmark`` and
``benchmarks/results.py``.

``evaluate(model, images, targets, methods=..., metrics=..., masks=..., boxes=...)`` explains every
image with every method (in batches), scores every map with every metric of ``whycam.metrics``,
and returns an ``Evaluation``: one row per (image, method) with each metric's value and the
method's time per image, plus a summary per method: each metric's headline value with its 95%
percentile bootstrap interval over the images (``MetricResult.interval``) and whether higher is
better.

``score_maps(model, images, maps, targets, metrics, truth)`` is the scoring alone, for maps made
elsewhere (``benchmarks/results.py`` explains each group of images against its own reference).

Methods are registry names (``whycam.methods()``) or ready explainers by name. An explainer with a
``fit`` method (DiffCAM) is fitted on ``reference`` (a tensor of images or saved statistics); with
no reference it is fitted on the evaluated images themselves, and the summary says so.
"""

from __future__ import annotations

import csv
import inspect
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .methods.base import Explainer
from .methods.base import methods as registered_methods
from .methods.factory import create, method_class

LOCALISATION = (
    "auprc",
    "topk_iou",
    "mask_iou",
    "max_box_accuracy",
    "box_accuracy",
    "pointing_game",
    "energy_pointing_game",
)
BOX_METRICS = ("box_accuracy", "max_box_accuracy")  # they compare boxes: given several, each object's
FAITHFULNESS = ("road", "deletion", "insertion", "average_drop", "increase_in_confidence")
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


def make_explainer(name: str, model: nn.Module, layer: str | None = None, **options) -> Explainer:
    """``create(name, model, **options)``, given ``layer`` when the method declares ``needs_layer``."""
    if layer is not None and method_class(name).needs_layer:
        options = {"layer": layer, **options}
    return create(name, model, **options)


def metric_functions(names: Sequence[str]) -> dict[str, object]:
    """The functions of ``whycam.metrics`` by name; an unknown name lists the known ones."""
    from . import metrics as metrics_module  # the metrics package; imported when first needed

    known = [n for n in (*LOCALISATION, *FAITHFULNESS, "relevance_rank_accuracy") if hasattr(metrics_module, n)]
    unknown = [n for n in names if not callable(getattr(metrics_module, n, None))]
    if unknown:
        raise KeyError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(known)}")
    return {n: getattr(metrics_module, n) for n in names}


def call_metric(
    function,
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    truth: Tensor | None,
    **options,
) -> object:
    """Call a metric as ``whycam.metrics`` defines it: faithfulness metrics take
    ``(model, images, maps, targets)``, localisation metrics ``(maps, truth)`` (masks or boxes);
    ``options`` are the metric's own keyword arguments."""
    if is_faithfulness(function):
        return function(model, images, maps, targets, **options)
    if truth is None:
        raise ValueError(f"{function.__name__} needs ground truth (masks or boxes)")
    return function(maps, truth, **options)


def is_faithfulness(function) -> bool:
    """Whether a metric scores a map against the model (its first argument is the model)."""
    parameters = list(inspect.signature(function).parameters)
    return bool(parameters) and parameters[0] == "model"


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


def explain_all(
    explainer: Explainer,
    images: Tensor,
    targets: Tensor,
    batch_size: int = 8,
    seed: int = 0,
    bar: tqdm | None = None,
) -> tuple[Tensor, float]:
    """Maps (N, H, W) of ``images`` in batches, and the seconds spent per image."""
    maps, seconds = [], 0.0
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        torch.manual_seed(seed)
        clock = time.perf_counter()
        maps.append(explainer(batch, targets[start : start + batch_size]).detach().float())
        seconds += time.perf_counter() - clock
        if bar is not None:
            bar.update(batch.shape[0])
    return torch.cat(maps), seconds / max(images.shape[0], 1)


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


def score_maps(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    metrics: Sequence[str] | Mapping[str, object],
    truth: Tensor | Mapping[str, Tensor] | None = None,
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
    functions = metrics if isinstance(metrics, Mapping) else metric_functions(metrics)
    n = maps.shape[0]
    scored = Scores()
    for metric, function in functions.items():
        kwargs = dict((options or {}).get(metric, {}))
        if is_faithfulness(function):
            k = n if faithful is None else min(faithful, n)
            result = call_metric(function, model, images[:k], maps[:k], targets[:k], None, **kwargs)
        else:
            given = truth.get(metric) if isinstance(truth, Mapping) else truth
            result = call_metric(function, model, images, maps, targets, given, **kwargs)
        values = torch.full((n,), float("nan"), dtype=torch.float64)
        values[: result.scores.shape[0]] = result.scores.detach().double().cpu()
        scored.per_image[metric] = values
        scored.summary[metric] = (result.value, *result.interval(resamples=resamples, seed=seed))
        scored.higher_is_better[metric] = bool(result.higher_is_better)
        if result.curves and result.steps is not None:
            scored.curves[metric] = {"steps": result.steps.double().cpu().tolist()}
            scored.curves[metric].update({k: v.double().nanmean(0).cpu().tolist() for k, v in result.curves.items()})
    return scored


def evaluate(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    *,
    methods: Sequence[str] | Mapping[str, Explainer] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    truth: Tensor | Mapping[str, Tensor] | None = None,
    labels: Tensor | None = None,
    names: Sequence[str] | None = None,
    layer: str | None = None,
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
    prediction); ``truth``: (N, H, W) boolean masks, (N, 4) or (N, M, 4) boxes ``(x0, y0, x1, y1)``
    in input pixels, or a mapping from metric name to its own such ground truth; ``labels``: (N,)
    true classes, for the accuracy; ``names``: image names for the rows;
    ``layer``: the layer of the layer-based methods (default: each method's automatic choice);
    ``options``: per-method constructor options, e.g. ``{"rise": {"masks": 500}}`` (a ``"layer"``
    there overrides ``layer`` for that method); ``metric_options``: per-metric keyword arguments,
    e.g. ``{"pointing_game": {"tolerance": 4.0}}``.
    Localisation metrics are skipped, with a note, when there is no ground truth. Each method's maps
    are computed for every image first, then every metric is computed once over all of them.
    ``skip_failures``: a method that raises is left out, its error kept in ``failures``, instead of
    stopping the whole evaluation. ``keep_maps``: keep the maps of the first k images of each method
    in ``Evaluation.maps`` (for figures).
    """
    model.eval()
    n = images.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    evaluation = Evaluation(n_images=n)
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])
    targets = predictions if targets is None else torch.as_tensor(targets).long()
    if labels is not None:
        evaluation.accuracy = (predictions == torch.as_tensor(labels)).double().mean().item()
    functions = metric_functions(metrics)
    if truth is None:
        for name in [n for n, f in functions.items() if not is_faithfulness(f)]:
            evaluation.notes.append(f"{name} skipped: no ground truth")
            del functions[name]

    names_or_explainers = methods if isinstance(methods, Mapping) else (methods or list(registered_methods()))
    bar = tqdm(total=n * len(names_or_explainers), desc="explain", unit="map", disable=not progress)
    for method in names_or_explainers:
        try:
            explainer = (
                methods[method]
                if isinstance(methods, Mapping)
                else _explainer(method, model, layer, options or {}, reference, images, evaluation)
            )
            maps, seconds = explain_all(explainer, images, targets, batch_size, seed, bar)
            scored = score_maps(model, images, maps, targets, functions, truth, options=metric_options, seed=seed)
        except Exception as error:
            if not skip_failures:
                raise
            evaluation.failures[method] = f"{type(error).__name__}: {error}"
            continue
        evaluation.higher_is_better.update(scored.higher_is_better)
        for metric, curve in scored.curves.items():
            evaluation.curves.setdefault(metric, {})[method] = curve
        if keep_maps:
            evaluation.maps[method] = maps[:keep_maps].cpu()
        evaluation.summary.append({"method": method, "n": n, "time_s": seconds, **scored.summary})
        for i in range(n):
            row = {"image": names[i], "method": method, "target": int(targets[i]), "time_s": seconds}
            row.update({metric: values[i].item() for metric, values in scored.per_image.items()})
            evaluation.rows.append(row)
    bar.close()
    return evaluation


def _explainer(
    name: str,
    model: nn.Module,
    layer: str | None,
    options: Mapping[str, Mapping[str, object]],
    reference: object,
    images: Tensor,
    evaluation: Evaluation,
) -> Explainer:
    """A registered method, fitted on ``reference`` (or on ``images``) if it needs a reference group."""
    settings = dict(options.get(name, {}))
    explainer = make_explainer(name, model, settings.pop("layer", layer), **settings)
    if explainer.needs_reference:
        if reference is None:
            evaluation.notes.append(
                f"{name}: no reference group given; fitted on the evaluated images "
                "themselves (the question: what sets this image apart from the set)"
            )
        explainer.fit(images if reference is None else reference)
    return explainer
