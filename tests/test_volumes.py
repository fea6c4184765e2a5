"""Volumes and video: (B, C, D, H, W) inputs give (B, D, H, W) maps for the CAM family, DiffCAM and
the gradient methods, and the pixel localisation metrics read them. MONAI's own
``monai.visualize.GradCAM`` is the oracle for 3-D Grad-CAM; a hand-written reference (hook,
autograd.grad, mean over the three grid axes) the second one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from monai.networks.nets import resnet10
from monai.visualize import GradCAM as MonaiGradCAM

import whycam
from whycam.layers import grid_like
from whycam.metrics.localisation import energy_pointing_game, mask_iou, pointing_game


def volumes(channels=1, n=2, size=(8, 32, 32), seed=0):
    return torch.randn(n, channels, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def monai_net():
    torch.manual_seed(0)
    return resnet10(spatial_dims=3, n_input_channels=1, num_classes=3).eval()


@pytest.fixture(scope="module")
def r3d():
    torch.manual_seed(0)
    return torchvision.models.video.r3d_18(num_classes=4).eval()


def hand_gradcam_3d(model, module, x, classes):
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            (gradient,) = torch.autograd.grad(logits.gather(1, torch.tensor(classes)[:, None]).sum(), seen[-1])
    finally:
        handle.remove()
    return (gradient.mean((2, 3, 4), keepdim=True) * seen[-1].detach()).sum(1)


def test_3d_gradcam_matches_monai(monai_net):
    x = volumes(size=(16, 32, 32))
    cam = whycam.GradCAM(monai_net)
    assert cam.layers(x)[0][0] == "layer4"
    ours = cam(x, target=[0, 2])
    oracle = MonaiGradCAM(nn_module=monai_net, target_layers="layer4", postprocessing=lambda m: m)
    expected = torch.cat([oracle(x[i : i + 1], class_idx=c) for i, c in enumerate([0, 2])])[:, 0]
    flat = expected.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    expected = (expected - low) / (flat.max(1).values.view(-1, 1, 1, 1) - low)
    assert ours.shape == (2, 16, 32, 32)
    assert (ours - expected).abs().max() < 1e-4
    raw = cam(x, target=[0, 2], raw=True)
    assert torch.allclose(raw, hand_gradcam_3d(monai_net, monai_net.layer4, x, [0, 2]), atol=1e-6)
    small = volumes(n=1, size=(8, 16, 16))
    assert whycam.ScoreCAM(monai_net, "layer1", batch_size=64)(small, target=1).shape == (1, 8, 16, 16)


def test_video_network_cams_and_diffcam(r3d):
    x = volumes(channels=3, size=(8, 32, 32))
    for method in (whycam.GradCAM, whycam.GradCAMPlusPlus, whycam.LayerCAM, whycam.EigenCAM):
        maps = method(r3d)(x, target=[1, 3])
        assert maps.shape == (2, 8, 32, 32) and torch.isfinite(maps).all() and maps.amax((1, 2, 3)).le(1).all()
    cam = whycam.GradCAM(r3d)
    raw = cam(x, target=[1, 3], raw=True)
    module = cam.layers(x)[0][1]
    assert torch.allclose(raw, hand_gradcam_3d(r3d, module, x, [1, 3]), atol=1e-6 * raw.abs().max())
    dc = whycam.DiffCAM(r3d, shrinkage=1.0).fit(volumes(channels=3, n=4, seed=1))
    raw = dc(x, raw=True)
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.double()))
    with torch.no_grad():
        r3d(volumes(channels=3, n=4, seed=1))
        r3d(x)
    handle.remove()
    weights = seen[1].mean((2, 3, 4)) - seen[0].mean((2, 3, 4)).mean(0)  # shrinkage 1: w = z - mu, up to scale
    expected = torch.einsum("bk,bkdhw->bdhw", weights, seen[1]).float()
    scale = (raw.flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    assert torch.allclose(raw, scale * expected, atol=1e-5 * raw.abs().max())


def test_a_video_network_that_keeps_the_clip_length():
    """mc3_18 strides height and width by 16 but time by 1: its last stage's grid 8x2x2 on an 8x32x32
    clip is read as a volume (channels-first), not refused."""
    torch.manual_seed(0)
    mc3 = torchvision.models.video.mc3_18(num_classes=4).eval()
    x = volumes(channels=3, size=(8, 32, 32))
    cam = whycam.GradCAM(mc3)
    assert cam.layers(x)[0][0] == "layer4"
    raw = cam(x, target=[0, 2], raw=True)
    assert raw.shape == (2, 8, 2, 2)
    assert torch.allclose(raw, hand_gradcam_3d(mc3, mc3.layer4, x, [0, 2]), atol=1e-6 * raw.abs().max())
    assert cam(x, target=[0, 2]).shape == (2, 8, 32, 32)
    assert grid_like((8, 2, 2), (8, 32, 32)) and grid_like((4, 2, 2), (8, 32, 32))
    assert not grid_like((2, 8, 8), (8, 8, 8))  # depth strided more than height and width: not a volume's grid
    assert not grid_like((8, 2, 4), (8, 32, 32))  # height and width strided differently


def test_gradient_methods_on_volumes(monai_net):
    x = volumes(size=(8, 16, 16))
    saliency = whycam.Saliency(monai_net)(x, target=1, raw=True)
    with torch.enable_grad():
        inputs = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(monai_net(inputs)[:, 1].sum(), inputs)
    assert torch.allclose(saliency, gradient.abs().amax(1))
    integrated = whycam.IntegratedGradients(monai_net, steps=32, method="gausslegendre")
    assert integrated(x, target=1).shape == (2, 8, 16, 16)
    completeness = integrated.completeness(x, target=1)  # sum of attributions = y(x) - y(x')
    assert (completeness.delta.abs() < 0.1 * completeness.difference.abs()).all()
    assert whycam.SmoothGrad(whycam.Saliency(monai_net), samples=2)(x, target=1).shape == (2, 8, 16, 16)
    with pytest.raises(ValueError, match="volumes use the CAM family"):
        whycam.Occlusion(monai_net)(x, target=1)


def test_pixel_localisation_metrics_read_volumes():
    maps = torch.zeros(2, 4, 8, 8)
    maps[0, 1, 2, 3] = 1.0  # inside the object
    maps[1, 3, 7, 7] = 1.0  # outside
    truth = torch.zeros(2, 4, 8, 8, dtype=torch.bool)
    truth[:, 1:3, 1:4, 2:5] = True
    assert pointing_game(maps, truth, tolerance=0).scores.tolist() == [1.0, 0.0]
    assert pointing_game(maps, truth, tolerance=5.2).scores.tolist() == [1.0, 1.0]  # (2, 3, 4) is 5.1 voxels away
    assert energy_pointing_game(maps, truth).scores.tolist() == [1.0, 0.0]
    assert mask_iou(maps, truth).scores.tolist() == pytest.approx([1 / 18, 0.0])
    with pytest.raises(ValueError, match="volumes use a mask metric"):
        whycam.metrics.localisation.box_accuracy(maps, torch.zeros(2, 4))
    assert F.relu(maps).shape == maps.shape


def test_kpcacam_reads_a_volume_as_its_cells():
    """KPCA-CAM's kernel PCA runs over the grid's cells whatever their geometry: on a (B, K, d, h, w)
    activation it equals the map of the same cells laid out as a (B, K, d*h, w) image."""
    activation = torch.randn(2, 6, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    kpca = whycam.KPCACAM(torch.nn.Conv3d(1, 6, 1))
    volume = kpca.layer_map(activation, None, None)
    flat = kpca.layer_map(activation.reshape(2, 6, 12, 5), None, None)
    assert volume.shape == (2, 3, 4, 5)
    assert torch.allclose(volume, flat.reshape(2, 3, 4, 5), atol=1e-6)
    too_fine = whycam.KPCACAM(
        torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1)).eval(), "0"
    )  # 16x16x32 = 8192 cells: a 0.5 GiB kernel matrix per image
    with pytest.raises(ValueError, match=r"8192 cells \(16x16x32\).*choose a coarser layer"):
        too_fine(torch.rand(1, 1, 16, 16, 32))
