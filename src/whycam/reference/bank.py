"""The per-class reference bank: one ``ReferenceStats`` per label, merged on demand into any group."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .io import read_tensors, write_tensors
from .statistics import ReferenceStats, as_embeddings

Label = Hashable


class ReferenceBank:
    """Per-class reference statistics, combined on demand into any group of classes.

    Fit once on labelled embeddings (``DiffCAM.fit`` on batches of (images, labels) builds one), then
    ``group([3, 5])``, ``all_but(6)`` or ``all()``: exact merges, no model run. Memory is
    O(classes * K^2): 32 MB per class for K = 2048.
    """

    def __init__(self, classes: Mapping[Label, ReferenceStats] | None = None):
        self.classes: dict[Label, ReferenceStats] = dict(classes or {})
        self._groups: dict[frozenset, ReferenceStats] = {}

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Tensor,
        labels: Tensor | Iterable[Label],
        *,
        meta: Mapping[str, str] | None = None,
        keep_embeddings: bool = False,
    ) -> ReferenceBank:
        """A bank from (n, K) embeddings and their n labels."""
        return cls().update(embeddings, labels, meta=meta, keep_embeddings=keep_embeddings)

    def update(
        self,
        embeddings: Tensor,
        labels: Tensor | Iterable[Label],
        *,
        meta: Mapping[str, str] | None = None,
        keep_embeddings: bool = False,
    ) -> ReferenceBank:
        """Add a batch of (n, K) embeddings with their n labels (ints or strings)."""
        embeddings = as_embeddings(embeddings)
        labels = labels.tolist() if isinstance(labels, Tensor) else list(labels)
        if len(labels) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(labels)} labels; give one label each")
        for label in dict.fromkeys(labels):
            rows = torch.tensor([i for i, lab in enumerate(labels) if lab == label], device=embeddings.device)
            if label not in self.classes:
                self.classes[label] = ReferenceStats(embeddings.shape[1], meta=meta, keep_embeddings=keep_embeddings)
            self.classes[label].update(embeddings[rows])
        self._groups.clear()
        return self

    @property
    def labels(self) -> list[Label]:
        return list(self.classes)

    @property
    def meta(self) -> dict[str, str]:
        return next(iter(self.classes.values())).meta if self.classes else {}

    def __getitem__(self, label: Label) -> ReferenceStats:
        return self.group([label])

    def group(self, labels: Label | Iterable[Label]) -> ReferenceStats:
        """The statistics of the union of ``labels`` (one label or several), merged exactly; cached."""
        chosen = _label_list(labels)
        unknown = [label for label in chosen if label not in self.classes]
        if unknown or not chosen:
            raise KeyError(
                f"the bank has no class {unknown[0]!r}; its classes are {self.labels}"
                if unknown
                else "the group is empty; name at least one class"
            )
        key = frozenset(chosen)
        if key not in self._groups:
            self._groups[key] = sum(self.classes[label] for label in self.classes if label in key)
        return self._groups[key]

    def all_but(self, labels: Label | Iterable[Label]) -> ReferenceStats:
        """Every class except ``labels``: the reference of "why is this a c?"."""
        excluded = _label_list(labels)
        unknown = [label for label in excluded if label not in self.classes]
        if unknown:
            raise KeyError(f"the bank has no class {unknown[0]!r}; its classes are {self.labels}")
        rest = [label for label in self.classes if label not in excluded]
        if not rest:
            raise ValueError("no class is left once these are excluded; the bank needs other classes")
        return self.group(rest)

    def all(self) -> ReferenceStats:
        """Every class together."""
        return self.group(self.labels)

    def save(self, path: str | Path) -> Path:
        """Write every class's statistics to one ``.safetensors`` or ``.npz`` file (no pickle)."""
        if not self.classes:
            raise ValueError("the bank is empty; fit it before saving")
        tensors = {
            f"{i}.{name}": tensor
            for i, stats in enumerate(self.classes.values())
            for name, tensor in stats.tensors().items()
        }
        return write_tensors(path, tensors, {**self.meta, "kind": "ReferenceBank", "labels": json.dumps(self.labels)})

    @classmethod
    def load(cls, path: str | Path) -> ReferenceBank:
        """Read a bank written by ``save``."""
        tensors, meta = read_tensors(path, "ReferenceBank")
        labels = json.loads(meta.pop("labels"))
        per_class: list[dict[str, Tensor]] = [{} for _ in labels]
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            per_class[int(index)][key] = tensor
        return cls(
            {label: ReferenceStats.from_tensors(stats, meta) for label, stats in zip(labels, per_class, strict=True)}
        )

    def __repr__(self) -> str:
        more = "..." if len(self.classes) > 10 else ""
        return f"ReferenceBank({len(self.classes)} classes: {self.labels[:10]}{more})"


def _label_list(labels: Label | Iterable[Label]) -> list[Label]:
    if isinstance(labels, Tensor):
        return labels.reshape(-1).tolist()
    if isinstance(labels, (str, bytes, int)) or not isinstance(labels, Iterable):
        return [labels]
    return list(labels)
