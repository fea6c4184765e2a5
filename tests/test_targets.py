"""Named targets: segmentation regions (pytorch-grad-cam's SemanticSegmentationTarget as oracle),
detections of a torchvision detector, CLIP-style embedding similarity (a hand-written reference:
hook + autograd.grad of the target's own formula), multi-label and regression outputs, and the
command-line spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM as OracleGradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

import whycam
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
    config = CLIPVisionConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        projection_dim=8,
    )
    model = CLIPVisionModelWithProjection(config).eval()
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
