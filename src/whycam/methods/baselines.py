"""Reference inputs that stand for "no information": what Integrated Gradients integrates from and
what Meaningful Perturbation blends in.

``"black"`` is the all-zero input (black for images in [0, 1]; for normalised inputs it is the
dataset's mean colour, so pass a tensor for true black); ``"blur"`` is the image blurred by a
Gaussian of standard deviation ``sigma`` pixels (default: 5% of the shorter side, about 11 px at
224 px, as Fong & Vedaldi's 10 px); ``"uniform"`` is uniform noise between each image's minimum
and maximum, drawn from a seeded generator; a tensor broadcastable to the images is used as given.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from torch import Tensor

BaselineSpec = str | float | Tensor


def default_sigma(images: Tensor) -> float:
    """5% of the images' shorter side, in pixels."""
    return 0.05 * min(images.shape[-2:])


def blur(images: Tensor, sigma: float | None = None) -> Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel 2*ceil(3 sigma)+1, reflected
    borders, the kernel clipped to the largest odd size that fits the image); the one blur of
    whycam (baselines, Meaningful Perturbation, the insertion metric)."""
    sigma = default_sigma(images) if sigma is None else float(sigma)
    if sigma <= 0:
        return images.clone()
    size = min(2 * math.ceil(3 * sigma) + 1, 2 * ((min(images.shape[-2:]) - 1) // 2) + 1)
    if size < 3:
        return images.clone()
    return TF.gaussian_blur(images, [size, size], [sigma, sigma])


def make_baseline(
    images: Tensor, spec: BaselineSpec, *, sigma: float | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """The baseline for each image, shaped like ``images``."""
    if isinstance(spec, Tensor):
        try:
            return torch.broadcast_to(spec.to(images), images.shape).clone()
        except RuntimeError:
            raise ValueError(
                f"a baseline tensor of shape {tuple(spec.shape)} does not broadcast to the "
                f"images' shape {tuple(images.shape)}"
            ) from None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full_like(images, float(spec))
    if spec == "black":
        return torch.zeros_like(images)
    if spec == "blur":
        return blur(images, sigma)
    if spec == "uniform":
        low = images.amin((1, 2, 3), keepdim=True)
        high = images.amax((1, 2, 3), keepdim=True)
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        return low + noise.to(images.device) * (high - low)
    raise ValueError(f"unknown baseline {spec!r}: use 'black', 'blur', 'uniform', a number or a tensor")
