"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018) recomputed from their definition: every
point of the curve, the blurred start of insertion (scipy's Gaussian filter), pixel counts that are not
whole (1024 pixels in 6 steps), and the trapezoid area."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from whycam import metrics

SIZE, STEPS = 32, 6  # k/6 of 1024 pixels: 170.7 -> 171, 341.3 -> 341, 512, 682.7 -> 683, 853.3 -> 853
CLASSES = [2, 0]


def every_pixel_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 4)).eval()


def scipy_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with kernel radius ceil(3 sigma) clipped to fit the image, mirrored borders."""
    radius = min(int(np.ceil(3 * sigma)), (SIZE - 1) // 2)
    blurred = gaussian_filter(
        images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=radius / sigma
    )
    return torch.from_numpy(blurred).float()


def expected_curve(model, start, end, maps) -> torch.Tensor:
    """Scores (B, STEPS + 1): the round(k/STEPS * H*W) most relevant pixels taken from ``end``."""
    pixels = SIZE * SIZE
    curve = torch.zeros(len(maps), STEPS + 1)
    for i in range(len(maps)):
        ranking = maps[i].flatten().argsort(descending=True)
        for k in range(STEPS + 1):
            moved = torch.zeros(pixels, dtype=torch.bool)
            moved[ranking[: round(k / STEPS * pixels)]] = True
            image = torch.where(moved.view(SIZE, SIZE), end[i], start[i])
            with torch.no_grad():
                curve[i, k] = model(image[None]).softmax(1)[0, CLASSES[i]]
    return curve


def trapezoid(curve: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.trapezoid(curve.numpy(), dx=1 / STEPS, axis=1)).float()


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(6)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    maps = torch.rand(2, SIZE, SIZE, generator=generator)
    return every_pixel_model(), images, maps


@pytest.mark.parametrize("sigma", [1.5, 5.0, 8.0])  # 8: the kernel (49 taps) is clipped to the image (31)
def test_insertion_starts_from_the_blurred_image_and_follows_the_definition(setting, sigma):
    model, images, maps = setting
    result = metrics.insertion(model, images, maps, CLASSES, steps=STEPS, blur_sigma=sigma)
    expected = expected_curve(model, scipy_blur(images, sigma), images, maps)
    assert (result.curves["score"] - expected).abs().max() < 1e-5
    assert (result.scores - trapezoid(expected)).abs().max() < 1e-5
    assert torch.equal(result.steps, torch.linspace(0, 1, STEPS + 1))
    # the start is the blurred image, not the original or a black one
    with torch.no_grad():
        clean = model(images).softmax(1)[torch.arange(2), CLASSES]
    assert (expected[:, 0] - clean).abs().min() > 1e-3


@pytest.mark.parametrize("baseline", [0.0, 0.7])
def test_deletion_follows_the_definition(setting, baseline):
    model, images, maps = setting
    result = metrics.deletion(model, images, maps, CLASSES, steps=STEPS, baseline=baseline)
    expected = expected_curve(model, images, torch.full_like(images, baseline), maps)
    assert (result.curves["score"] - expected).abs().max() < 1e-5
    assert (result.scores - trapezoid(expected)).abs().max() < 1e-5
    assert not result.higher_is_better


def test_ties_are_broken_in_the_documented_seeded_order(setting):
    """A constant map ranks nothing: the pixels go in the order of a random permutation of image i
    seeded with ``seed + i`` (docs/metrics.md), the same for every metric."""
    model, images, _ = setting
    seed = 5
    result = metrics.deletion(model, images, torch.full((2, SIZE, SIZE), 0.5), CLASSES, steps=STEPS, seed=seed)
    # a map whose order is that permutation reproduces the curve exactly
    permuted = torch.zeros(2, SIZE * SIZE)
    for i in range(2):
        order = torch.randperm(SIZE * SIZE, generator=torch.Generator().manual_seed(seed + i))
        permuted[i, order] = torch.linspace(1, 0, SIZE * SIZE)
    expected = expected_curve(model, images, torch.zeros_like(images), permuted.view(2, SIZE, SIZE))
    assert (result.curves["score"] - expected).abs().max() < 1e-5
