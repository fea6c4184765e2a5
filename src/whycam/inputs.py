"""Inputs of a run: images from tensors, files, folders or DataLoaders, in batches; datasets with
ground truth; reference groups given as paths.

Unreadable files never stop a run: each becomes a ``Failure`` naming it, and the rest is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .data import iter_images, load_dataset, read_image, to_tensor
from .errors import InputError, ReferenceGroupError, UsageError
from .models import LoadedModel, Preprocess
from .reference import ReferenceBank, ReferenceStats
from .targets import Target

Images = Tensor | str | Path | Sequence[str | Path] | Iterable


@dataclass
class Failure:
    """A method (or, with ``method=None``, the reading of a file) that failed on some inputs."""

    inputs: list[str]
    error: str
    method: str | None = None

    def as_dict(self) -> dict[str, str]:
        what = ", ".join(self.inputs)
        return {"input": what if self.method is None else f"{self.method} on {what}", "error": self.error}


@dataclass
class InputBatch:
    """One batch of model inputs with their names, and the images the maps are drawn on (or None)."""

    inputs: Tensor
    ids: list[str]
    display: list[Tensor] | None = None
    labels: object = None


def unique_names(paths: Iterable[Path]) -> list[str]:
    """File stems, made unique by a ``_2``, ``_3``... suffix where two files share one."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return names


def read_inputs(
    paths: Iterable[str | Path], preprocess: Preprocess, failures: list[Failure]
) -> Iterator[tuple[Path, Tensor, Tensor]]:
    """``(path, display image (3, h, w) in [0, 1], model input)`` of each readable image; the others
    are appended to ``failures``."""
    for path, image in iter_images(paths):
        if isinstance(image, Exception):
            failures.append(Failure([str(path)], str(image)))
            continue
        display = preprocess.geometry(image)
        yield path, display, preprocess.normalize(display)


def file_batches(
    paths: Sequence[str | Path], preprocess: Preprocess, batch_size: int, failures: list[Failure]
) -> Iterator[InputBatch]:
    """Images read from files and folders, in batches named by unique file stems."""
    seen: list[Path] = []
    chunk: list[tuple[Tensor, Tensor]] = []
    for path, display, inputs in read_inputs(paths, preprocess, failures):
        seen.append(path)
        chunk.append((display, inputs))
        if len(chunk) == batch_size:
            yield _file_batch(chunk, unique_names(seen)[-len(chunk) :])
            chunk = []
    if chunk:
        yield _file_batch(chunk, unique_names(seen)[-len(chunk) :])


def _file_batch(chunk: list[tuple[Tensor, Tensor]], ids: list[str]) -> InputBatch:
    return InputBatch(torch.stack([inputs for _, inputs in chunk]), ids, [display for display, _ in chunk])


def input_batches(
    images: Images, batch_size: int, preprocess: Preprocess | None, failures: list[Failure]
) -> Iterator[InputBatch]:
    """``images`` as batches: a (N, C, H, W) tensor (rows named "0", "1", ...), files and folders
    (read through ``preprocess``), or an iterable / DataLoader of tensors or ``(images, labels)``."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise UsageError(f"images must be (N, C, H, W); got {tuple(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            yield InputBatch(chunk, [str(i) for i in range(start, start + len(chunk))])
        return
    if isinstance(images, (str, Path)) or (
        isinstance(images, Sequence) and images and all(isinstance(p, (str, Path)) for p in images)
    ):
        if preprocess is None:
            raise UsageError("reading image files needs the model's preprocessing: pass preprocess= or a LoadedModel")
        yield from file_batches(
            [images] if isinstance(images, (str, Path)) else list(images), preprocess, batch_size, failures
        )
        return
    start = 0
    for item in images:
        chunk, labels = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        if not isinstance(chunk, Tensor):
            raise UsageError(f"a batch must be images (B, C, H, W) or (images, labels), not {type(chunk).__name__}")
        yield InputBatch(chunk, [str(i) for i in range(start, start + len(chunk))], labels=labels)
        start += len(chunk)


def batch_targets(targets: Target, start: int, length: int) -> Target:
    """The targets of rows ``start:start+length``: one class or a callable is shared, one per image sliced."""
    if targets is None or isinstance(targets, int) or callable(targets):
        return targets
    return torch.as_tensor(targets).flatten()[start : start + length]


def read_reference(reference: str | Path, preprocess: Preprocess | None, failures: list[Failure]):
    """A reference given as a path: saved statistics (a file) or a folder of images (a tensor)."""
    path = Path(reference)
    if path.is_file():
        try:
            stats = ReferenceStats.load(path)
        except (ValueError, KeyError):
            stats = ReferenceBank.load(path)
        return stats, f"statistics {path.name} ({stats!r})"
    if preprocess is None:
        raise UsageError("a folder of reference images needs the model's preprocessing: pass preprocess=")
    inputs = [model_input for _, _, model_input in read_inputs([path], preprocess, failures)]
    if len(inputs) < 2:
        raise ReferenceGroupError(
            f"the reference folder {reference} holds {len(inputs)} readable image(s); "
            "a reference group needs at least 2"
        )
    return torch.stack(inputs), f"{len(inputs)} images from {reference}"


def reference_groups(folders: Sequence[str | Path], per_class: bool) -> list[tuple[str | None, Path]]:
    """``(label, folder)`` of each reference group: each folder as one group, or with ``per_class``
    each subfolder of each folder as the class it names."""
    groups: list[tuple[str | None, Path]] = []
    for folder in map(Path, folders):
        if not per_class:
            groups.append((None, folder))
            continue
        classes = sorted(p for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise UsageError(f"--per-class: {folder} has no subfolders (one per class)")
        groups.extend((c.name, c) for c in classes)
    return groups


def reference_batches(
    groups: Sequence[tuple[str | None, Path]], preprocess: Preprocess, batch_size: int, failures: list[Failure]
) -> Iterator[Tensor | tuple[Tensor, list[str]]]:
    """The batches DiffCAM's ``fit`` reads: images, or ``(images, labels)`` for labelled groups."""
    for label, folder in groups:
        for batch in file_batches([folder], preprocess, batch_size, failures):
            yield batch.inputs if label is None else (batch.inputs, [label] * len(batch.ids))


@dataclass
class GroundTruth:
    """A dataset with ground truth read through the model's preprocessing: names, display images,
    inputs (N, C, H, W), masks (N, H, W), labels (class indices, None where a label is not a class of
    the model) and the explained class's boxes (N, M, 4), padded with empty boxes (None for masks)."""

    names: list[str]
    display: list[Tensor]
    inputs: Tensor
    masks: Tensor
    labels: list[int | None]
    boxes: Tensor | None

    @property
    def targets(self) -> Tensor | None:
        """The labels as (N,) targets, when every image has one."""
        return None if None in self.labels else torch.tensor(self.labels, device=self.inputs.device)


def read_ground_truth(dataset_path: str | Path, loaded: LoadedModel, failures: list[Failure]) -> GroundTruth:
    """Read a dataset (``whycam.data.load_dataset``) through ``loaded``'s preprocessing."""
    preprocess = loaded.preprocess
    rows = []
    for sample in load_dataset(dataset_path):
        try:
            image = to_tensor(read_image(sample.path))
            mask = sample.mask(tuple(image.shape[-2:]))
        except (OSError, ValueError) as error:
            failures.append(Failure([str(sample.path)], str(error)))
            continue
        moved = preprocess.boxes(sample.explained_boxes, tuple(image.shape[-2:]))
        display = preprocess.geometry(image)
        mask = preprocess.geometry(mask[None].float(), mode="nearest")[0] > 0.5
        rows.append((sample, display, mask, torch.tensor(moved, dtype=torch.float32).reshape(-1, 4)))
    if not rows:
        raise InputError(f"no readable image in the dataset {dataset_path}")
    most = max(len(boxes) for *_, boxes in rows)
    return GroundTruth(
        [sample.path.stem for sample, *_ in rows],
        [display for _, display, _, _ in rows],
        torch.stack([preprocess.normalize(display) for _, display, _, _ in rows]),
        torch.stack([mask for _, _, mask, _ in rows]),
        [_class_index(loaded, sample.label) for sample, *_ in rows],
        torch.stack([torch.cat([b, b.new_zeros(most - len(b), 4)]) for *_, b in rows]) if most else None,
    )


def _class_index(loaded: LoadedModel, label: str | None) -> int | None:
    """A dataset label as the model's class index, or None (no label, or not a class of the model)."""
    if label is None:
        return None
    try:
        return loaded.class_index(label)
    except ValueError:
        return None
