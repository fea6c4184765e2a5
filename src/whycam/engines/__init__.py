"""Whole datasets: the run loop of ``whycam.runs`` streamed over files by an engine, into shards.

``run_dataset(model, images, methods, out, engine="local")`` explains every image named by
``images`` (files, folders; or ``Item``s) and writes shards and a manifest into ``out``
(``whycam.shards``); ``engine="ray"`` (``run_on_ray``) runs the same work on Ray Data. With
``metrics`` every map is also scored, and ``evaluation_of_run(out)`` turns the per-image scores into
the table of ``whycam.evaluate`` (intervals computed once, over every image). ``build_reference``
streams reference images into DiffCAM's statistics on either engine. ``whycam.load_run(out)`` reads a
run back as a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import ReferenceGroupError, UsageError
from ..evaluate import Evaluation
from ..methods.factory import create
from ..metrics.result import MetricResult
from ..models import LoadedModel
from ..reference import ReferenceBank, ReferenceStats
from ..runs import MethodSpec, Runner
from ..shards import load_run, read_manifest, shard_metadata
from .files import Item, list_items
from .local import reference_local, run_local
from .ray import reference_on_ray, run_on_ray_engine

ENGINES = ("local", "ray")


def run_dataset(
    model: nn.Module | LoadedModel,
    images: str | Path | Sequence[str | Path] | Sequence[Item],
    methods: MethodSpec,
    out: str | Path,
    *,
    engine: str = "local",
    target: int | None = None,
    metrics: Sequence[str] = (),
    metric_options: Mapping[str, Mapping[str, object]] | None = None,
    resume: bool = False,
    overlays: bool = False,
    shard_size: int = 256,
    workers: int = 2,
    address: str | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    progress: bool = True,
    **runner_options: object,
) -> Path:
    """Explain every image of ``images`` with ``methods`` into ``out`` (shards + manifest); returns ``out``.

    ``runner_options`` are ``Runner``'s (layer, reference, question, batch_size, ...); ``target``: one
    class for every image (default: each image's prediction). Local engine: ``workers`` DataLoader
    processes read the files. Ray engine: ``address`` of the cluster (None: a local one),
    ``num_actors`` (default: one per GPU, or 2), ``gpus_per_actor``.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    items = _items(images, target)
    runner = model if isinstance(model, Runner) else Runner(model, methods, **runner_options)
    shared = dict(
        shard_size=shard_size, resume=resume, overlays=overlays, metrics=metrics, metric_options=metric_options
    )
    if engine == "local":
        return run_local(runner, items, out, workers=workers, progress=progress, **shared)
    return run_on_ray_engine(
        runner, items, out, address=address, num_actors=num_actors, gpus_per_actor=gpus_per_actor, progress=progress,
        **shared,
    )  # fmt: skip


def run_on_ray(model, images, methods: MethodSpec, out: str | Path, **options: object) -> Path:
    """``run_dataset(..., engine="ray")``: the run on Ray Data (``address=`` a cluster, or a local one)."""
    return run_dataset(model, images, methods, out, engine="ray", **options)


def _items(images, target: int | None) -> list[Item]:
    if isinstance(images, (str, Path)):
        images = [images]
    images = list(images)
    if images and all(isinstance(image, Item) for image in images):
        return images
    if not images or not all(isinstance(image, (str, Path)) for image in images):
        raise UsageError("a dataset run reads image files: give files and folders (or whycam.engines.Item)")
    return list_items(images, target)


def evaluation_of_run(out: str | Path, *, seed: int = 0, resamples: int = 1000):
    """The ``whycam.evaluate.Evaluation`` of a run with metrics: its rows (one per image and method
    that produced a map) and, per method, each metric's mean with its 95% bootstrap interval over the
    images, computed here once from every image's score."""
    import pandas as pd  # noqa: PLC0415 (pandas loads only when a run is read)

    manifest = read_manifest(out)
    table = load_run(out, maps=False)
    higher = shard_metadata(out, "higher_is_better")
    metrics = [metric for metric in manifest["metrics"] if metric in higher]
    evaluation = Evaluation(n_images=int(table["index"].nunique()) if len(table) else 0)
    evaluation.higher_is_better = {metric: bool(higher[metric]) for metric in metrics}
    for method in manifest["methods"]:
        rows = table[(table["method"] == method) & table["failure"].isna()]
        if rows.empty:
            continue
        time_s = float(rows["seconds"].mean())
        summary = {"method": method, "n": len(rows), "time_s": time_s}
        for metric in metrics:
            result = MetricResult(
                metric, torch.tensor(rows[metric].to_numpy(float)), evaluation.higher_is_better[metric]
            )
            summary[metric] = (result.value, *result.interval(resamples=resamples, seed=seed))
        evaluation.summary.append(summary)
        for row in rows.itertuples(index=False):
            target = None if pd.isna(row.target) else int(row.target)
            record = {"image": row.id, "method": method, "target": target, "time_s": time_s}
            record.update({metric: float(getattr(row, metric)) for metric in metrics})
            evaluation.rows.append(record)
    failed = table[table["failure"].notna()]
    evaluation.failures = {f"{row.path} ({row.method})": row.failure for row in failed.itertuples(index=False)}
    return evaluation


def build_reference(
    model: nn.Module | LoadedModel,
    folders: Sequence[str | Path],
    *,
    layer: str | None = None,
    per_class: bool = False,
    engine: str = "local",
    batch_size: int = 32,
    workers: int = 2,
    address: str | None = None,
    num_actors: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    **options: object,
):
    """DiffCAM's reference statistics of the images in ``folders``, streamed: a ``ReferenceStats``, or
    with ``per_class`` a ``ReferenceBank`` with one class per subfolder; and the unreadable files
    as ``(path, error)``. The statistics are sums, so both engines build the same numbers."""
    loaded = model if isinstance(model, LoadedModel) else LoadedModel(model)
    layer = loaded.layer if layer is None else layer
    groups: list[tuple[str | None, Path]] = []
    for folder in map(Path, folders):
        if per_class:
            classes = sorted(p for p in folder.iterdir() if p.is_dir())
            if not classes:
                raise UsageError(f"per-class: {folder} has no subfolders (one per class)")
            groups.extend((c.name, c) for c in classes)
        else:
            groups.append((None, folder))
    items = list_items([path for _, path in groups], labels=[label for label, _ in groups])
    explainer = create("diffcam", loaded.model, layer=layer, **options)
    if engine == "local":
        statistics, failures = reference_local(
            explainer, items, loaded.preprocess, batch_size=batch_size, workers=workers, progress=progress
        )
        failures = [(item.path, error) for item, error in failures]
    elif engine == "ray":
        statistics, failures = reference_on_ray(
            explainer, items, loaded.preprocess, batch_size=batch_size, address=address, num_actors=num_actors,
            shard_size=shard_size, progress=progress,
        )  # fmt: skip
    else:
        raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    group = statistics.all() if isinstance(statistics, ReferenceBank) and statistics.classes else statistics
    if not isinstance(group, ReferenceStats) or group.count_ < 2:
        raise ReferenceGroupError("fewer than 2 images in the reference folders; nothing to summarise")
    return statistics, failures


__all__ = [
    "ENGINES",
    "Item",
    "build_reference",
    "evaluation_of_run",
    "list_items",
    "load_run",
    "run_dataset",
    "run_on_ray",
]
