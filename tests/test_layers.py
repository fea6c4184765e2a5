"""Layers: by name, by module, automatically (CNNs and ViTs), ViT token grids, and helpful errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import whycam
from whycam.layers import (
    LayerNotFoundError,
    TokenLayout,
    auto_layer,
    resolve_layer,
    resolve_layers,
    to_spatial,
    token_layout,
)

TORCHVISION = {
    "resnet18": "layer4",
    "vgg11": "features",
    "densenet121": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
}


def images(size=(64, 64), n=2):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("arch", "expected"), list(TORCHVISION.items()))
def test_auto_layer_for_torchvision_cnns(arch, expected):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=5).eval()
    x = images()
    assert auto_layer(model, x) == expected
    cam = whycam.GradCAM(model)
    maps = cam(x, target=1)
    assert cam.layers(x)[0][0] == expected
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()


def test_auto_layer_for_torchvision_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    x = images()
    assert auto_layer(model, x) == "encoder.layers.encoder_layer_1.ln_1"
    raw = whycam.GradCAM(model)(x, target=1, raw=True)
    assert raw.shape == (2, 4, 4)


TIMM_VITS = [
    # (model name, options, prefix tokens: class / class + distillation / class + 4 registers)
    ("vit_tiny_patch16_224", {}, 1),
    ("deit_tiny_distilled_patch16_224", {}, 2),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),
]


@pytest.mark.parametrize(("arch", "options", "prefix"), TIMM_VITS)
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_timm_vits_infer_prefix_and_grid(arch, options, prefix, size):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, img_size=size, depth=2, num_classes=5, **options).eval()
    x = images(size)
    assert auto_layer(model, x) == "blocks.1.norm1"
    grid = (size[0] // 16, size[1] // 16)
    assert token_layout(model, prefix + grid[0] * grid[1], size) == TokenLayout(prefix, grid)
    raw = whycam.GradCAM(model)(x, target=[1, 2], raw=True)
    assert raw.shape == (2, *grid)
    assert whycam.GradCAM(model)(x, target=[1, 2]).shape == (2, *size)


def test_token_grid_without_a_patch_embedding_uses_the_declared_prefix_or_refuses():
    declared = nn.Identity()
    declared.num_prefix_tokens = 1
    layout = token_layout(declared, 1 + 3 * 4, (48, 64))
    assert layout == TokenLayout(1, (3, 4))
    with pytest.raises(ValueError, match=r"1 prefix \+ 3x4; 4 prefix \+ 3x3.*reshape="):
        token_layout(nn.Identity(), 1 + 3 * 4, (48, 64))  # 1 + 3x4 or 4 + 3x3 (stride 22): not guessed
    tokens = torch.arange(2 * 13 * 5, dtype=torch.float32).reshape(2, 13, 5)
    grid = to_spatial(tokens, declared, (48, 64))
    assert grid.shape == (2, 5, 3, 4)
    assert torch.equal(grid[1, 2, 1, 3], tokens[1, 1 + 1 * 4 + 3, 2])


def test_unreadable_tokens_ask_for_a_reshape():
    with pytest.raises(ValueError, match="reshape="):
        to_spatial(torch.zeros(1, 7, 4), nn.Identity(), (64, 80))  # no prefix + grid gives 4:5
    with pytest.raises(ValueError, match="reshape="):
        to_spatial(torch.zeros(1, 4), nn.Identity(), (64, 64))


def test_explicit_reshape_equals_the_automatic_grid():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=5).eval()
    x = images()

    def reshape(tokens):
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    auto = whycam.GradCAM(model, "blocks.1.norm1")(x, target=1)
    explicit = whycam.GradCAM(model, "blocks.1.norm1", reshape=reshape)(x, target=1)
    assert torch.allclose(auto, explicit)


def test_layer_by_module_and_by_name_agree():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    assert resolve_layer(model, model.layer3) == ("layer3", model.layer3)
    assert resolve_layer(model, "layer3.1.conv2") == ("layer3.1.conv2", model.layer3[1].conv2)
    x = images()
    by_module = whycam.GradCAM(model, model.layer3)(x, target=1)
    assert torch.equal(by_module, whycam.GradCAM(model, "layer3")(x, target=1))


def test_wrong_layer_name_lists_the_closest_names():
    model = torchvision.models.resnet18(num_classes=5)
    with pytest.raises(LayerNotFoundError, match=r"no layer 'layer5'.*layer[1-4]"):
        resolve_layer(model, "layer5")
    with pytest.raises(LayerNotFoundError, match=r"layer4\.1\.conv2"):
        whycam.GradCAM(model.eval(), "layer4.1.cnv2")(images(), target=1)


def test_foreign_module_empty_list_and_bad_type_are_refused():
    model = torchvision.models.resnet18(num_classes=5)
    with pytest.raises(LayerNotFoundError, match="not part of the model"):
        resolve_layer(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="empty"):
        resolve_layers(model, [], images())
    with pytest.raises(TypeError, match="dotted name"):
        resolve_layer(model, 4)


def test_no_spatial_layer_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(LayerNotFoundError, match="layer="):
        auto_layer(model, torch.zeros(1, 3, 8, 8))


def test_auto_layer_leaves_no_hook_and_resolves_once():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    cam = whycam.GradCAM(model)
    cam(images(), target=1)
    assert all(not m._forward_hooks for m in model.modules())
    assert cam.layers(images()) == [("layer4", model.layer4)]
