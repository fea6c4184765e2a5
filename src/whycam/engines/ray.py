"""The Ray engine: the same work as the local engine, on Ray Data, on a laptop or a cluster.

The items become a Ray dataset of one block per shard; ``map_batches`` hands each block to an actor
of a pool (``num_actors`` actors, each holding the ``Runner``: the model and the fitted explainers,
shipped once per actor; one GPU each when the cluster has GPUs). The actor reads the block's files,
explains them and writes the block's shard itself, named by the block's run positions: a task that
Ray retries after its actor died writes the same shard again under the same name, so no image is lost
or duplicated (Ray Data restarts a dead actor and retries its task: ``max_restarts=-1``,
``max_task_retries=-1`` by default). Reference statistics are computed per block and merged exactly on the driver.

``ray.init(address=...)`` joins a running cluster (``ray start --head`` on one machine, ``ray start
--address=HEAD:6379`` on the others; every machine must see the image paths and ``out``); with no
address, Ray starts a local one.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..runs import Runner
from ..shards import open_run
from .files import Item, read_batch
from .local import close_run, describe, reader_preprocess
from .work import ShardWriter, block_statistics, merge_statistics, read_failures


def start_ray(address: str | None = None, *, num_cpus: int | None = None, progress: bool = True):
    """Connect to the cluster at ``address`` (None: a local one), once per process; returns ``ray``."""
    try:
        import ray  # noqa: PLC0415 (optional: whycam[ray])
    except ImportError:
        raise UsageError("the Ray engine needs Ray: pip install 'whycam[ray]'") from None
    if not ray.is_initialized():
        local = {} if address else {"num_cpus": num_cpus}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    return ray


def _dataset(ray, items: Sequence[Item], shard_size: int):
    """The items as a Ray dataset of contiguous blocks of about ``shard_size`` items (pickled: an item
    may carry a ground-truth ``Sample``); ``_items`` reads a block back."""
    rows = [{"item": pickle.dumps(item)} for item in items]
    return ray.data.from_items(rows, override_num_blocks=math.ceil(len(items) / shard_size))


def _items(block: dict[str, np.ndarray]) -> list[Item]:
    return [pickle.loads(data) for data in block["item"]]


def _placement(ray, num_actors: int | None, gpus_per_actor: float | None) -> tuple[int, float]:
    """``(actors, GPUs per actor)``: one actor per GPU of the cluster by default, else ``num_actors``."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if num_actors is None:
        num_actors = int(gpus // gpus_per_actor) if gpus_per_actor else 2
    return max(1, num_actors), gpus_per_actor


class ExplainActor:
    """One actor of the pool: a ``Runner`` (moved to this actor's GPU, if it has one) writing shards."""

    def __init__(self, runner: Runner, out: str, options: dict, gpu: bool):
        if gpu and torch.cuda.is_available():  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            runner.model.to("cuda")
            runner.device = torch.device("cuda")
        self.preprocess = reader_preprocess(runner)
        self.writer = ShardWriter(runner, out, **options)
        self.batch_size = runner.batch_size

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = _items(block)
        parts = [
            self.writer.rows(
                read_batch(items[start : start + self.batch_size], self.preprocess, display=self.writer.overlays,
                           masks=self.writer.needs_masks)
            )
            for start in range(0, len(items), self.batch_size)
        ]  # fmt: skip
        self.writer.write(parts)
        return {"index": np.array([item.index for item in items], dtype=np.int64)}


def run_on_ray_engine(
    runner: Runner,
    items: Sequence[Item],
    out: str | Path,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    shard_size: int = 256,
    resume: bool = False,
    overlays: bool = False,
    metrics: Sequence[str] = (),
    metric_options: dict | None = None,
    progress: bool = True,
) -> Path:
    """Explain (and, with ``metrics``, score) ``items`` on Ray into shards of ``out``; returns ``out``."""
    ray = start_ray(address, progress=progress)
    out = Path(out).resolve()
    clock = time.perf_counter()
    ShardWriter(runner, out, metrics=metrics)  # refuses metrics that cannot be scored image by image, here
    manifest = describe(runner, items, "ray", metrics)
    done = open_run(out, manifest, resume=resume)
    todo = [item for item in items if item.index not in done]
    if todo:
        actors, gpus = _placement(ray, num_actors, gpus_per_actor)
        options = {"overlays": overlays, "metrics": list(metrics), "metric_options": metric_options}
        written = _dataset(ray, todo, shard_size).map_batches(
            ExplainActor,
            fn_constructor_args=(runner, str(out), options, gpus > 0),
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus,
            num_cpus=1,
        )
        for _ in written.iter_batches(batch_size=None):
            pass
    close_run(out, manifest, runner, time.perf_counter() - clock)
    return out


class SummariseActor:
    """One actor of the pool: DiffCAM's embedding, summarising each block into statistics."""

    def __init__(self, explainer, preprocess, batch_size: int, labelled: bool):
        self.explainer, self.preprocess = explainer, reader_preprocess(preprocess)
        self.batch_size, self.labelled = batch_size, labelled

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = _items(block)
        batches = [
            read_batch(items[start : start + self.batch_size], self.preprocess)
            for start in range(0, len(items), self.batch_size)
        ]
        statistics = block_statistics(self.explainer, batches, self.labelled)
        failures = [(item.path, error) for item, error in read_failures(batches)]
        return {"part": np.array([pickle.dumps((statistics, failures))], dtype=object)}


def reference_on_ray(
    explainer,
    items: Sequence[Item],
    preprocess,
    *,
    batch_size: int = 32,
    address: str | None = None,
    num_actors: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
):
    """DiffCAM's reference statistics of ``items`` built on Ray, merged exactly from per-block sums;
    and the ``(path, error)`` of unreadable files."""
    ray = start_ray(address, progress=progress)
    labels = list(dict.fromkeys(item.label for item in items))
    actors, _ = _placement(ray, num_actors, 0.0)
    parts = _dataset(ray, items, shard_size).map_batches(
        SummariseActor,
        fn_constructor_args=(explainer, preprocess, batch_size, labels != [None]),
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
    )
    blocks = [pickle.loads(row["part"]) for row in parts.iter_rows()]
    statistics = merge_statistics([statistics for statistics, _ in blocks], labels)
    return statistics, [failure for _, failures in blocks for failure in failures]
