"""Named targets: segmentation regions (pytorch-grad-cam's SemanticSegmentationTarget as oracle; on
volumes, MONAI's SegResNet against a hand-written 3-D reference),
detections of a torchvision detector, CLIP-style embedding similarity (a hand-written reference:
hook + autograd.grad of the target's own formula), multi-label and regression outputs, and the
command-line spec."""

from __future__ import annotations

import nibabel
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from monai.networks.nets import SegResNet
from pytorch_grad_cam import GradCAM as OracleGradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from tiny_model import SMALL_VIT
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

import whycam
from whycam.data import load_target_file
from whycam.targets import Class, Detection, Labels, Output, Region, Similarity, Versus, detections, parse_target


def images(size=64, n=2, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hand_gradcam(model, module, x, score_of):
    """Raw Grad-CAM by hand: hook, autograd.grad of ``score_of(model(x))`` summed, channel-mean weights."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(score_of(model(x)).sum(), seen[-1])
    finally:
        handle.remove()
    return (gradient.mean((2, 3), keepdim=True) * seen[-1].detach()).sum(1)


class SegmentationLogits(nn.Module):
    """pytorch-grad-cam reads a tensor output: the segmentation model's ``out``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def test_region_target_matches_pytorch_grad_cam_semantic_segmentation_target():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = images()
    mask = torch.zeros(64, 64)
    mask[8:40, 16:56] = 1
    cam = whycam.GradCAM(model, "classifier.cbr")
    ours = cam(x, target=Region(2, mask))
    module = cam.layers(x)[0][1]
    wrapped = SegmentationLogits(model).eval()
    with OracleGradCAM(model=wrapped, target_layers=[module]) as oracle:
        expected = torch.as_tensor(oracle(input_tensor=x, targets=[SemanticSegmentationTarget(2, mask.numpy())] * 2))
    low = expected.flatten(1).min(1).values[:, None, None]
    expected = (expected - low) / (expected.flatten(1).max(1).values[:, None, None] - low)
    assert (ours - expected).abs().max() < 1e-4


def test_detection_target_explains_the_best_matching_box():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    ).eval()
    x = images()
    with torch.no_grad():
        found = detections(model(x))
    box = found[0, 3, :4].tolist()
    target = Detection(box)
    scores = target(found)
    assert scores[0] == found[0, 3, 4]
    cam = whycam.GradCAM(model)
    raw = cam(x, target=target, raw=True)
    assert "rpn" not in cam.layers(x)[0][0] and "roi_heads" not in cam.layers(x)[0][0]
    expected = hand_gradcam(model, cam.layers(x)[0][1], x, lambda out: target(detections(out)))
    assert torch.allclose(raw, expected, atol=1e-5 * expected.abs().max())
    assert cam(x, target=target).shape == (2, 64, 64)
    far = Detection([500, 500, 600, 600])
    assert torch.equal(far(found), torch.zeros(2))


def test_similarity_target_on_a_clip_image_embedding():
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**SMALL_VIT, projection_dim=8)).eval()
    text = torch.randn(8, generator=torch.Generator().manual_seed(3))
    x = images()
    cam = whycam.GradCAM(model, output="image_embeds")
    raw = cam(x, target=Similarity(text), raw=True)
    module = cam.layers(x)[0][1]
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.enable_grad():
        score = F.cosine_similarity(model(x).image_embeds, text[None], dim=1).sum()
        (gradient,) = torch.autograd.grad(score, seen[-1])
    handle.remove()

    def grid(a):
        return a[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)

    expected = (grid(gradient).mean((2, 3), keepdim=True) * grid(seen[-1].detach())).sum(1)
    assert torch.allclose(raw, expected, atol=1e-5 * expected.abs().max())


def test_labels_output_and_class_targets(resnet18):
    x = images()
    cam = whycam.GradCAM(resnet18)
    both = cam(x, target=Labels([1, 3]), raw=True)
    assert torch.allclose(both, cam(x, target=1, raw=True) + cam(x, target=3, raw=True), atol=1e-5)
    assert torch.equal(cam(x, target=Output(4), raw=True), cam(x, target=4, raw=True))
    assert torch.equal(cam(x, target=Class([2, 5]), raw=True), cam(x, target=[2, 5], raw=True))
    versus = cam(x, target=Versus(1, 3), raw=True)  # y_1 - y_3
    assert torch.allclose(versus, cam(x, target=1, raw=True) - cam(x, target=3, raw=True), atol=1e-5)
    regression = nn.Sequential(resnet18, nn.Linear(10, 1)).eval()
    assert whycam.GradCAM(regression, "0.layer4")(x, target=Output()).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="do not fit"):
        cam(x, target=Labels([1, 30]))


def test_target_specs_from_the_command_line(tmp_path):
    loaded = {"mask.png": torch.ones(4, 4), "text.npy": torch.ones(8)}
    assert parse_target("3") == 3 and parse_target("class:3") == 3
    assert parse_target("labels:1,4").labels == [1, 4]
    assert parse_target("output:2").index == 2
    versus = parse_target("versus:3,5")
    assert (versus.target, versus.versus, str(versus)) == (3, 5, "versus:3,5")
    for bad in ("versus:3", "versus:3,3", "versus:3,x"):
        with pytest.raises(ValueError, match="cannot read the target"):
            parse_target(bad)
    region = parse_target("region:2@mask.png", loaded.get)
    assert region.label == 2 and torch.equal(region.mask, torch.ones(4, 4))
    assert parse_target("region:1").mask is None
    box = parse_target("box:1,2,30,40@2")
    assert box.box.tolist() == [1, 2, 30, 40] and box.label == 2
    assert parse_target("similarity:text.npy", loaded.get).reference.shape == (8,)
    with pytest.raises(ValueError, match="unknown target kind 'pixel'"):
        parse_target("pixel:3")
    with pytest.raises(ValueError, match="cannot read the target"):
        parse_target("box:1,2,3")


@pytest.fixture(scope="module")
def segresnet():
    torch.manual_seed(0)
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8).eval()


def hand_region_gradcam_3d(model, module, x, mask):
    """Raw 3-D Grad-CAM of class 1's logits summed over ``mask`` (B, D, H, W), written out by hand."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.enable_grad():
            score = (model(x)[:, 1] * mask).sum()
            (gradient,) = torch.autograd.grad(score, seen[-1])
    finally:
        handle.remove()
    return (gradient.mean((2, 3, 4), keepdim=True) * seen[-1].detach()).sum(1)


def test_region_target_on_a_3d_segmentation_output(segresnet):
    x = torch.randn(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(8, 16, 16)
    mask[2:6, 4:12, 8:16] = 1
    per_image = torch.stack([mask, mask.flip(1, 2)])
    assert whycam.GradCAM(segresnet).layers(x)[0][0] == "conv_final"  # automatic: the logits' own conv
    cam = whycam.GradCAM(segresnet, "up_layers.1")  # a decoder stage at half resolution: where the mask is matters
    module = cam.layers(x)[0][1]
    shared = cam(x, target=Region(1, mask), raw=True)
    assert torch.allclose(shared, hand_region_gradcam_3d(segresnet, module, x, mask.expand(2, -1, -1, -1)), atol=1e-6)
    each = cam(x, target=Region(1, per_image), raw=True)
    expected = hand_region_gradcam_3d(segresnet, module, x, per_image)
    assert torch.allclose(each, expected, atol=1e-6 * expected.abs().max())
    assert not torch.allclose(each[1], shared[1], atol=1e-3 * expected.abs().max())
    with torch.no_grad():
        output = segresnet(x)
    predicted = (output.argmax(1) == 1).float()
    assert torch.equal(Region(1)(output), (output[:, 1] * predicted).sum((1, 2, 3)))
    coarse = mask[::2, ::2, ::2]  # a mask at half the grid's resolution, resized by nearest neighbour
    assert torch.equal(
        Region(1, coarse)(output),
        Region(1, coarse.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2))(output),
    )
    assert cam(x, target=Region(1, mask)).shape == (2, 8, 16, 16)


def test_a_region_mask_that_does_not_fit_the_output_is_refused(segresnet):
    output = torch.randn(2, 2, 8, 16, 16)
    with pytest.raises(ValueError, match=r"is \(DxHxW\) or \(2xDxHxW\)"):
        Region(1, torch.ones(16, 16))(output)  # a slice's mask for a volume
    with pytest.raises(ValueError, match=r"is \(DxHxW\) or \(2xDxHxW\)"):
        Region(1, torch.ones(3, 8, 16, 16))(output)  # three masks for two volumes
    with pytest.raises(ValueError, match="axes swapped"):
        Region(1, torch.ones(16, 16, 8))(output)  # (W, H, D) order
    with pytest.raises(ValueError, match="axes swapped"):
        Region(1, torch.ones(2, 16, 16))(output)  # one slice per image, read as (D, H, W)
    with pytest.raises(ValueError, match="axes swapped"):
        Region(1, torch.ones(64, 32))(torch.randn(2, 3, 16, 16))
    assert Region(1, torch.ones(64, 64))(torch.ones(2, 3, 16, 16)).tolist() == [256.0, 256.0]
    assert Region(1, torch.ones(17, 17))(torch.ones(2, 3, 5, 5)).tolist() == [25.0, 25.0]  # ceil(17 / 4)


def test_a_nifti_region_mask_from_the_command_line(tmp_path, segresnet):
    voxels = np.zeros((16, 16, 8))  # NIfTI voxel axes (i, j, k) = (W, H, D)
    voxels[8:16, 4:12, 2:6] = 3
    nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), tmp_path / "mask.nii.gz")
    region = parse_target(f"region:1@{tmp_path / 'mask.nii.gz'}", load_target_file)
    expected = torch.zeros(8, 16, 16)
    expected[2:6, 4:12, 8:16] = 1
    assert torch.equal(region.mask, expected)
    output = torch.randn(2, 2, 8, 16, 16)
    assert torch.allclose(region(output), (output[:, 1] * expected).sum((1, 2, 3)))
