"""Perturbation attributions: the model's score on altered copies of the image, no gradient to the
model's inputs (Meaningful Perturbation takes gradients to its mask only).

The perturbed copies are built chunk by chunk, at most ``batch_size`` per forward pass, never all at
once. A target of ``None`` is pinned to the class predicted for the unperturbed image. Scores are
the target's logit, or its softmax probability with ``probability=True`` (a callable target's score
is used as it is).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..targets import OutputSelector, Target, pin_target, target_rows, target_scores
from .base import Explainer, batches, positive_int, register
from .baselines import BaselineSpec, blur, make_baseline
from .gradient import unaltered_output


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be a positive integer or a pair of them, got {value!r}")
    return positive_int(pair[0], what), positive_int(pair[1], what)


class PerturbationExplainer(Explainer):
    """Shared by the perturbation methods: batched scoring of perturbed images."""

    uses_gradient = False

    def __init__(
        self, model: nn.Module, *, batch_size: int = 64, probability: bool = False, output: OutputSelector = None
    ):
        super().__init__(model, output=output)
        self.batch_size, self.probability = positive_int(batch_size, "batch_size"), probability

    def _attribute_checked(self, images: Tensor, target: Target) -> list[Tensor]:
        if isinstance(images, Tensor) and images.dim() == 5:
            raise ValueError(
                f"{type(self).__name__} perturbs 2-D images; for (B, C, D, H, W) volumes use the CAM family, "
                "DiffCAM or a gradient method"
            )
        return super()._attribute_checked(images, target)

    def score(self, output: Tensor, target: Target) -> Tensor:
        """The explained score (B,) from the model's output."""
        if self.probability and not callable(target):
            output = output.softmax(1)
        return target_scores(output, target)[0]

    def pin(self, images: Tensor, target: Target):
        """The target pinned for the unperturbed images (a forward pass only for ``None``)."""
        return pin_target(target, len(images), lambda: unaltered_output(self, images))

    def scores(self, perturbed: Tensor, pinned, image: Tensor) -> Tensor:
        """Scores (N,) of perturbed copies, row r a copy of image ``image[r]``, in forward passes of at
        most ``batch_size`` images."""
        with torch.no_grad():
            return torch.cat(
                [
                    self.score(self.forward(perturbed[rows.to(perturbed.device)]), target_rows(pinned, image[rows]))
                    for rows in batches(len(perturbed), self.batch_size)
                ]
            )


@register
class Occlusion(PerturbationExplainer):
    """Occlusion (Zeiler & Fergus, ECCV 2014): a window of ``window`` pixels slides with ``stride``
    over all channels; inside it the image is replaced by ``baseline`` (a number, ``"black"``,
    ``"blur"`` or a tensor). map(p) = mean over the windows W containing p of y(x) - y(x with W
    occluded). As in Captum, each axis has ceil((H - k) / s) + 1 windows starting at 0, the last
    clipped at the border, so every pixel is covered.
    """

    name = "occlusion"
    summary = "Occlusion: the score drop when a sliding window is hidden, averaged per pixel."

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | tuple[int, int] = 8,
        stride: int | tuple[int, int] = 4,
        baseline: BaselineSpec = 0.0,
        **options,
    ):
        super().__init__(model, **options)
        self.window, self.stride = _pair(window, "window"), _pair(stride, "stride")
        if any(s > w for s, w in zip(self.stride, self.window)):
            raise ValueError(
                f"stride {self.stride} larger than the window {self.window} would leave pixels "
                "never occluded; use stride <= window"
            )
        self.baseline = baseline

    def windows(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Top-left corners (tops, lefts) of every window position, row by row."""
        starts = []
        for length, window, stride in zip(size, self.window, self.stride):
            if window > length:
                raise ValueError(f"the occlusion window {self.window} is larger than the images {size}")
            starts.append(torch.arange(math.ceil((length - window) / stride) + 1) * stride)
        tops, lefts = torch.meshgrid(*starts, indexing="ij")
        return tops.flatten(), lefts.flatten()

    def attribute(self, images, target):
        batch, _, height, width = images.shape
        pinned = self.pin(images, target)
        with torch.no_grad():
            clean = self.score(self.forward(images), pinned)
        baseline = make_baseline(images, self.baseline)
        tops, lefts = self.windows((height, width))
        rows_index = torch.arange(height, device=images.device)
        cols_index = torch.arange(width, device=images.device)
        total = images.new_zeros((batch, height, width))
        counts = images.new_zeros((height, width))
        for chunk in batches(len(tops), max(1, self.batch_size // batch)):
            top, left = tops[chunk].to(images.device), lefts[chunk].to(images.device)
            inside = ((rows_index >= top[:, None]) & (rows_index < top[:, None] + self.window[0]))[:, :, None] & (
                (cols_index >= left[:, None]) & (cols_index < left[:, None] + self.window[1])
            )[:, None]
            occluded = torch.where(inside[:, None, None], baseline, images).flatten(0, 1)  # (m*B, C, H, W)
            image = torch.arange(batch).repeat(len(chunk))
            drop = clean[image.to(images.device)] - self.scores(occluded, pinned, image)
            total += torch.einsum("mb,mhw->bhw", drop.view(len(chunk), batch), inside.to(images.dtype))
            counts += inside.sum(0)
        return [total / counts]


@register
class RISE(PerturbationExplainer):
    """RISE (Petsiuk et al., BMVC 2018): S = 1 / (N p) sum_i y(x * M_i) M_i over N random masks.

    Each mask is a ``grid`` x ``grid`` binary grid (cells kept with probability ``p``), upsampled
    bilinearly to (grid + 1) x the cell size C = ceil(H / grid), and cropped to H x W at a random
    shift in [0, C). The masks come chunk by chunk from two generators seeded by ``seed`` (one for
    the grids, one for the shifts), so they do not depend on ``batch_size``. Scores are class
    probabilities by default, as in the paper; masked pixels become 0.
    """

    name = "rise"
    summary = "RISE: scores of randomly masked copies, averaged with their masks as weights."

    def __init__(
        self,
        model: nn.Module,
        *,
        masks: int = 2000,
        grid: int = 8,
        p: float = 0.5,
        seed: int = 0,
        probability: bool = True,
        **options,
    ):
        super().__init__(model, probability=probability, **options)
        if not 0 < p <= 1:
            raise ValueError(f"p is the probability of keeping a cell and must be in (0, 1], got {p}")
        self.masks, self.grid = positive_int(masks, "masks"), positive_int(grid, "grid")
        self.p, self.seed = float(p), seed

    def mask_chunks(self, size: tuple[int, int], chunk: int) -> Iterator[Tensor]:
        """The N masks (m, H, W), ``chunk`` at a time, on the CPU."""
        cell = (math.ceil(size[0] / self.grid), math.ceil(size[1] / self.grid))
        grids = torch.Generator().manual_seed(self.seed)
        shifts = torch.Generator().manual_seed(self.seed + 1)
        for rows in batches(self.masks, chunk):
            cells = (torch.rand((len(rows), 1, self.grid, self.grid), generator=grids) < self.p).float()
            up = F.interpolate(
                cells, size=((self.grid + 1) * cell[0], (self.grid + 1) * cell[1]), mode="bilinear", align_corners=False
            )[:, 0]
            shift = (torch.rand((len(rows), 2), generator=shifts) * torch.tensor(cell)).long().tolist()
            yield torch.stack(
                [mask[top : top + size[0], left : left + size[1]] for mask, (top, left) in zip(up, shift)]
            )

    def attribute(self, images, target):
        batch = images.shape[0]
        pinned = self.pin(images, target)
        total = images.new_zeros((batch, *images.shape[-2:]))
        for masks in self.mask_chunks(tuple(images.shape[-2:]), max(1, self.batch_size // batch)):
            masks = masks.to(images)
            masked = (masks[:, None, None] * images).flatten(0, 1)  # (m*B, C, H, W)
            image = torch.arange(batch).repeat(len(masks))
            scores = self.scores(masked, pinned, image).view(len(masks), batch)
            total += torch.einsum("mb,mhw->bhw", scores, masks)
        return [total / (self.masks * self.p)]


@register
class MeaningfulPerturbation(PerturbationExplainer):
    """Meaningful Perturbation (Fong & Vedaldi, ICCV 2017): the smallest smooth region whose blurring
    deletes the class.

    A ``mask_size`` x ``mask_size`` mask m in [0, 1] (1 keeps the pixel) is upsampled bilinearly to
    M, shifted by a random jitter of up to ``jitter`` pixels at each step, and blends the image with
    its blur: phi(x; m) = x * M + blur(x) * (1 - M). Adam (``lr``) minimises, for ``steps`` steps,

        y(phi(x; m)) + area * mean |1 - m| + smoothness * mean (|d_i m|^beta + |d_j m|^beta),

    with m clipped to [0, 1] after each step, starting from m = 1. Gradients go to m only. The score
    is the class probability by default, as in the paper. map = 1 - m, the deleted region.
    """

    name = "meaningfulperturbation"
    summary = "Meaningful Perturbation: an optimised smooth mask whose blurring deletes the class."

    def __init__(
        self,
        model: nn.Module,
        *,
        mask_size: int = 28,
        steps: int = 300,
        lr: float = 0.1,
        area: float = 0.05,
        smoothness: float = 0.2,
        tv_beta: float = 3.0,
        blur_sigma: float | None = None,
        jitter: int = 4,
        seed: int = 0,
        probability: bool = True,
        output: OutputSelector = None,
    ):
        super().__init__(model, probability=probability, output=output)
        if not (isinstance(jitter, int) and jitter >= 0):
            raise ValueError(f"jitter must be an integer >= 0, got {jitter!r}")
        self.mask_size, self.steps = positive_int(mask_size, "mask_size"), positive_int(steps, "steps")
        self.lr, self.jitter, self.seed = lr, jitter, seed
        self.area, self.smoothness, self.tv_beta, self.blur_sigma = area, smoothness, tv_beta, blur_sigma

    def upsample(self, mask: Tensor, size: tuple[int, int], shift: tuple[int, int] = (0, 0)) -> Tensor:
        """The mask at image size (B, 1, H, W), cropped at ``shift`` from an upsampling ``jitter`` larger."""
        up = F.interpolate(
            mask, size=(size[0] + self.jitter, size[1] + self.jitter), mode="bilinear", align_corners=False
        )
        return up[..., shift[0] : shift[0] + size[0], shift[1] : shift[1] + size[1]]

    def smoothness_penalty(self, mask: Tensor) -> Tensor:
        """mean |d_i m|^beta + mean |d_j m|^beta per image (B,)."""
        rows = (mask[..., 1:, :] - mask[..., :-1, :]).abs().pow(self.tv_beta).flatten(1).mean(1)
        cols = (mask[..., :, 1:] - mask[..., :, :-1]).abs().pow(self.tv_beta).flatten(1).mean(1)
        return rows + cols

    def attribute(self, images, target):
        size = tuple(images.shape[-2:])
        pinned = self.pin(images, target)
        blurred = blur(images, self.blur_sigma)
        generator = torch.Generator().manual_seed(self.seed)
        mask = images.new_ones((images.shape[0], 1, self.mask_size, self.mask_size)).requires_grad_(True)
        optimizer = torch.optim.Adam([mask], lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                shift = tuple(torch.randint(0, self.jitter + 1, (2,), generator=generator).tolist())
                keep = self.upsample(mask, size, shift)
                perturbed = images * keep + blurred * (1 - keep)
                score = self.score(self.forward(perturbed), pinned)
                loss = (
                    score
                    + self.area * (1 - mask).abs().flatten(1).mean(1)
                    + self.smoothness * self.smoothness_penalty(mask)
                ).sum()
                (mask.grad,) = torch.autograd.grad(loss, mask)
                optimizer.step()
                with torch.no_grad():
                    mask.clamp_(0, 1)
        return [1 - mask.detach()[:, 0]]
