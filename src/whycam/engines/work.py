"""What every engine does with a batch of files: explain it with a ``Runner``, score it, write a shard;
or summarise it into reference statistics. The local engine calls these in its own process, the Ray
engine in its actors, so both write the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..metrics.registry import get_metrics
from ..reference import ReferenceBank, ReferenceStats
from ..runs import Runner
from ..shards import write_shard
from ..viz import overlay_figure, save_png
from .files import FileBatch, Item

#: Metrics that compare the map's box with each object's box: the streaming engines read one mask per image.
BOX_METRICS = ("box_accuracy", "max_box_accuracy")


class ShardWriter:
    """Explain batches of files with ``runner`` and write them as shards of ``out``.

    ``metrics``: score every map with these metrics of ``whycam.metrics`` (a column each; the
    localisation metrics read the ground-truth masks of the items' samples); ``overlays``: also
    write ``overlays/{id}_{method}.png``.
    """

    def __init__(
        self,
        runner: Runner,
        out: str | Path,
        *,
        overlays: bool = False,
        metrics: Sequence[str] = (),
        metric_options: Mapping[str, Mapping[str, object]] | None = None,
    ):
        boxes = [name for name in metrics if name in BOX_METRICS]
        if boxes:
            raise UsageError(
                f"{', '.join(boxes)} compare boxes, and the streaming engines read one mask per image (MaxBoxAcc's "
                "value is moreover a statistic of the whole dataset); run them in memory (whycam evaluate without "
                "--engine)"
            )
        self.runner, self.out, self.overlays = runner, Path(out), overlays
        self.metrics = get_metrics(list(metrics))
        self.metric_options = {name: dict(options) for name, options in (metric_options or {}).items()}
        self.higher_is_better: dict[str, bool] = {}

    @property
    def needs_masks(self) -> bool:
        return any(not entry.faithfulness for entry in self.metrics.values())

    def rows(self, batch: FileBatch) -> tuple[list[dict], list[np.ndarray]]:
        """One row per item and method (see ``whycam.shards``) and the maps the rows point to."""
        methods = list(self.runner.explainers)
        result, scores, failed = None, {}, {}
        if batch.inputs is not None:
            read = batch.read
            targets = [item.target for item in read]
            given = torch.tensor(targets) if all(t is not None for t in targets) else None
            result = self.runner.explain_batch(batch.inputs, given, [item.id for item in read])
            failed = {failure.method: failure.error for failure in result.failures}
            scores = {m: self._scores(batch, result.maps[m], result.targets) for m in methods if m in result.maps}
        rows, maps = [], []
        position = {at: j for j, at in enumerate(batch.readable)}
        for at, item in enumerate(batch.items):
            for method in methods:
                row = {"index": item.index, "id": item.id, "path": item.path, "method": method}
                row.update(prediction=None, probability=None, target=None, layer=None, seconds=None, map_row=-1)
                row["failure"] = batch.errors.get(at)
                row.update(dict.fromkeys(self.metrics))
                if at in position:
                    self._fill(row, result, position[at], method, failed.get(method), maps, batch)
                    row.update({name: float(values[position[at]]) for name, values in scores.get(method, {}).items()})
                rows.append(row)
        return rows, maps

    def _fill(self, row: dict, result, j: int, method: str, error: str | None, maps: list, batch: FileBatch) -> None:
        if result.predictions is not None:
            row.update(prediction=int(result.predictions[j]), probability=float(result.probabilities[j]))
        if result.targets is not None:
            row["target"] = int(result.targets[j])
        row["layer"] = ",".join(result.layers.get(method, [])) or None
        if error is not None or method not in result.maps:
            row["failure"] = error or "no map"
            return
        row["seconds"] = result.seconds[method] / len(result.ids)
        row["map_row"] = len(maps)
        saliency = result.maps[method][j]
        maps.append(saliency.numpy())
        if self.overlays and batch.display is not None:
            title = method if row["target"] is None else f"{method}: {self._class_name(row['target'])}"
            save_png(
                self.out / "overlays" / f"{row['id']}_{method}.png", overlay_figure(batch.display[j], saliency, title)
            )

    def _class_name(self, index: int) -> str:
        classes = self.runner.classes
        return classes[index] if classes is not None and 0 <= index < len(classes) else str(index)

    def _scores(self, batch: FileBatch, maps: torch.Tensor, targets) -> dict[str, np.ndarray]:
        """Each metric's per-image scores of one method's maps on the readable images of ``batch``."""
        scores = {}
        model = self.runner.model
        images = batch.inputs.to(self.runner.device)
        for name, entry in self.metrics.items():
            options = self.metric_options.get(name, {})
            if entry.faithfulness:
                result = entry.function(model, images, maps.to(images.device), targets.to(images.device), **options)
            elif batch.masks is None:
                raise UsageError(f"{name} needs ground truth: evaluate a dataset with masks or boxes")
            else:
                result = entry.function(maps, batch.masks.to(maps.device), **options)
            if result.statistic is not None:
                raise UsageError(
                    f"{name}'s value is a statistic of the whole dataset, not a mean of per-image scores; "
                    "run it in memory (whycam evaluate without --engine)"
                )
            self.higher_is_better[name] = bool(result.higher_is_better)
            scores[name] = result.scores.detach().double().cpu().numpy()
        return scores

    def write(self, parts: Sequence[tuple[list[dict], list[np.ndarray]]]) -> Path | None:
        """Write the rows and maps of several batches as one shard (None when there is no row)."""
        rows, maps = [], []
        for part_rows, part_maps in parts:
            for row in part_rows:
                rows.append({**row, "map_row": row["map_row"] + len(maps) if row["map_row"] >= 0 else -1})
            maps.extend(part_maps)
        if not rows:
            return None
        stacked = np.stack(maps) if maps else np.zeros((0, 0, 0), dtype=np.float16)
        metadata = {"higher_is_better": json.dumps(self.higher_is_better)} if self.higher_is_better else None
        return write_shard(self.out, rows, stacked, metadata)


def block_statistics(explainer, batches: Iterable[FileBatch], labelled: bool) -> dict[object, ReferenceStats]:
    """Reference statistics of the readable images of ``batches`` (one entry per label, or the
    single entry None for an unlabelled group), fitted with ``explainer``'s ``partial_fit``."""

    def chunks():
        for batch in batches:
            if batch.inputs is not None:
                yield (batch.inputs, [item.label for item in batch.read]) if labelled else batch.inputs

    try:
        explainer.fit(chunks())
    except ValueError as error:
        if "held no images" in str(error):
            return {}
        raise
    return dict(explainer.bank_.classes) if labelled else {None: explainer.reference_}


def merge_statistics(parts: Sequence[Mapping[object, ReferenceStats]], labels: Sequence[object]):
    """Per-block statistics merged exactly (sums): a ``ReferenceBank`` over ``labels`` in that order,
    or one ``ReferenceStats`` when the groups are unlabelled."""
    if labels == [None]:
        return sum(part[None] for part in parts if None in part)
    merged = {label: sum(part[label] for part in parts if label in part) for label in labels}
    return ReferenceBank({label: stats for label, stats in merged.items() if isinstance(stats, ReferenceStats)})


def read_failures(batches: Sequence[FileBatch]) -> list[tuple[Item, str]]:
    """``(item, error)`` for every file of ``batches`` that could not be read."""
    return [(batch.items[at], error) for batch in batches for at, error in batch.errors.items()]
