"""The result every metric returns: per-image scores, a headline value with a bootstrap interval,
the direction that is better, and the curves behind the score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class MetricResult:
    """Per-image ``scores`` (B,) of metric ``name``; ``higher_is_better`` says which way is better.

    ``value`` is the headline number (the mean of the per-image scores unless the metric says
    otherwise, e.g. MaxBoxAcc's best threshold over the dataset); ``curves`` holds per-step values
    (e.g. ROAD's MoRF and LeRF scores per percentage, (B, steps) tensors) and ``steps`` their x-axis;
    ``settings`` records the parameters used. ``statistic`` maps bootstrap resamples (n, B) of image
    indices to the headline value of each resample; by default the mean of the scores.
    """

    name: str
    scores: Tensor
    higher_is_better: bool
    curves: dict[str, Tensor] = field(default_factory=dict)
    steps: Tensor | None = None
    settings: dict[str, object] = field(default_factory=dict)
    statistic: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)

    @property
    def value(self) -> float:
        """The headline number: ``statistic`` on all the images (the mean score by default)."""
        every = torch.arange(self.scores.shape[0], device=self.scores.device)[None]
        return float(self._statistic(every)[0])

    def _statistic(self, indices: Tensor) -> Tensor:
        if self.statistic is not None:
            return self.statistic(indices)
        return self.scores.double()[indices].nanmean(1)

    def interval(self, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the headline value, over images resampled with replacement."""
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        count = self.scores.shape[0]
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randint(count, (resamples, count), generator=generator).to(self.scores.device)
        values = self._statistic(indices).double().cpu()
        alpha = (1 - confidence) / 2
        low, high = torch.nanquantile(values, torch.tensor([alpha, 1 - alpha], dtype=values.dtype))
        return float(low), float(high)

    @property
    def summary(self) -> dict[str, float]:
        """``{"value", "low", "high"}``: the headline value and its 95% bootstrap interval (seed 0)."""
        low, high = self.interval()
        return {"value": self.value, "low": low, "high": high}

    def __str__(self) -> str:
        low, high = self.interval()
        better = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.name}: {self.value:.4f} [95% CI {low:.4f}, {high:.4f}] over "
            f"{self.scores.shape[0]} images ({better} is better)"
        )
