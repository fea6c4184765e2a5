"""The registry of metrics: what each one measures, the ground truth it reads, and which way is better.

A new metric is one decorated function::

    @metric("localisation", truth="mask", higher_is_better=True)
    def my_metric(maps, truth) -> MetricResult: ...

``kind`` is ``"faithfulness"`` (called ``f(model, images, maps, targets, **options)``) or
``"localisation"`` (called ``f(maps, truth, **options)``); ``truth`` says which ground truth a
localisation metric is scored against: ``"mask"`` (the object's pixels), ``"boxes"`` (each object's
box: the box metrics, and the energy pointing game of Score-CAM, defined on the bounding box) or
``"either"``. ``ground_truth`` routes a dataset's masks and boxes accordingly, for the CLI,
``evaluate`` and the results benchmark alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ..errors import UsageError, closest

KINDS = ("faithfulness", "localisation")
TRUTHS = ("mask", "boxes", "either")


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function and its declared properties."""

    name: str
    function: Callable
    kind: str
    truth: str | None
    higher_is_better: bool

    @property
    def faithfulness(self) -> bool:
        return self.kind == "faithfulness"


_REGISTRY: dict[str, Metric] = {}


def metric(kind: str, *, truth: str | None = None, higher_is_better: bool = True) -> Callable[[Callable], Callable]:
    """Register the decorated function as a metric under its own name (the function is unchanged)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (kind == "localisation") != (truth in TRUTHS):
        raise ValueError(f"a localisation metric reads one of {TRUTHS}; a faithfulness metric none (got {truth!r})")

    def register(function: Callable) -> Callable:
        _REGISTRY[function.__name__] = Metric(function.__name__, function, kind, truth, higher_is_better)
        return function

    return register


def metrics() -> dict[str, Metric]:
    """Every registered metric, by name."""
    return dict(_REGISTRY)


def get_metrics(names: Sequence[str]) -> dict[str, Metric]:
    """The metrics named; an unknown name is refused with the closest and the known ones."""
    unknown = [name for name in names if name not in _REGISTRY]
    if unknown:
        raise UsageError(
            f"unknown metric {unknown[0]!r}{closest(unknown[0], _REGISTRY)}; available: {', '.join(_REGISTRY)}"
        )
    return {name: _REGISTRY[name] for name in names}


def ground_truth(entry: Metric, masks: Tensor | None, boxes: Tensor | None) -> Tensor | None:
    """The ground truth ``entry`` is scored against, from a dataset's masks and boxes (either may be
    None): boxes for ``"boxes"`` metrics where there are boxes, else the masks (and the reverse)."""
    if entry.faithfulness:
        return None
    first, second = (boxes, masks) if entry.truth == "boxes" else (masks, boxes)
    return first if first is not None else second
