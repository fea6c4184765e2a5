"""ROAD recomputed from its definition on a case that exercises every part of it: maps with distinct
values, pixel counts that are not whole (33 x 33 pixels, so round, floor and ceil disagree), noise
drawn from the documented seeds, and imputation in pixel space through transforms that do not commute
with it. The imputation itself is pytorch-grad-cam's ``NoisyLinearImputer`` (sparse direct solve);
the pixels removed, the noise, the transforms and the scores are built here by hand."""

from __future__ import annotations

import pytest
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from torch import nn

from whycam import metrics

SIZE = 33  # 1089 pixels: 10% = 108.9 -> 109, 30% = 326.7 -> 327, 70% = 762.3 -> 762
PERCENTAGES = [10, 30, 70]
CLASSES = [1, 3]
MEAN = torch.tensor([0.4, 0.5, 0.6])[:, None, None]
STD = torch.tensor([0.2, 0.25, 0.3])[:, None, None]


def every_pixel_model() -> nn.Module:
    """A CNN whose logits depend on every pixel, so one pixel more or less changes the score."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 5)).eval()


def cube(x):
    return x**3


def cube_root(x):
    return x.sign() * x.abs() ** (1 / 3)


TRANSFORMS = {
    "as given": (None, None),
    "affine pixel space": (lambda x: x * STD + MEAN, lambda x: (x - MEAN) / STD),  # noise is scaled by 1/STD
    "cubic pixel space": (cube, cube_root),  # the imputation itself does not commute
}


def expected_curves(model, images, maps, noise, seed, denormalize, normalize):
    """MoRF and LeRF logit curves (B, len(PERCENTAGES)) from the definition."""
    space = images if denormalize is None else denormalize(images)
    imputer = NoisyLinearImputer(noise=0.0)
    pixels = SIZE * SIZE
    curves = {"morf": torch.zeros(len(images), len(PERCENTAGES)), "lerf": torch.zeros(len(images), len(PERCENTAGES))}
    for i in range(len(images)):
        field = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed + i))
        for order, descending in (("morf", True), ("lerf", False)):
            ranking = maps[i].flatten().argsort(descending=descending)
            for step, percentage in enumerate(PERCENTAGES):
                removed = torch.zeros(pixels, dtype=torch.bool)
                removed[ranking[: round(percentage / 100 * pixels)]] = True
                removed = removed.view(SIZE, SIZE)
                filled = imputer(space[i], (~removed).float()) + noise * field * removed
                perturbed = filled if normalize is None else normalize(filled)
                with torch.no_grad():
                    curves[order][i, step] = model(perturbed[None])[0, CLASSES[i]]
    return curves


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    maps = torch.rand(2, SIZE, SIZE, generator=generator)  # distinct values: no ties to break
    return every_pixel_model(), images, maps


@pytest.mark.parametrize("noise", [0.0, 0.3])
@pytest.mark.parametrize("space", list(TRANSFORMS))
def test_road_follows_its_definition(setting, space, noise):
    model, images, maps = setting
    denormalize, normalize = TRANSFORMS[space]
    seed = 7
    result = metrics.road(
        model,
        images,
        maps,
        CLASSES,
        percentages=PERCENTAGES,
        score="logit",
        noise=noise,
        seed=seed,
        denormalize=denormalize,
        normalize=normalize,
    )
    expected = expected_curves(model, images, maps, noise, seed, denormalize, normalize)
    for order in ("morf", "lerf"):
        assert (result.curves[order] - expected[order]).abs().max() < 1e-5, order  # measured: 1.5e-7
    with torch.no_grad():
        original = model(images).gather(1, torch.tensor(CLASSES)[:, None])[:, 0]
    assert torch.allclose(result.curves["original"][:, 0], original, atol=1e-5)
    combined = ((expected["lerf"] - expected["morf"]) / 2).mean(1)
    assert (result.scores - combined).abs().max() < 1e-5
    assert result.value == pytest.approx(float(combined.mean()), abs=1e-5)


def test_the_case_tells_the_variants_apart(setting):
    """Guards the test above: noise, pixel space and one pixel more each move the curves well beyond
    its tolerance, so ignoring any of them cannot pass."""
    model, images, maps = setting
    plain = expected_curves(model, images, maps, 0.0, 7, None, None)["morf"]
    noisy = expected_curves(model, images, maps, 0.3, 7, None, None)["morf"]
    assert (plain - noisy).abs().min() > 1e-4
    for space in ("affine pixel space", "cubic pixel space"):
        moved = expected_curves(model, images, maps, 0.3 if space.startswith("affine") else 0.0, 7, *TRANSFORMS[space])
        reference = noisy if space.startswith("affine") else plain
        assert (moved["morf"] - reference).abs().max() > 1e-4, space
    # one pixel more than round(): the 10% and 30% steps (108.9, 326.7) under floor, 70% under ceil
    ranking = maps[0].flatten().argsort(descending=True)
    imputer = NoisyLinearImputer(noise=0.0)
    for step, count in ((0, 108), (1, 326), (2, 763)):
        removed = torch.zeros(SIZE * SIZE, dtype=torch.bool)
        removed[ranking[:count]] = True
        filled = imputer(images[0], (~removed.view(SIZE, SIZE)).float())
        with torch.no_grad():
            score = model(filled[None])[0, CLASSES[0]]
        assert abs(float(score - plain[0, step])) > 1e-4, count
