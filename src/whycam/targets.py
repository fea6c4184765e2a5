"""What is explained: the model's output tensor, and one scalar score per image taken from it.

A target is ``None`` (the predicted class), an ``int`` (one class for every image), a sequence or
tensor with one class per image, or a callable ``f(output) -> (B,)`` scores, for segmentation,
detection or embedding similarity. Models returning a tuple or dict are read through an output
selector: an index, a key, or a callable; by default the first tensor, or the ``"logits"``/``"out"`` key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Target = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None
OutputSelector = int | str | Callable[[object], Tensor] | None


def select_output(output: object, selector: OutputSelector = None) -> Tensor:
    """The tensor explained from a model's raw output."""
    if callable(selector):
        output = selector(output)
    elif selector is not None:
        try:
            output = output[selector]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(
                f"output selector {selector!r} does not fit the model's output ({type(output).__name__}): {error}"
            ) from None
    elif isinstance(output, dict):
        key = next((k for k in ("logits", "out") if k in output), None)
        if key is None:
            raise ValueError(
                f"the model returns a dict with keys {sorted(output)}; pass output='<key>' to say which one to explain"
            )
        output = output[key]
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the selected model output is {type(output).__name__}, not a tensor; "
            "pass output=<index, key or callable> to select a tensor"
        )
    if not torch.isfinite(output).all():
        bad = (~torch.isfinite(output.detach())).flatten(1).any(1).nonzero().flatten().tolist()
        raise FloatingPointError(
            f"the model's output contains NaN or infinity for image(s) {bad}; check the "
            "input's scale and the model's weights"
        )
    return output


def target_classes(output: Tensor, target: Target) -> Tensor:
    """One class index per image (B,) for a class target; ``None`` gives the argmax."""
    if output.dim() != 2:
        raise ValueError(
            f"a class target needs a (B, classes) output, the model gives {tuple(output.shape)}; "
            "pass target=<callable mapping the output to (B,) scores>"
        )
    batch, n_classes = output.shape
    if target is None:
        return output.detach().argmax(1)
    classes = class_indices(target, batch, output.device)
    if ((classes < 0) | (classes >= n_classes)).any():
        raise ValueError(
            f"target class(es) {classes.tolist()} out of range: the model has {n_classes} classes (0..{n_classes - 1})"
        )
    return classes


def class_indices(target: int | Sequence[int] | Tensor, batch: int, device=None) -> Tensor:
    """One class index per image (B,) from one class or one per image (the range is checked against
    the model's output by ``target_classes``)."""
    classes = torch.as_tensor(target, device=device).long().flatten()
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise ValueError(f"got {classes.numel()} targets for {batch} images; give one class, or one per image")
    return classes


def callable_scores(target: Callable[[Tensor], Tensor], output: Tensor) -> Tensor:
    """``target(output)``, refused unless it is one score per image, (B,)."""
    scores = target(output)
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != output.shape[0]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"a callable target must return one score per image, shape ({output.shape[0]},); it returned {shape}"
        )
    return scores


def target_scores(output: Tensor, target: Target) -> tuple[Tensor, Tensor | None]:
    """The score explained for each image (B,), and the class indices when the target is a class."""
    if callable(target):
        return callable_scores(target, output), None
    classes = target_classes(output, target)
    return output.gather(1, classes[:, None]).squeeze(1), classes


def pin_target(target: Target, batch: int, predict: Callable[[], Tensor]) -> Tensor | Callable[[Tensor], Tensor]:
    """The target fixed for a batch of ``batch`` unaltered images: one class per image, or the callable
    itself. ``None`` becomes the predicted class, from ``predict()`` (the unaltered images' output),
    which runs only then. Methods that run the model on many perturbed or noisy copies explain the
    same class for every copy of an image."""
    if callable(target):
        return target
    if target is None:
        return target_classes(predict(), None)
    return class_indices(target, batch)


def target_rows(pinned: Tensor | Callable[[Tensor], Tensor], rows: Tensor) -> Target:
    """A pinned target for an expanded batch whose row r is a copy of image ``rows[r]`` (a callable
    target is applied to the expanded batch's output as it is)."""
    return pinned if callable(pinned) else pinned[rows.to(pinned.device)]
