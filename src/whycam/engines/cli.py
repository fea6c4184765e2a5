"""The engine options of ``whycam explain``, ``evaluate`` and ``reference build``, in one decorator.

``@engine_options()`` adds ``--engine``, ``--resume``, ``--workers``, ``--num-actors``,
``--ray-address``, ``--shard-size`` and ``--overlays/--no-overlays`` and hands the command one
``engine: EngineOptions`` argument. ``memory`` is the in-memory path of the command (every input
read first; outputs as before); ``local`` streams through a DataLoader into shards; ``ray`` runs on
Ray Data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from ..data import load_dataset
from ..errors import WhycamError
from ..shards import load_run
from . import evaluation_of_run, run_dataset
from .files import sample_items


@dataclass(frozen=True)
class EngineOptions:
    name: str
    resume: bool = False
    workers: int = 2
    num_actors: int | None = None
    address: str | None = None
    shard_size: int = 256
    overlays: bool = False

    @property
    def streams(self) -> bool:
        return self.name != "memory"

    def run_options(self) -> dict[str, object]:
        """The keyword arguments of ``whycam.engines.run_dataset``."""
        return dict(
            engine=self.name, resume=self.resume, workers=self.workers, num_actors=self.num_actors,
            address=self.address, shard_size=self.shard_size, overlays=self.overlays,
        )  # fmt: skip


KEYS = ("engine_name", "resume", "workers", "num_actors", "address", "shard_size", "overlays")


def engine_options(choices: tuple[str, ...] = ("memory", "local", "ray"), default: str = "memory"):
    """The engine options as one ``engine: EngineOptions`` argument of the command."""
    options = [
        click.option(
            "--engine",
            "engine_name",
            type=click.Choice(choices),
            default=default,
            show_default=True,
            help="memory: read every input, then run (small sets); local: stream through a DataLoader with "
            "--workers processes into shards + manifest (any size, resumable); ray: the same on Ray Data "
            "(whycam[ray]; --ray-address joins a cluster). See docs/scale.md.",
        ),
        click.option(
            "--resume", is_flag=True, help="Finish the interrupted run in --out: no finished image is redone."
        ),
        click.option("--workers", default=2, show_default=True, help="--engine local: processes reading the images."),
        click.option("--num-actors", type=int, default=None, help="--engine ray: actors (default: one per GPU, or 2)."),
        click.option(
            "--ray-address", "address", default=None, help="--engine ray: the cluster (default: a local one)."
        ),
        click.option("--shard-size", default=256, show_default=True, help="Images per shard (local and ray)."),
        click.option(
            "--overlays/--no-overlays",
            default=False,
            show_default=True,
            help="local and ray: also write a PNG overlay per map (slow: most of the time of a small run).",
        ),
    ]

    def decorate(function):
        @functools.wraps(function)
        def command(*args, **kwargs):
            values = {key: kwargs.pop(key) for key in KEYS}
            if values["engine_name"] == "memory" and values["resume"]:
                raise click.UsageError(
                    "--resume continues a run of --engine local or ray (the memory engine keeps none)"
                )
            kwargs["engine"] = EngineOptions(values.pop("engine_name"), **values)
            return function(*args, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def explain_files(ctx: click.Context, runner, images, target: int | None, out: str, engine: EngineOptions) -> None:
    """``whycam explain --engine local|ray``: the run into shards of ``out``; failures named, exit 1 if any."""
    try:
        run_dataset(runner, list(images), None, out, target=target, **engine.run_options())
    except WhycamError as error:
        raise click.UsageError(str(error)) from None
    report(ctx, load_run(out, maps=False), out)


def evaluate_files(ctx, runner, dataset, loaded, metrics, out: str, engine: EngineOptions):
    """``whycam evaluate --engine local|ray``: per-image scores into shards, then the tables of the
    in-memory evaluation (``per_image.csv``, ``summary.csv``, ``summary.md``, ``results.json``)."""
    try:
        samples = load_dataset(dataset).samples
    except (OSError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="DATASET") from None
    labels = [_class_index(loaded, sample.label) for sample in samples]
    targets = labels if all(label is not None for label in labels) else [None] * len(samples)
    try:
        run_dataset(runner, sample_items(samples, targets), None, out, metrics=metrics, **engine.run_options())
    except (WhycamError, KeyError) as error:
        raise click.UsageError(str(error)) from None
    evaluation = evaluation_of_run(out)
    paths = evaluation.save(out)
    click.echo(evaluation.markdown())
    click.echo(f"wrote {paths['summary']} and {paths['json']}")
    report(ctx, load_run(out, maps=False), out)


def _class_index(loaded, label: str | None) -> int | None:
    try:
        return None if label is None else loaded.class_index(label)
    except ValueError:
        return None


def report(ctx: click.Context, table, out: str | Path) -> None:
    """Name the failed rows of a run on stderr, say where it is, exit 1 if any row failed."""
    failed = table[table["failure"].notna()]
    for row in failed.itertuples(index=False):
        click.echo(f"whycam: {row.method} failed on {row.path}: {row.failure}", err=True)
    click.echo(f"wrote {table['index'].nunique()} images x {table['method'].nunique()} methods to {out}/ "
               "(read it with whycam.load_run)")  # fmt: skip
    if len(failed):
        click.echo(f"whycam: {len(failed)} row(s) failed; the other results were written.", err=True)
        ctx.exit(1)
