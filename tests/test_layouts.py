"""Layouts read right or refused: channels-last Swin maps (timm, torchvision, Hugging Face), token
sequences with class / register prefixes, an automatic layer that is always a per-image activation,
maps checked per image, the model's own hooks kept, constant maps as zeros, label-free methods on
head-less backbones.

The reference for Grad-CAM is written here by hand: a plain forward hook, the layout conversion
spelled out per model, ``torch.autograd.grad``; pytorch-grad-cam with its documented
``reshape_transform`` is the second oracle.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam import GradCAM as OracleGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tiny_model import SMALL_VIT
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

import whycam
from whycam.layers import LayoutError, auto_layer, read_layout
from whycam.methods.base import normalize_maps

CLASSES = [1, 3]


def images(size=64, n=2, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_gradcam(model, module, x, classes, to_grid):
    """Grad-CAM by hand: hook the layer, convert its output with ``to_grid`` (B, K, h, w), and
    weigh the channels by the spatial mean of d logit / d A (raw signed map)."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.enable_grad():
            output = model(x)
            logits = output.logits if hasattr(output, "logits") else output
            score = logits.gather(1, torch.as_tensor(classes)[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, seen[-1])
    finally:
        handle.remove()
    activation, gradient = to_grid(seen[-1].detach()), to_grid(gradient)
    return (gradient.mean((2, 3), keepdim=True) * activation).sum(1)


def channels_last(a):
    return a.permute(0, 3, 1, 2)


def tokens(prefix, side):
    return lambda a: a[:, prefix:].reshape(a.shape[0], side, side, a.shape[2]).permute(0, 3, 1, 2)


def timm_swin():
    torch.manual_seed(0)
    return timm.models.swin_transformer.SwinTransformer(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 2), num_heads=(1, 2, 4), num_classes=5
    ).eval()


def torchvision_swin():
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=[4, 4], num_classes=5
    ).eval()


def hf_swin():
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=4, num_labels=5
    )
    return SwinForImageClassification(config).eval()


def hf_vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**SMALL_VIT, num_labels=5)).eval()


def dinov2(registers=0):
    torch.manual_seed(0)
    if registers:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **SMALL_VIT)).eval()
    return Dinov2Model(Dinov2Config(**SMALL_VIT)).eval()


# model, expected automatic layer, the layer's layout by hand
CASES = {
    "timm-swin": (timm_swin, "layers.2.blocks.1.norm1", channels_last),
    "torchvision-swin": (torchvision_swin, "permute", lambda a: a),
    "torchvision-swin-block": (torchvision_swin, "features.5.1.norm1", channels_last),
    "hf-swin": (hf_swin, "swin.encoder.layers.2.blocks.1.layernorm_before", tokens(0, 4)),
    "hf-vit": (hf_vit, ".1.layernorm_before", tokens(1, 4)),  # vit.layers (transformers 5) or vit.encoder.layer
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcam_equals_a_hand_written_reference(name):
    build, layer, to_grid = CASES[name]
    model = build()
    x = images()
    explicit = name.endswith("-block")
    cam = whycam.GradCAM(model, layer if explicit else None)
    raw = cam(x, target=CLASSES, raw=True)
    assert cam.layers(x)[0][0].endswith(layer)
    expected = reference_gradcam(model, cam.layers(x)[0][1], x, CLASSES, to_grid)
    assert raw.shape == expected.shape
    assert torch.allclose(raw, expected, atol=1e-5 * expected.abs().max())
    assert cam(x, target=CLASSES).shape == (2, 64, 64)


@pytest.mark.parametrize("name", ["timm-swin", "torchvision-swin-block"])
def test_swin_gradcam_matches_pytorch_grad_cam_with_its_reshape_transform(name):
    build, layer, _ = CASES[name]
    model = build()
    x = images()
    ours = whycam.GradCAM(model, None if name == "timm-swin" else layer)
    module = ours.layers(x)[0][1]
    with OracleGradCAM(model=model, target_layers=[module], reshape_transform=channels_last) as oracle:
        expected = torch.as_tensor(oracle(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in CLASSES]))
    maps = ours(x, target=CLASSES)
    low = expected.flatten(1).min(1).values[:, None, None]
    span = expected.flatten(1).max(1).values[:, None, None] - low
    assert (maps - (expected - low) / span).abs().max() < 1e-4


def test_register_and_class_tokens_are_counted_from_the_model():
    model = dinov2(registers=4)
    x = images()
    cam = whycam.GradCAM(model, output="pooler_output")
    raw = cam(x, target=lambda pooled: pooled[:, 0], raw=True)
    assert cam.layers(x)[0][0] == "encoder.layer.1.norm1"
    module = cam.layers(x)[0][1]
    layout = read_layout((2, 1 + 4 + 16, 32), model, (64, 64), module)
    assert (layout.tokens.prefix, layout.tokens.grid) == (5, (4, 4))
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.enable_grad():
        score = model(x).pooler_output[:, 0].sum()
        (gradient,) = torch.autograd.grad(score, seen[-1])
    handle.remove()
    to_grid = tokens(5, 4)
    expected = (to_grid(gradient).mean((2, 3), keepdim=True) * to_grid(seen[-1].detach())).sum(1)
    assert torch.allclose(raw, expected, atol=1e-5 * expected.abs().max())


def test_an_ambiguous_channel_order_is_refused_with_the_reshape_fix_or_settled_by_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
    with pytest.raises(LayoutError, match=r"reshape=lambda a: a.permute\(0, 3, 1, 2\)"):
        read_layout((2, 16, 16, 16), nn.Sequential(), (32, 32))
    assert read_layout((2, 16, 16, 16), model, (32, 32), model[0]).kind == "channels_first"
    x = images(32)
    assert read_layout((2, 16, 16, 16), model, (32, 32), model[1], x).kind == "channels_first"  # traced to the conv
    assert read_layout((2, 16, 16, 16), nn.LayerNorm(16), (32, 32), nn.LayerNorm(16)).kind == "channels_last"
    with pytest.raises(LayoutError, match="reshape="):
        read_layout((2, 4, 17, 16), model, (64, 64))  # attention heads x tokens x head dim: no grid


def test_hf_swin_automatic_layer_is_not_a_position_bias_table():
    model = hf_swin()
    x = images()
    layer = auto_layer(model, x)
    assert "relative_position" not in layer
    for method in (whycam.GradCAM, whycam.GradCAMPlusPlus, whycam.EigenCAM, whycam.LayerCAM):
        assert method(model)(x, target=CLASSES).shape == (2, 64, 64)


def test_detector_layer_is_per_image_and_per_box_features_are_refused():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    ).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dc = whycam.DiffCAM(model).fit(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert "roi_heads" not in dc.layers(x)[0][0]
    assert dc(x).shape == (2, 64, 64)
    with pytest.raises(ValueError, match="one map per image"):
        whycam.EigenCAM(model, "roi_heads.box_roi_pool")(x)


def test_the_models_own_lazily_added_hooks_are_kept():
    """transformers registers output-capturing hooks at a model's first forward pass; a freshly built
    Segformer must work after whycam ran first, and for the user's own calls."""
    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        decoder_hidden_size=32,
        num_labels=3,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    x = images(32)
    maps = whycam.GradCAM(model)(x, target=lambda logits: logits[:, 1].sum((1, 2)))
    assert maps.shape == (2, 32, 32)
    kept = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    output = model(x, output_hidden_states=True)
    assert output.logits.shape == (2, 3, 8, 8) and len(output.hidden_states) == 2
    assert kept == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("value", [0.1, 0.3, 7.7])
def test_a_constant_map_is_zeros_at_any_size(value):
    assert torch.equal(normalize_maps(torch.full((2, 7, 7), value), (64, 64)), torch.zeros(2, 64, 64))
    assert torch.equal(normalize_maps(torch.full((1, 3, 4, 4), value), (12, 16, 16)), torch.zeros(1, 12, 16, 16))


def clip_vision():
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**SMALL_VIT)).eval()


@pytest.mark.parametrize("build", [dinov2, clip_vision])
def test_label_free_methods_need_no_output_on_headless_backbones(build):
    model = build()
    x = images()
    assert whycam.EigenCAM(model)(x).shape == (2, 64, 64)
    dc = whycam.DiffCAM(model).fit(images(n=6, seed=2))
    assert dc(x).shape == (2, 64, 64)
    assert dc.layers(x)[0][0].endswith("1.norm1") or dc.layers(x)[0][0].endswith("1.layer_norm1")
