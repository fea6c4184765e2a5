"""Class model visualisation (Simonyan et al. 2014, section 2): on a linear model the optimum of
S_c(I) - lambda ||I||^2 is known in closed form, I* = w_c / (2 lambda); on a CNN the ascent raises
the class score, is reproducible from its seed, and leaves the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whycam
from whycam.methods.visualize import displayable


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()


@pytest.mark.parametrize("l2", [0.5, 2.0])
def test_the_optimum_of_a_linear_score_is_its_weights_over_two_lambda(l2):
    model = linear_model()
    # I_t - I* contracts by 1 - 2 lambda lr = 0.5 per step (lr = 0.5 / lambda would land in one step)
    images = whycam.visualize_class(model, [1, 4], size=8, steps=60, lr=0.25 / l2, l2=l2)
    expected = model[1].weight.detach()[[1, 4]].view(2, 3, 8, 8) / (2 * l2)
    assert images.shape == (2, 3, 8, 8)
    assert torch.allclose(images, expected, atol=1e-4 * float(expected.abs().max()))


def test_jitter_keeps_the_linear_optimum_of_a_shift_invariant_score():
    """A score that sees only each channel's mean (1x1 convolution, global average) is invariant to
    circular shifts: jitter leaves the ascent unchanged; the optimum is w_c / (hw 2 lambda) per channel."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    plain = whycam.visualize_class(model, 2, size=8, steps=40, lr=0.5, l2=0.5)
    jittered = whycam.visualize_class(model, 2, size=8, steps=40, lr=0.5, l2=0.5, jitter=3, seed=1)
    assert torch.allclose(plain, jittered, atol=1e-6)
    expected = model[0].weight.detach()[2, :, 0, 0].view(1, 3, 1, 1).expand(1, 3, 8, 8) / 64 / (2 * 0.5)
    assert torch.allclose(plain, expected, atol=1e-6)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_the_ascent_raises_the_class_score_and_is_seeded():
    model = cnn()
    options = dict(size=16, steps=30, lr=300.0, l2=1e-4, jitter=2, blur_sigma=0.5, blur_every=2)
    first = whycam.visualize_class(model, 3, seed=7, **options)
    assert torch.equal(first, whycam.visualize_class(model, 3, seed=7, **options))
    assert not torch.equal(first, whycam.visualize_class(model, 3, seed=8, **options))
    with torch.no_grad():
        start = model(torch.zeros(1, 3, 16, 16))[0, 3]
        assert model(first)[0, 3] > start + 0.01


def test_the_model_comes_back_as_it_was_and_bad_options_are_refused():
    model = cnn()
    flags = [p.requires_grad for p in model.parameters()]
    whycam.visualize_class(model, lambda out: out[:, 1] - out[:, 2], size=16, steps=2)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="class"):
        whycam.visualize_class(model, None)
    with pytest.raises(ValueError, match="lr"):
        whycam.visualize_class(model, 1, lr=0)


def test_displayable_undoes_the_normalisation_and_stretches_to_unit_range():
    images = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]]])
    pictures = displayable(images, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(pictures, torch.tensor([[[[0.0, 1.0]]] * 3]))
    assert (displayable(torch.zeros(1, 3, 2, 2), (0.5,) * 3, (0.2,) * 3) == 0.5).all()


def test_the_visualize_command_writes_one_png_per_class(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner
    from PIL import Image

    from whycam.cli import main

    tiny = f"{Path(__file__).parent / 'tiny_model.py'}:make"
    args = ["visualize", "--model", tiny, "--class", "bee", "--class", "3", "--steps", "5", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    pictures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pictures == ["class_1_bee.png", "class_3_dog.png"]
    assert Image.open(tmp_path / "class_1_bee.png").size == (32, 32)
    result = CliRunner().invoke(main, ["visualize", "--model", tiny, "--class", "zebra", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "zebra" in result.output
    result = CliRunner().invoke(main, ["visualize", "--model", tiny, "--class", "9", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "out of range" in result.output


def test_displayable_per_channel_and_per_image_equals_numpy():
    """ImageNet's per-channel mean and std, two images of different ranges, float64 kept to 1e-12."""
    images = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images[1] *= 3
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pictures = images.numpy() * np.array(std)[:, None, None] + np.array(mean)[:, None, None]
    low = pictures.min((1, 2, 3), keepdims=True)
    expected = (pictures - low) / (pictures.max((1, 2, 3), keepdims=True) - low)
    result = displayable(images, mean, std)
    assert result.dtype == torch.float64
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-12)
