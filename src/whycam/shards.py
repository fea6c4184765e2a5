"""The output of a run over a dataset: shards of rows and maps, and a manifest.

A run folder holds ``manifest.json`` (the model, the methods, the layers and references, the number of
images, whether the run is complete) and, for each part of the dataset that has been explained,

- ``shard-{first:09d}-{last:09d}.parquet``: one row per image and method, with the columns
  ``index, id, path, method, prediction, probability, target, layer, seconds, failure, map_row`` and,
  for an evaluation, one column per metric (the image's score);
- ``shard-{first:09d}-{last:09d}.npy``: the maps of that shard, float16 (n, H, W), row ``map_row``
  (-1 where the method failed on the image).

``first``/``last`` are the run positions of the shard's first and last image, so that an engine that
writes the same images again (a retried Ray task) writes the same files: a shard is never written
twice under two names. Each file is written to a temporary name and renamed, the ``.npy`` first and the
``.parquet`` last, so a shard whose ``.parquet`` exists is complete; ``finished`` lists the run
positions that a resumed run skips. ``load_run(folder)`` reads everything back as one DataFrame.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import UsageError

FORMAT = "whycam-run/1"
MANIFEST = "manifest.json"
COLUMNS = (
    "index",
    "id",
    "path",
    "method",
    "prediction",
    "probability",
    "target",
    "layer",
    "seconds",
    "failure",
    "map_row",
)


def shard_name(indices: Iterable[int]) -> str:
    """The name of the shard holding the images at run positions ``indices``."""
    indices = list(indices)
    return f"shard-{min(indices):09d}-{max(indices):09d}"


def _replace(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def write_shard(
    folder: str | Path,
    rows: Sequence[Mapping[str, object]],
    maps: np.ndarray,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write one shard: ``rows`` (dicts with ``COLUMNS``, plus score columns) and their ``maps``
    (float16 (n, H, W); row ``map_row`` of each row), ``metadata`` in the Parquet schema. Atomic: the
    ``.parquet`` appears last."""
    import pyarrow as pa  # noqa: PLC0415 (pyarrow/pandas load only when a run is written or read)
    import pyarrow.parquet as pq  # noqa: PLC0415 (pyarrow/pandas load only when a run is written or read)

    folder = Path(folder)
    name = shard_name(int(row["index"]) for row in rows)

    def save(path: Path) -> None:
        with path.open("wb") as handle:
            np.save(handle, maps.astype(np.float16), allow_pickle=False)

    _replace(folder / f"{name}.npy", save)
    table = pa.Table.from_pylist([dict(row) for row in rows])
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    _replace(folder / f"{name}.parquet", lambda path: pq.write_table(table, path))
    return folder / f"{name}.parquet"


def shard_paths(folder: str | Path) -> list[Path]:
    """The complete shards of a run, in order."""
    return sorted(Path(folder).glob("shard-*.parquet"))


def finished(folder: str | Path) -> set[int]:
    """The run positions of the images already in a complete shard (what ``--resume`` skips)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (pyarrow/pandas load only when a run is written or read)

    done: set[int] = set()
    for path in shard_paths(folder):
        done.update(pq.read_table(path, columns=["index"]).column("index").to_pylist())
    return done


def shard_metadata(folder: str | Path, key: str) -> dict[str, object]:
    """The JSON value of ``key`` in the shards' Parquet metadata, merged over shards."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (pyarrow/pandas load only when a run is written or read)

    merged: dict[str, object] = {}
    for path in shard_paths(folder):
        metadata = pq.read_schema(path).metadata or {}
        if key.encode() in metadata:
            merged.update(json.loads(metadata[key.encode()]))
    return merged


def write_manifest(folder: str | Path, manifest: Mapping[str, object]) -> Path:
    path = Path(folder) / MANIFEST
    _replace(path, lambda p: p.write_text(json.dumps({"format": FORMAT, **manifest}, indent=2, default=str)))
    return path


def read_manifest(folder: str | Path) -> dict[str, object]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a whycam run: it has no {MANIFEST}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is format {manifest.get('format')!r}; this whycam reads {FORMAT!r}")
    return manifest


def load_run(folder: str | Path, *, maps: bool = True):
    """A run's output as one pandas DataFrame, a row per image and method, sorted by run position:
    ``index, id, path, method, prediction, probability, target, layer, seconds, failure``, the score
    columns of an evaluation, and ``map`` (the (H, W) float32 array, None where the method failed)."""
    import pandas as pd  # noqa: PLC0415 (pyarrow/pandas load only when a run is written or read)

    read_manifest(folder)
    frames = []
    for path in shard_paths(folder):
        frame = pd.read_parquet(path)
        if maps:
            arrays = np.load(path.with_suffix(".npy"), allow_pickle=False)
            frame["map"] = [arrays[row].astype(np.float32) if row >= 0 else None for row in frame["map_row"]]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, *(["map"] if maps else [])]).drop(columns="map_row")
    table = pd.concat(frames, ignore_index=True).drop(columns="map_row")
    table = table.astype({"prediction": "Int64", "target": "Int64"})
    return table.sort_values("index", kind="stable").reset_index(drop=True)


#: What must agree between a run and the run that resumes it.
IDENTITY = ("model", "methods", "inputs", "metrics", "targets")


def open_run(folder: str | Path, manifest: Mapping[str, object], *, resume: bool) -> set[int]:
    """Start (or, with ``resume``, continue) a run in ``folder``: the run positions already finished.

    A folder that holds another run is refused unless it is resumed, and a run is resumed only with
    the same model, methods, inputs, metrics and targets.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        if not resume:
            raise UsageError(
                f"{folder} already holds a run; pass --resume (resume=True) to finish it, or another --out"
            )
        previous = read_manifest(folder)
        for key in IDENTITY:
            if previous.get(key) != manifest.get(key):
                raise UsageError(
                    f"cannot resume the run in {folder}: it was started with {key} {previous.get(key)!r}, "
                    f"this one has {manifest.get(key)!r}; resume with the same arguments, or use another --out"
                )
        done = finished(folder)
    else:
        done = set()
    write_manifest(folder, {**manifest, "complete": False})
    return done


def inputs_fingerprint(paths: Iterable[str]) -> str:
    """A hash of the ordered input paths (a resumed run must see the same images in the same order)."""
    digest = hashlib.blake2b(digest_size=12)
    for path in paths:
        digest.update(path.encode() + b"\0")
    return f"{digest.hexdigest()}"
