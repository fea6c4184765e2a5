"""The local engine: a DataLoader whose worker processes read and decode the files while this process
runs the model, rows written as shards every ``shard_size`` images, a progress bar with an ETA.

Memory holds the model, ``workers * prefetch`` batches in flight and one shard of maps, whatever the
size of the dataset; an interrupted run resumes from its finished shards (``resume=True``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import Preprocess
from ..runs import Runner
from ..shards import inputs_fingerprint, open_run, write_manifest
from .files import ImageFiles, Item, collate
from .work import ShardWriter, block_statistics, merge_statistics, read_failures


def reader_preprocess(runner_or_preprocess: Runner | Preprocess | None) -> Preprocess:
    """The model's preprocessing, run on the CPU (reading processes never touch the accelerator)."""
    preprocess = getattr(runner_or_preprocess, "preprocess", runner_or_preprocess)
    if preprocess is None:
        raise UsageError("reading image files needs the model's preprocessing: pass preprocess= or a LoadedModel")
    return dataclasses.replace(preprocess, device="cpu")


def describe(runner: Runner, items: Sequence[Item], engine: str, metrics: Sequence[str] = ()) -> dict[str, object]:
    """The manifest of a run of ``runner`` over ``items`` (see ``whycam.shards``)."""
    return {
        "model": runner.name,
        "methods": list(runner.explainers),
        "metrics": list(metrics),
        "images": len(items),
        "inputs": inputs_fingerprint(f"{item.path}\t{item.target}" for item in items),
        "engine": engine,
        "references": runner.references,
        "question": runner.question,
        "classes": runner.classes,
    }


def close_run(out: Path, manifest: dict[str, object], runner: Runner, seconds: float) -> None:
    """Mark the run complete, with the layers each method read and the wall time of this session."""
    write_manifest(out, {**manifest, "layers": runner.layers, "seconds": round(seconds, 3), "complete": True})


def run_local(
    runner: Runner,
    items: Sequence[Item],
    out: str | Path,
    *,
    workers: int = 2,
    shard_size: int = 256,
    resume: bool = False,
    overlays: bool = False,
    metrics: Sequence[str] = (),
    metric_options: dict | None = None,
    progress: bool = True,
) -> Path:
    """Explain (and, with ``metrics``, score) ``items`` into shards of ``out``; returns ``out``."""
    out = Path(out)
    clock = time.perf_counter()
    writer = ShardWriter(runner, out, overlays=overlays, metrics=metrics, metric_options=metric_options)
    manifest = describe(runner, items, "local", metrics)
    done = open_run(out, manifest, resume=resume)
    todo = [item for item in items if item.index not in done]
    files = ImageFiles(todo, reader_preprocess(runner), display=overlays, masks=writer.needs_masks)
    loader = DataLoader(
        files,
        batch_size=runner.batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )
    bar = tqdm(total=len(items), initial=len(done), desc="explain", unit="image", disable=not progress)
    parts, pending = [], 0
    for batch in loader:
        parts.append(writer.rows(batch))
        pending += len(batch.items)
        bar.update(len(batch.items))
        if pending >= shard_size:
            writer.write(parts)
            parts, pending = [], 0
    writer.write(parts)
    bar.close()
    close_run(out, manifest, runner, time.perf_counter() - clock)
    return out


def reference_local(
    explainer, items: Sequence[Item], preprocess: Preprocess, *, batch_size: int = 32, workers: int = 2, progress=True
):
    """DiffCAM's reference statistics of ``items`` streamed through a DataLoader: a ``ReferenceStats``,
    or a ``ReferenceBank`` when the items carry labels; and the ``(item, error)`` of unreadable files."""
    files = ImageFiles(items, reader_preprocess(preprocess))
    loader = DataLoader(
        files, batch_size=batch_size, num_workers=workers, collate_fn=collate, prefetch_factor=4 if workers else None
    )
    failures = []

    def batches():
        with tqdm(total=len(items), desc="reference", unit="image", disable=not progress) as bar:
            for batch in loader:
                failures.extend(read_failures([batch]))
                bar.update(len(batch.items))
                yield batch

    labels = list(dict.fromkeys(item.label for item in items))
    statistics = block_statistics(explainer, batches(), labelled=labels != [None])
    return merge_statistics([statistics], labels), failures
