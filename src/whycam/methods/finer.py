"""FinerCAM (Zhang et al., CVPR 2025): explain a class against the classes the model confuses it with.

The target score is the target logit minus the probability-weighted logits of its most similar
classes,

    s(x) = sum_k p_k (y_c - alpha y_k) / sum_k p_k,   p = softmax(y),

over the classes k ranked ``ranks`` by similarity |y_k - y_c| (1 = the closest other class; by
default the three closest, which for the predicted class are the three ranked just below it), with
alpha = 1 as in the paper and pytorch-grad-cam. The gradient flows through p as well. The gradient
cousin of DiffCAM's "why not": it suppresses what the target shares with its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..targets import Target, target_classes
from .base import register
from .cam import GradCAM


class FinerTarget:
    """The FinerCAM score ``s(x)`` of ``target`` (``None``: the predicted class; an int or one per
    image) as a callable target ``output -> (B,)``, usable by any method that takes a target."""

    def __init__(self, target: Target = None, *, alpha: float = 1.0, ranks: Sequence[int] = (1, 2, 3)):
        if callable(target):
            raise TypeError("FinerTarget compares a class with its neighbours: give a class, not a callable")
        ranks = tuple(ranks)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(f"ranks={ranks!r}: similarity ranks are integers >= 1 (1 = the most similar class)")
        self.target, self.alpha, self.ranks = target, float(alpha), ranks

    def comparisons(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """The explained class (B,) and its compared classes (B, len(ranks)), by similarity."""
        classes = target_classes(output, self.target)
        logits = output.detach()
        distance = (logits - logits.gather(1, classes[:, None])).abs()
        distance.scatter_(1, classes[:, None], -1.0)  # the class itself ranks 0, before any tie
        order = distance.argsort(dim=1, stable=True)
        ranks = [r for r in self.ranks if r < output.shape[1]]
        if not ranks:
            raise ValueError(f"ranks {self.ranks} leave no class to compare with among {output.shape[1]}")
        return classes, order[:, ranks]

    def __call__(self, output: Tensor) -> Tensor:
        classes, others = self.comparisons(output)
        weights = torch.softmax(output, dim=1).gather(1, others)
        differences = output.gather(1, classes[:, None]) - self.alpha * output.gather(1, others)
        return (weights * differences).sum(1) / weights.sum(1)

    def __repr__(self) -> str:
        return f"FinerTarget({self.target!r}, alpha={self.alpha}, ranks={self.ranks})"


@register
class FinerCAM(GradCAM):
    """FinerCAM (Zhang et al., CVPR 2025): Grad-CAM of the ``FinerTarget`` score of the target class.

    ``alpha`` and ``ranks`` as ``FinerTarget``. For another CAM, pass ``target=FinerTarget(c)`` to it.
    """

    name = "finercam"
    summary = "FinerCAM: Grad-CAM of the target logit minus its most similar classes' (what sets it apart)."

    def __init__(self, model, layer=None, *, alpha: float = 1.0, ranks: Sequence[int] = (1, 2, 3), **options):
        super().__init__(model, layer, **options)
        self.alpha, self.ranks = alpha, tuple(ranks)
        FinerTarget(alpha=alpha, ranks=self.ranks)  # validates the options now

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        return super().attribute(images, FinerTarget(target, alpha=self.alpha, ranks=self.ranks))
