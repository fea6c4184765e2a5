"""Average Drop and Increase in Confidence (Chattopadhay et al., Grad-CAM++, WACV 2018) recomputed by
hand, also in pixel space through transforms that do not commute with the multiplication by the map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whycam import metrics

CLASSES = [1, 2, 0]


def small_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)
    ).eval()


def by_hand(model, images, maps, to_pixels, to_model):
    with torch.no_grad():
        original = model(images).softmax(1)[torch.arange(3), CLASSES]
        explained = model(to_model(to_pixels(images) * maps[:, None])).softmax(1)[torch.arange(3), CLASSES]
    return original, explained


@pytest.mark.parametrize("space", ["as given", "pixel space"])
def test_average_drop_and_increase_in_confidence_follow_the_paper(space):
    model = small_cnn()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    maps = torch.rand(3, 32, 32, generator=generator) ** 4  # mostly dark maps: the scores move
    if space == "as given":
        transforms, to_pixels, to_model = {}, (lambda x: x), (lambda x: x)
    else:  # a sigmoid "denormalisation" to [0, 1]: multiplying there is not multiplying the logits
        to_pixels, to_model = torch.sigmoid, torch.logit
        transforms = {"denormalize": to_pixels, "normalize": lambda x: torch.logit(x.clamp(1e-6, 1 - 1e-6))}
        to_model = transforms["normalize"]
    original, explained = by_hand(model, images, maps, to_pixels, to_model)
    drop = metrics.average_drop(model, images, maps, CLASSES, **transforms)
    assert torch.allclose(drop.scores, 100 * (original - explained).clamp(min=0) / original, atol=1e-4)
    assert drop.value == pytest.approx(float((100 * (original - explained).clamp(min=0) / original).mean()), abs=1e-4)
    increase = metrics.increase_in_confidence(model, images, maps, CLASSES, **transforms)
    assert torch.equal(increase.scores, 100 * (explained > original).float())
    assert 0 < float((explained > original).sum()) < 3  # both outcomes occur: the comparison is tested
    assert (original - explained).abs().min() > 1e-3
    if space == "pixel space":  # the transforms matter here
        _, plain = by_hand(model, images, maps, lambda x: x, lambda x: x)
        assert (plain - explained).abs().max() > 1e-3
