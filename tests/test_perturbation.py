"""Perturbation methods: occlusion of a model that sees one quadrant, RISE's seeding and convergence,
Meaningful Perturbation's deletion of the class, and the model left exactly as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gradient import assert_same_state, model_state
from tiny_model import small_cnn
from torch import nn

import whycam
from whycam.methods.baselines import blur


class TopLeftLinear(nn.Module):
    """Logits from a linear map of the top-left quadrant's pixels only."""

    def __init__(self, size: int = 32, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * (size // 2) ** 2, classes)

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.linear(x[:, :, : h // 2, : w // 2].flatten(1))


class TopLeftTexture(nn.Module):
    """Class 0's logit grows with the high-frequency energy (a Laplacian) of the top-left quadrant:
    4 (e / 16 - 1/2), class 1's logit is 0. Blurring the quadrant deletes class 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]) / 3

    def forward(self, x):
        h, w = x.shape[-2:]
        energy = self.conv(x).pow(2)[..., : h // 2, : w // 2].mean((1, 2, 3))
        return torch.stack([4 * (energy / 16 - 0.5), torch.zeros_like(energy)], 1)


def checkerboard_in_top_left(size: int = 64) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.zeros(1, 3, size, size)
    image[..., : size // 2, : size // 2] = 0.5 * ((rows + cols) % 2 * 2 - 1)[: size // 2, : size // 2].float()
    return image + 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def images32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# --- occlusion -------------------------------------------------------------------------------------


def test_occlusion_of_a_model_that_sees_one_quadrant_lights_only_that_quadrant(images32):
    model = TopLeftLinear().eval()
    aligned = whycam.Occlusion(model, window=8, stride=8)(images32, [0, 2], raw=True)
    assert (aligned[:, 16:, :] == 0).all() and (aligned[:, :, 16:] == 0).all()
    assert (aligned[:, :16, :16] != 0).float().mean() == 1
    # overlapping windows: a pixel outside is lit only by windows that reach into the quadrant
    overlapping = whycam.Occlusion(model, window=8, stride=4)(images32, [0, 2], raw=True)
    assert (overlapping[:, 20:, :] == 0).all() and (overlapping[:, :, 20:] == 0).all()
    assert (overlapping[:, :16, :16] != 0).float().mean() == 1


def test_occlusion_is_the_mean_score_drop_of_the_windows_covering_a_pixel(images32):
    """By hand for a window that tiles the image (4 windows, each pixel covered once)."""
    model = small_cnn()
    ours = whycam.Occlusion(model, window=16, stride=16, baseline=0.0)(images32, 4, raw=True)
    clean = model(images32)[:, 4]
    for top in (0, 16):
        for left in (0, 16):
            occluded = images32.clone()
            occluded[..., top : top + 16, left : left + 16] = 0
            drop = clean - model(occluded)[:, 4]
            assert torch.allclose(ours[:, top + 3, left + 5], drop, atol=1e-6)


def test_occlusion_does_not_depend_on_the_batch_size(images32):
    model = small_cnn()
    one = whycam.Occlusion(model, window=6, stride=3, batch_size=1)(images32, [1, 2], raw=True)
    many = whycam.Occlusion(model, window=6, stride=3, batch_size=500)(images32, [1, 2], raw=True)
    assert torch.allclose(one, many, atol=1e-6)


def test_occlusion_refuses_windows_that_do_not_fit(images32):
    with pytest.raises(ValueError, match="stride <= window"):
        whycam.Occlusion(small_cnn(), window=4, stride=5)
    with pytest.raises(ValueError, match="larger than the images"):
        whycam.Occlusion(small_cnn(), window=40)(images32)
    with pytest.raises(ValueError, match="positive integer"):
        whycam.Occlusion(small_cnn(), window=0)


# --- RISE ------------------------------------------------------------------------------------------


def test_rise_same_seed_identical_other_seed_different(images32):
    model = small_cnn()
    first = whycam.RISE(model, masks=64, seed=5)(images32, [1, 2])
    assert torch.equal(first, whycam.RISE(model, masks=64, seed=5)(images32, [1, 2]))
    assert not torch.equal(first, whycam.RISE(model, masks=64, seed=6)(images32, [1, 2]))


def test_rise_masks_do_not_depend_on_the_chunking():
    rise = whycam.RISE(small_cnn(), masks=50, grid=5, p=0.3, seed=2)
    whole = torch.cat(list(rise.mask_chunks((32, 32), 50)))
    assert torch.equal(whole, torch.cat(list(rise.mask_chunks((32, 32), 7))))
    assert whole.shape == (50, 32, 32) and whole.min() >= 0 and whole.max() <= 1
    assert abs(float(whole.mean()) - 0.3) < 0.05  # E[M] = p


def test_rise_is_the_mask_average_weighted_by_scores(images32):
    model = small_cnn()
    rise = whycam.RISE(model, masks=20, grid=4, p=0.5, seed=0)
    masks = torch.cat(list(rise.mask_chunks((32, 32), 20)))
    probability = model(masks[:, None] * images32[:1]).softmax(1)[:, 7]
    expected = (probability[:, None, None] * masks).sum(0) / (20 * 0.5)
    assert torch.allclose(rise(images32[:1], 7, raw=True)[0], expected, atol=1e-6)


def test_rise_converges_with_more_masks(images32):
    """Measure: the Monte Carlo spread, ||S_a - S_b|| / ||S_a|| between two maps from independent mask
    sets (seeds 0 and 1), worst image, on a model that sees one quadrant. Measured here: 125 masks
    0.098, 500 masks 0.048, 2000 masks 0.023: halving for every 4x masks, the 1 / sqrt(N) of a mean."""
    model = TopLeftLinear().eval()

    def spread(masks):
        a, b = (
            whycam.RISE(model, masks=masks, seed=seed, batch_size=256)(images32, [0, 2], raw=True) for seed in (0, 1)
        )
        return float(((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).max())

    spreads = [spread(n) for n in (125, 500, 2000)]
    assert spreads[0] > spreads[1] > spreads[2], spreads
    assert spreads[2] < 0.35 * spreads[0], spreads


def test_rise_refuses_bad_options():
    with pytest.raises(ValueError, match="probability of keeping"):
        whycam.RISE(small_cnn(), p=0)
    with pytest.raises(ValueError, match="masks"):
        whycam.RISE(small_cnn(), masks=0)


# --- Meaningful Perturbation ----------------------------------------------------------------------


def test_meaningful_perturbation_deletes_the_class_in_the_region_the_model_uses():
    """Class 0's probability: 0.87 on the image, 0.12 with the found mask's region blurred (as low as
    blurring the whole image); 86% of the deleted mass lies in the top-left quadrant, which is ~98%
    deleted. Measured here with the default options."""
    model = TopLeftTexture().eval()
    image = checkerboard_in_top_left()
    method = whycam.MeaningfulPerturbation(model)
    deleted = method(image, 0, raw=True)
    assert deleted.shape == (1, 28, 28) and deleted.min() >= 0 and deleted.max() <= 1
    keep = 1 - F.interpolate(deleted[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        before = model(image).softmax(1)[0, 0]
        after = model(image * keep + blur(image) * (1 - keep)).softmax(1)[0, 0]
        fully_blurred = model(blur(image)).softmax(1)[0, 0]
    assert before > 0.85 and after < 0.15 and after < fully_blurred + 0.01, (before, after)
    region = 1 - keep[0, 0]
    assert region[:32, :32].sum() / region.sum() > 0.8
    assert region[:32, :32].mean() > 0.9


def test_meaningful_perturbation_is_deterministic_and_seeded(images32):
    model = small_cnn()
    first = whycam.MeaningfulPerturbation(model, steps=10, seed=1)(images32, [1, 2], raw=True)
    assert torch.equal(first, whycam.MeaningfulPerturbation(model, steps=10, seed=1)(images32, [1, 2], raw=True))
    assert not torch.equal(first, whycam.MeaningfulPerturbation(model, steps=10, seed=2)(images32, [1, 2], raw=True))


# --- contract ----------------------------------------------------------------------------------------

PERTURBATION_METHODS = {
    "occlusion": lambda m: whycam.Occlusion(m, window=16, stride=16),
    "rise": lambda m: whycam.RISE(m, masks=8, batch_size=4),
    "meaningfulperturbation": lambda m: whycam.MeaningfulPerturbation(m, steps=2),
}


@pytest.mark.parametrize("name", sorted(PERTURBATION_METHODS))
def test_model_unchanged_after_a_call_and_after_a_failing_call(resnet18, images, name):
    resnet18.fc.train()
    resnet18.layer1[0].conv1.weight.requires_grad_(False)
    try:
        before = model_state(resnet18)
        method = PERTURBATION_METHODS[name](resnet18)
        calls = []

        def fails_on_second_call(output):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("target failed mid-call")
            return output[:, 0]

        method(images, [1, 2])
        assert_same_state(before, model_state(resnet18))
        with pytest.raises(RuntimeError, match="mid-call"):
            method(images, fails_on_second_call)
        assert_same_state(before, model_state(resnet18))
        with torch.no_grad():
            assert method(images, 3).shape == (2, 64, 64)
    finally:
        resnet18.eval()
        resnet18.layer1[0].conv1.weight.requires_grad_(True)


def test_every_perturbation_method_is_registered():
    registry = whycam.methods()
    for name in ("occlusion", "rise", "meaningfulperturbation"):
        assert issubclass(registry[name], whycam.Explainer) and registry[name].name == name
