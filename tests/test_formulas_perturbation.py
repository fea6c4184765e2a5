"""RISE's mask geometry and Meaningful Perturbation's objective, checked against independent
constructions.

RISE (Petsiuk et al., BMVC 2018): each mask must be a binary ``grid`` x ``grid`` grid, upsampled
bilinearly (half-pixel centres) to (grid + 1) x the cell size C = ceil(H / grid), cropped at a shift
in [0, C). The masks are read through the public API (a model whose score is always 1 makes the RISE
map of one mask equal to mask / p), and each is fitted here by least squares against a bilinear
interpolation matrix written from its definition, for every possible shift.

Meaningful Perturbation (Fong & Vedaldi, ICCV 2017): the optimisation rerun here from its definition
(Adam on y(x M + blur(x) (1 - M)) + area mean|1 - m| + smoothness TV_beta(m), clipping to [0, 1])."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from test_perturbation import TopLeftTexture, checkerboard_in_top_left
from torch import nn

import whycam


class ConstantScore(nn.Module):
    """Logits (1, 0) whatever the image."""

    def forward(self, x):
        return torch.stack([x.new_ones(len(x)), x.new_zeros(len(x))], 1)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) linear interpolation with half-pixel centres, clamped at the borders."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = min(int(math.floor(source)), size_in - 1)
        high = min(low + 1, size_in - 1)
        matrix[i, low] += 1 - (source - low)
        matrix[i, high] += source - low
    return matrix


def fit_grid(mask: np.ndarray, grid: int, cell: tuple[int, int]) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Every (shift, grid values) that reproduces ``mask`` as a cropped bilinear upsampling."""
    height, width = mask.shape
    rows = bilinear_matrix(grid, (grid + 1) * cell[0])
    cols = bilinear_matrix(grid, (grid + 1) * cell[1])
    fits = []
    for top in range(cell[0]):
        for left in range(cell[1]):
            r, c = rows[top : top + height], cols[left : left + width]
            values = np.linalg.pinv(r) @ mask @ np.linalg.pinv(c).T
            if np.abs(r @ values @ c.T - mask).max() < 1e-5:
                fits.append(((top, left), values))
    return fits


@pytest.mark.parametrize(("height", "width"), [(30, 22), (32, 20)])  # cells (8, 6) and (8, 5)
def test_rise_masks_are_shifted_crops_of_upsampled_binary_grids(height, width):
    grid, p = 4, 0.3
    cell = (math.ceil(height / grid), math.ceil(width / grid))  # the upsampled grid is (grid + 1) cells
    image = torch.ones(1, 3, height, width)
    cells, shifts = [], []
    for seed in range(40):
        rise = whycam.RISE(ConstantScore().eval(), masks=1, grid=grid, p=p, seed=seed, probability=False)
        mask = (p * rise(image, 0, raw=True)[0]).double().numpy()
        fits = fit_grid(mask, grid, cell)
        assert fits, f"mask {seed} is no shifted crop of a bilinearly upsampled {grid}x{grid} grid"
        for _, values in fits:
            assert np.abs(values - values.round()).max() < 1e-5 and set(np.unique(values.round())) <= {0.0, 1.0}
        cells.append(fits[0][1].round())
        if len(fits) == 1:
            shifts.append(fits[0][0])
    assert abs(np.mean(cells) - p) < 0.07  # 640 cells kept with probability p: standard error 0.018
    tops, lefts = zip(*shifts)
    assert len(set(shifts)) >= 12  # 40 draws from 48 shifts: about 27 distinct expected
    assert max(tops) >= cell[0] // 2 + 1 and max(lefts) >= cell[1] // 2 + 1


def scipy_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    blurred = gaussian_filter(
        images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=radius / sigma
    )
    return torch.from_numpy(blurred).float()


def meaningful_perturbation_by_hand(model, images, classes, *, mask_size, steps, lr, area, smoothness, beta, sigma):
    """Fong & Vedaldi's objective, minimised by Adam from m = 1, m clipped to [0, 1]; returns 1 - m."""
    blurred = scipy_blur(images, sigma)
    mask = torch.ones(len(images), 1, mask_size, mask_size, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    for _ in range(steps):
        keep = F.interpolate(mask, size=images.shape[-2:], mode="bilinear", align_corners=False)
        probability = model(images * keep + blurred * (1 - keep)).softmax(1)[torch.arange(len(images)), classes]
        total_variation = (mask[..., 1:, :] - mask[..., :-1, :]).abs().pow(beta).mean((1, 2, 3)) + (
            mask[..., :, 1:] - mask[..., :, :-1]
        ).abs().pow(beta).mean((1, 2, 3))
        loss = probability + area * (1 - mask).abs().mean((1, 2, 3)) + smoothness * total_variation
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
    return 1 - mask.detach()[:, 0]


@pytest.mark.parametrize(
    ("area", "smoothness", "beta"), [(0.05, 0.2, 3.0), (0.5, 0.0, 3.0), (0.0, 5.0, 2.0), (0.3, 2.0, 1.5)]
)
def test_meaningful_perturbation_minimises_its_objective(area, smoothness, beta):
    model = TopLeftTexture().eval()  # class 0 grows with the top-left quadrant's high frequencies
    images = torch.cat(
        [checkerboard_in_top_left(32), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))]
    )
    classes = torch.tensor([0, 0])
    options = dict(mask_size=6, steps=12, lr=0.1, area=area, smoothness=smoothness)
    expected = meaningful_perturbation_by_hand(model, images, classes, beta=beta, sigma=2.0, **options)
    ours = whycam.MeaningfulPerturbation(model, tv_beta=beta, blur_sigma=2.0, jitter=0, **options)(
        images, classes, raw=True
    )
    assert expected.max() > 0.1  # the mask moved
    assert (ours - expected).abs().max() < 1e-5  # measured: 2e-7
