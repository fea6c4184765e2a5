"""Noisy linear imputation: the plain dense solve and pytorch-grad-cam's NoisyLinearImputer (noise off)
as oracles for both solvers, batching, seeded noise, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from whycam.metrics import noisy_linear_impute
from whycam.metrics.imputation import _direct, _iterative


def _masks(count: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random maps thresholded at several levels: blobs, borders, thin and large holes."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 1, 5, 5, generator=generator)
    maps = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    levels = torch.linspace(0.1, 0.9, count)
    return torch.stack([m > m.flatten().quantile(level) for m, level in zip(maps, levels, strict=True)])


def test_matches_pytorch_grad_cam_without_noise():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(5, 3, 40, 40, generator=generator)
    removed = _masks(5, 40, 2)
    removed[0, :, :3] = True  # a removed band along the left border
    ours = noisy_linear_impute(images, removed, noise=0.0)
    peer = NoisyLinearImputer(noise=0.0)
    reference = torch.stack([peer(images[i], (~removed[i]).float()) for i in range(5)])
    assert (ours - reference).abs().max() < 1e-5
    assert torch.equal(ours[~removed[:, None].expand_as(ours)], images[~removed[:, None].expand_as(images)])


def _plain_solve(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The definition, pixel by pixel: a dense float64 system over the removed pixels of each image."""
    filled = images.double().clone()
    for image, mask in zip(filled, removed, strict=True):
        pixels = mask.nonzero().tolist()
        index = {tuple(p): k for k, p in enumerate(pixels)}
        matrix = torch.zeros(len(pixels), len(pixels), dtype=torch.float64)
        rhs = torch.zeros(len(pixels), image.shape[0], dtype=torch.float64)
        for k, (r, c) in enumerate(pixels):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr or dc) and 0 <= r + dr < mask.shape[0] and 0 <= c + dc < mask.shape[1]:
                        weight = 1 / 12 if dr and dc else 1 / 6
                        matrix[k, k] += weight
                        if (r + dr, c + dc) in index:
                            matrix[k, index[(r + dr, c + dc)]] -= weight
                        else:
                            rhs[k] += weight * image[:, r + dr, c + dc]
        image[:, mask] = torch.linalg.solve(matrix, rhs).T
    return filled


@pytest.mark.parametrize("solver", ["direct", "iterative"])
def test_both_solvers_equal_the_plain_dense_solve(solver):
    generator = torch.Generator().manual_seed(6)
    images = torch.randn(4, 3, 20, 17, generator=generator, dtype=torch.float64)
    removed = torch.stack(
        [
            _masks(1, 20, 7)[0][:, :17],
            torch.rand(20, 17, generator=generator) > 0.5,
            torch.ones(20, 17, dtype=torch.bool),
            torch.zeros(20, 17, dtype=torch.bool),
        ]
    )
    removed[2, 5, 9] = False  # every pixel but one removed
    removed[3, 0, 0] = removed[3, 19, 16] = True  # two corners alone
    plain = _plain_solve(images, removed)
    if solver == "direct":
        assert (_direct(images, removed) - plain).abs().max() < 1e-12
    else:
        assert (_iterative(images, removed, tol=1e-10, max_iter=500) - plain).abs().max() < 1e-8
    assert (noisy_linear_impute(images.float(), removed, noise=0.0) - plain).abs().max() < 1e-5


def test_each_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 1, 12, 12, generator=generator)
    removed = torch.rand(2, 12, 12, generator=generator) > 0.6
    filled = noisy_linear_impute(images, removed, noise=0.0)[:, 0].double()
    weights = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)
    neighbours = F.conv2d(filled[:, None], weights[None, None], padding=1)[:, 0]
    total = F.conv2d(torch.ones_like(filled[:, None]), weights[None, None], padding=1)[:, 0]
    assert torch.allclose((neighbours / total)[removed], filled[removed], atol=1e-5)


def test_batched_equals_one_by_one_and_noise_is_seeded_and_only_on_removed_pixels():
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(3, 3, 24, 24, generator=generator)
    removed = _masks(3, 24, 5)
    together = noisy_linear_impute(images, removed, noise=0.0)
    alone = torch.cat([noisy_linear_impute(images[i : i + 1], removed[i : i + 1], noise=0.0) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)
    noisy = noisy_linear_impute(images, removed, noise=0.5, seed=7)
    assert torch.equal(noisy, noisy_linear_impute(images, removed, noise=0.5, seed=7))
    assert not torch.equal(noisy, noisy_linear_impute(images, removed, noise=0.5, seed=8))
    difference = (noisy - together).abs()
    kept = ~removed[:, None].expand_as(images)
    assert difference[kept].max() == 0
    assert 0.4 < difference[~kept].pow(2).mean().sqrt() < 0.6  # standard deviation 0.5


def test_refuses_bad_input():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="every pixel"):
        noisy_linear_impute(images, torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        noisy_linear_impute(images, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="float"):
        noisy_linear_impute(images[0], torch.zeros(2, 8, 8, dtype=torch.bool))
