"""CAM formulas on layers where they differ. Grad-CAM, HiResCAM, XGrad-CAM and LayerCAM give the same
map on the layer right before GAP + linear (the gradient is constant over space there); on ResNet-18's
``layer3`` and ``layer4.0`` the gradient varies over space and the four methods differ, so the oracles
(pytorch-grad-cam, torchcam) tell them apart. Eigen-CAM's sign: pytorch-grad-cam's projection (its SVD's
sign is arbitrary) with the documented rule applied here, compared exactly, not up to sign."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchcam.methods as torchcam
from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from test_cam_oracles import CLASSES, TOLERANCE, case, grad_cam_oracle, torchcam_maps
from torch import nn

import whycam

METHODS = {
    "gradcam": (whycam.GradCAM, GradCAM, torchcam.GradCAM),
    "hirescam": (whycam.HiResCAM, HiResCAM, None),  # not in torchcam
    "xgradcam": (whycam.XGradCAM, XGradCAM, torchcam.XGradCAM),
    "layercam": (whycam.LayerCAM, LayerCAM, torchcam.LayerCAM),
}
LAYERS = ["layer3", "layer4.0"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_cams_match_the_oracles_where_the_gradient_varies(method, layer):
    model, layer, images, _ = case("resnet18", layer, 96)
    ours, peer, torchcam_peer = METHODS[method]
    maps = ours(model, layer)(images, target=CLASSES)
    assert (maps - grad_cam_oracle(peer, model, layer, images, None)).abs().max() < TOLERANCE
    if torchcam_peer is not None:
        expected = torchcam_maps(torchcam_peer, model, layer, images, scores_needed=True)
        assert (maps - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("layer", LAYERS)
def test_the_four_methods_differ_on_these_layers(layer):
    """Guards the test above: on these layers every pair of methods differs by far more than its tolerance."""
    model, layer, images, _ = case("resnet18", layer, 96)
    maps = {name: METHODS[name][0](model, layer)(images, target=CLASSES) for name in METHODS}
    for a, b in itertools.combinations(maps, 2):
        assert (maps[a] - maps[b]).abs().max() > 0.05, (a, b)


def activations(model, layer, images) -> np.ndarray:
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.update(a=o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return captured["a"].double().numpy()


@pytest.mark.parametrize(
    ("model_name", "layer", "size"), [("resnet18", "layer4", 96), ("resnet18", "layer3", 64), ("vgg11", None, None)]
)
def test_eigencam_sign_follows_the_mean_activation(model_name, layer, size):
    model, layer, images, _ = case(model_name, layer, size)
    images = torch.cat([images, -images, images.flip(-1)])  # more maps: more chances of either SVD sign
    acts = activations(model, layer, images)
    projection = get_2d_projection(acts).astype(np.float64)  # the first principal component, sign arbitrary
    mean_map = acts.mean(1)
    flat_projection = projection.reshape(len(images), -1)
    flat_mean = mean_map.reshape(len(images), -1)
    correlation = (
        (flat_projection - flat_projection.mean(1, keepdims=True)) * (flat_mean - flat_mean.mean(1, keepdims=True))
    ).sum(1)
    expected = projection * np.sign(correlation)[:, None, None]
    ours = whycam.EigenCAM(model, layer)(images, raw=True).double().numpy()
    scale = np.abs(expected).max((1, 2), keepdims=True)
    assert np.abs(ours - expected).max() / scale.min() < 1e-4


def test_eigencam_sign_is_set_by_the_mean_activation_not_the_maximum():
    """A layer that passes the image through (a 1x1 identity convolution), so its activations are
    chosen here: channel 0 = A carries the variance, channel 1 = 10 - A / 2 sits highest. The first
    principal component is +-A; the channel mean (A / 2 + 10) / 3 correlates with +A, the channel maximum
    (channel 1 everywhere) with -A. Eigen-CAM's rule gives +A."""
    pattern = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)).double()
    noise = 0.01 * torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).double()
    image = torch.stack([pattern, 10 - pattern / 2, noise])[None].float()
    identity = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3)[:, :, None, None])
    model = nn.Sequential(identity, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    ours = whycam.EigenCAM(model, "0")(image, raw=True)[0].double()
    centred = image[0].double().flatten(1).T - image[0].double().flatten(1).T.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[0]).view(8, 8)
    expected = projection * torch.sign((projection * (pattern - pattern.mean())).sum())
    assert torch.allclose(ours, expected, atol=1e-4)
    assert (ours.flatten() @ (pattern - pattern.mean()).flatten()) > 0
