"""FinerCAM (Zhang et al., CVPR 2025): explain a class against the classes the model confuses it with.

The target score is the target logit minus the probability-weighted logits of compared classes,

    s(x) = sum_k p_k (y_c - alpha y_k) / sum_k p_k,   p = softmax(y),

over the classes k ranked ``ranks`` by similarity |y_k - y_c| (1 = the closest other class; by
default the three closest, which for the predicted class are the three ranked just below it), or
over the classes given as ``versus`` (pytorch-grad-cam: ``FinerWeightedTarget``'s comparison
categories), with alpha = 1 as in the paper and pytorch-grad-cam. The gradient flows through p as
well. The gradient cousin of DiffCAM's "why not": "why c, not v" is ``versus=v`` (or the target
``Versus(c, v)``), whose score is y_c - alpha y_v, p_v cancelling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..targets import Target, Versus, target_classes
from .base import register
from .cam import GradCAM

RANKS = (1, 2, 3)


class FinerTarget:
    """The FinerCAM score ``s(x)`` of ``target`` (``None``: the predicted class; an int or one per
    image; ``Versus(c, v)``: class c against v) as a callable target ``output -> (B,)``, usable by any
    method that takes a target. ``versus``: the compared classes (one, or several for every image)
    instead of the ``ranks`` most similar (default 1, 2, 3)."""

    def __init__(
        self,
        target: Target = None,
        *,
        alpha: float = 1.0,
        ranks: Sequence[int] | None = None,
        versus: int | Sequence[int] | None = None,
    ):
        if isinstance(target, Versus):
            if versus is not None:
                raise ValueError(f"the target {target!r} already names the compared class; drop versus={versus!r}")
            target, versus = target.target, target.versus
        if callable(target):
            raise TypeError(
                "FinerTarget compares a class with other classes: give a class, or Versus(class, other), not a callable"
            )
        if versus is not None and ranks is not None:
            raise ValueError("give ranks (compare with the most similar classes) or versus (these classes), not both")
        ranks = RANKS if ranks is None else tuple(ranks)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(f"ranks={ranks!r}: similarity ranks are integers >= 1 (1 = the most similar class)")
        if versus is not None:
            versus = (versus,) if isinstance(versus, int) else tuple(versus)
            if not versus or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in versus):
                raise ValueError(f"versus={versus!r}: the compared classes are class indices (one or several)")
        self.target, self.alpha, self.ranks, self.versus = target, float(alpha), ranks, versus

    def comparisons(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """The explained class (B,) and its compared classes (B, K): ``versus``, or by similarity."""
        classes = target_classes(output, self.target)
        if self.versus is not None:
            return classes, self._versus(output, classes)
        logits = output.detach()
        distance = (logits - logits.gather(1, classes[:, None])).abs()
        distance.scatter_(1, classes[:, None], -1.0)  # the class itself ranks 0, before any tie
        order = distance.argsort(dim=1, stable=True)
        ranks = [r for r in self.ranks if r < output.shape[1]]
        if not ranks:
            raise ValueError(f"ranks {self.ranks} leave no class to compare with among {output.shape[1]}")
        return classes, order[:, ranks]

    def _versus(self, output: Tensor, classes: Tensor) -> Tensor:
        n_classes = output.shape[1]
        if max(self.versus) >= n_classes:
            raise ValueError(f"versus={self.versus}: the model has {n_classes} classes (0..{n_classes - 1})")
        others = torch.tensor(self.versus, device=output.device).expand(len(classes), -1)
        clash = (others == classes[:, None]).any(1)
        if clash.any():
            raise ValueError(
                f"image(s) {clash.nonzero().flatten().tolist()} are explained as class(es) "
                f"{classes[clash].unique().tolist()}, one of the compared classes {self.versus}; "
                "compare a class with other classes"
            )
        return others

    def __call__(self, output: Tensor) -> Tensor:
        classes, others = self.comparisons(output)
        weights = torch.softmax(output, dim=1).gather(1, others)
        differences = output.gather(1, classes[:, None]) - self.alpha * output.gather(1, others)
        return (weights * differences).sum(1) / weights.sum(1)

    def __repr__(self) -> str:
        compared = f"versus={self.versus}" if self.versus is not None else f"ranks={self.ranks}"
        return f"FinerTarget({self.target!r}, alpha={self.alpha}, {compared})"


@register
class FinerCAM(GradCAM):
    """FinerCAM (Zhang et al., CVPR 2025): Grad-CAM of the ``FinerTarget`` score of the target class.

    ``alpha``, ``ranks`` and ``versus`` as ``FinerTarget``; the target may be a class or
    ``Versus(c, v)`` ("why c, not v"). For another CAM, pass ``target=FinerTarget(c)`` to it.
    """

    name = "finercam"
    summary = "FinerCAM: Grad-CAM of the target logit minus its most similar (or given) classes' (what sets it apart)."

    def __init__(
        self,
        model,
        layer=None,
        *,
        alpha: float = 1.0,
        ranks: Sequence[int] | None = None,
        versus: int | Sequence[int] | None = None,
        **options,
    ):
        super().__init__(model, layer, **options)
        self.alpha, self.ranks, self.versus = alpha, ranks, versus
        FinerTarget(alpha=alpha, ranks=ranks, versus=versus)  # validates the options now

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        return super().attribute(images, FinerTarget(target, alpha=self.alpha, ranks=self.ranks, versus=self.versus))
