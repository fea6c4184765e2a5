"""A dataset of image files that decodes in the worker that reads it (a DataLoader worker process or
a Ray actor), never holding the dataset in memory.

``list_items(paths)`` names every file once, in a fixed order (folders sorted, ids the unique file
stems), so that a run, its resumption and its Ray twin agree on which image is which. ``ImageFiles``
reads item i through the model's preprocessing; a file that cannot be read is carried as an error
string, never raised, and ``collate`` keeps it beside the readable images of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data import ImageReadError, NoImagesError, Sample, find_images, read_image, to_tensor
from ..inputs import unique_names
from ..models import Preprocess


@dataclass(frozen=True)
class Item:
    """One image of a run: its position in the run, its id, its file; optionally the class to explain,
    the ground truth (a ``Sample`` with a mask or boxes) of an evaluation, the reading error of a path
    that holds no image, and the group label of a reference image."""

    index: int
    id: str
    path: str
    target: int | None = None
    sample: Sample | None = None
    error: str | None = None
    label: str | None = None


def list_items(
    paths: Iterable[str | Path], target: int | None = None, labels: Sequence[str | None] | None = None
) -> list[Item]:
    """Every image named by ``paths`` (files, folders searched recursively), numbered and named once;
    ``target``: the class every image is explained for (None: its prediction); ``labels``: one group
    label per path (a reference bank's classes).

    A folder without images or a missing file becomes an item with its ``error`` (a failure row of the run).
    """
    paths = list(paths)
    labels = [None] * len(paths) if labels is None else list(labels)
    found: list[tuple[Path, str | None, str | None]] = []
    for path, label in zip(paths, labels, strict=True):
        try:
            found.extend((file, None, label) for file in find_images(path))
        except (ImageReadError, NoImagesError) as error:
            found.append((Path(path), str(error), label))
    ids = unique_names(path for path, _, _ in found)
    return [
        Item(i, name, str(path), target, error=error, label=label)
        for i, ((path, error, label), name) in enumerate(zip(found, ids, strict=True))
    ]


def sample_items(samples: Sequence[Sample], targets: Sequence[int | None]) -> list[Item]:
    """The items of a ground-truth dataset (``whycam.data.load_dataset``), with their classes."""
    ids = unique_names(sample.path for sample in samples)
    return [
        Item(i, name, str(sample.path), target, sample)
        for i, (sample, name, target) in enumerate(zip(samples, ids, targets, strict=True))
    ]


@dataclass
class FileBatch:
    """Items read together: ``inputs`` (k, C, H, W) holds the readable ones, at ``readable`` positions
    of ``items``; ``errors[position]`` says why the others could not be read."""

    items: list[Item]
    inputs: Tensor | None
    readable: list[int]
    errors: dict[int, str] = field(default_factory=dict)
    display: list[Tensor] | None = None
    masks: Tensor | None = None

    @property
    def read(self) -> list[Item]:
        return [self.items[i] for i in self.readable]


class ImageFiles(Dataset):
    """``items`` read through ``preprocess``: element i is ``(item, inputs, display, mask, error)``.

    ``display``: keep the geometry-only image the overlays are drawn on; ``masks``: read each
    sample's ground-truth mask at the model's input size (evaluation).
    """

    def __init__(self, items: Sequence[Item], preprocess: Preprocess, *, display: bool = False, masks: bool = False):
        self.items, self.preprocess, self.display, self.masks = list(items), preprocess, display, masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> tuple:
        item = self.items[position]
        if item.error is not None:
            return item, None, None, None, item.error
        try:
            image = to_tensor(read_image(item.path))
            mask = item.sample.mask(tuple(image.shape[-2:])) if self.masks and item.sample is not None else None
        except (OSError, ValueError) as error:
            return item, None, None, None, str(error)
        shown = self.preprocess.geometry(image)
        if mask is not None:
            mask = self.preprocess.geometry(mask[None].float(), mode="nearest")[0] > 0.5
        return item, self.preprocess.normalize(shown), shown if self.display else None, mask, None


def collate(elements: Sequence[tuple]) -> FileBatch:
    """``ImageFiles`` elements as one ``FileBatch`` (for ``DataLoader(collate_fn=collate)``)."""
    items = [element[0] for element in elements]
    readable = [i for i, element in enumerate(elements) if element[4] is None]
    errors = {i: element[4] for i, element in enumerate(elements) if element[4] is not None}
    inputs = torch.stack([elements[i][1] for i in readable]) if readable else None
    display = [elements[i][2] for i in readable] if readable and elements[readable[0]][2] is not None else None
    masks = (
        torch.stack([elements[i][3] for i in readable]) if readable and elements[readable[0]][3] is not None else None
    )
    return FileBatch(items, inputs, readable, errors, display, masks)


def read_batch(items: Sequence[Item], preprocess: Preprocess, *, display: bool = False, masks: bool = False):
    """``items`` read in this process, as one ``FileBatch``."""
    files = ImageFiles(items, preprocess, display=display, masks=masks)
    return collate([files[i] for i in range(len(files))])
