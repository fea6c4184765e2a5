"""Deconvnet (Zeiler & Fergus 2014): by hand on one hidden ReLU layer, and against Captum's
``Deconvolution`` (relative error max|ours - Captum| / max|Captum| < 1e-4) on a ResNet-18 with
in-place ReLUs and on a small CNN."""

from __future__ import annotations

import warnings

import captum.attr as ca
import pytest
import torch
import torchvision
from tiny_model import small_cnn
from torch import nn

import whycam

TARGETS = [3, 7]


def test_deconvnet_passes_the_relu_of_the_incoming_signal_by_hand():
    """One hidden ReLU layer: deconvnet = W1^T ReLU(W2^T e_c), whatever the sign of h (the gradient
    would mask by 1[h > 0], guided backprop by both)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 3, 2, 2)
    expected = (model[3].weight[1].clamp(min=0) @ model[1].weight).view(1, 3, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = whycam.Deconvnet(model).per_channel(x, 1)
    assert torch.allclose(ours, expected.detach(), atol=1e-6)
    hidden = model[1](x.flatten(1))
    assert (hidden <= 0).any(), "the check needs a dead unit, where deconvnet and guided backprop differ"
    assert not torch.allclose(ours, whycam.GuidedBackprop(model).per_channel(x, 1), atol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_deconvnet_matches_captum(name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval() if name == "resnet18" else small_cnn()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        theirs = ca.Deconvolution(model).attribute(images, target=TARGETS).detach()
    ours = whycam.Deconvnet(model).per_channel(images, TARGETS)
    assert float(theirs.abs().max()) > 0
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-4
    gradient = whycam.Saliency(model, reduce="sum").per_channel(images, TARGETS)
    assert not torch.allclose(ours, gradient), "deconvnet must differ from the plain gradient"


def test_deconvnet_leaves_the_model_as_it_was():
    model = small_cnn()
    images = torch.randn(1, 3, 16, 16)
    before = whycam.Saliency(model).per_channel(images, 2)
    whycam.Deconvnet(model)(images, 2)
    assert torch.equal(whycam.Saliency(model).per_channel(images, 2), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
