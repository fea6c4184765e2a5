"""LeGrad (Bousselham et al., 2024): against torchcam 0.5.0's LeGrad on a torchvision ViT (which is
all that torchcam supports), and on a timm ViT against an independent computation that reads the
attention probabilities from timm's own unfused attention.

Measured: 3e-7 max abs difference from torchcam after min-max normalisation."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torchcam.methods import LeGrad as TorchcamLeGrad

import whycam
from whycam.methods.legrad import AttentionCapture

TOLERANCE = 1e-4
CLASSES = [3, 7]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).min(1).values[:, None, None]
    return (maps - low) / (maps.flatten(1).max(1).values[:, None, None] - low)


def torchvision_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return model


def timm_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10).eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("last", [3, 2])
def test_legrad_matches_torchcam(images, last):
    model = torchvision_vit()
    blocks = list(model.encoder.layers)[-last:]
    with TorchcamLeGrad(model, blocks) as cam:
        theirs = cam(CLASSES, model(images))[0]
    ours = whycam.LeGrad(model, blocks)(images, CLASSES, raw=True)
    assert ours.shape == theirs.shape == (2, 4, 4)
    assert float((minmax(ours) - minmax(theirs)).abs().max()) < TOLERANCE
    if last == 3:  # the default: every block
        assert torch.equal(whycam.LeGrad(model)(images, CLASSES, raw=True), ours)


def by_hand(model, images, classes) -> torch.Tensor:
    """E = mean_l mean_{heads, queries} ReLU(ds^l/dA^l), s^l = head(norm(mean token of block l)), with
    A^l read at the input of timm's attention dropout on a copy whose attention is unfused."""
    model = copy.deepcopy(model)
    probabilities, tokens = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: probabilities.append(i[0]))
        block.register_forward_hook(lambda m, i, o: tokens.append(o))
    model(images)
    relevance = []
    for attention, z in zip(probabilities, tokens, strict=True):
        score = model.head(model.norm(z.mean(1)))[torch.arange(len(classes)), classes].sum()
        (gradient,) = torch.autograd.grad(score, attention, retain_graph=True)
        relevance.append(gradient.clamp(min=0).mean((1, 2)))
    return torch.stack(relevance).mean(0)[:, 1:].reshape(len(images), 4, 4)


def test_legrad_on_a_timm_vit_by_hand(images):
    model = timm_vit()
    expected = by_hand(model, images, torch.tensor(CLASSES))
    ours = whycam.LeGrad(model)(images, CLASSES, raw=True)
    assert float((minmax(ours) - minmax(expected)).abs().max()) < TOLERANCE
    assert whycam.LeGrad(model)(images, CLASSES).shape == (2, 32, 32)


@pytest.mark.parametrize("build", [torchvision_vit, timm_vit])
def test_legrad_leaves_the_model_and_its_output_as_they_were(images, build):
    model = build()
    with torch.no_grad():
        before = model(images)
    explainer = whycam.LeGrad(model)
    explainer(images, None)
    assert explainer.stride_ == (8.0, 8.0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(images), before)


def test_legrad_refuses_a_cnn_and_a_vit_without_a_known_head(images):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="score_projection"):
        whycam.LeGrad(torchvision.models.resnet18(num_classes=10).eval())
    model = timm_vit()
    with pytest.raises(ValueError, match="attention maps"):
        whycam.LeGrad(model, ["blocks.0.norm1"], score_projection=lambda t: t.mean(1)[:, :10])(images, 3)


def test_legrad_takes_the_blocks_in_any_order(images):
    model = timm_vit()
    forward = whycam.LeGrad(model, ["blocks.1", "blocks.2"])(images, CLASSES, raw=True)
    backward = whycam.LeGrad(model, ["blocks.2", "blocks.1"])(images, CLASSES, raw=True)
    assert torch.allclose(forward, backward, atol=1e-7)


@pytest.mark.parametrize(("batch_first", "bias"), [(True, True), (False, True), (False, False)])
def test_the_multihead_hook_recomputes_torchs_own_attention(batch_first, bias):
    """nn.MultiheadAttention's output and per-head probabilities, as torch computes them, are the
    oracle: sequence-first or batch-first, with a non-zero in-projection bias (torch starts it at 0)."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first).eval()
    if bias:
        torch.nn.init.normal_(mha.in_proj_bias)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        expected, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
        capture = AttentionCapture()
        capture.block = 0
        result, _ = capture.multihead_hook(mha, (x, x, x), {"need_weights": True}, (expected, weights))
    assert torch.allclose(result, expected, atol=1e-6)
    assert torch.allclose(capture.probabilities[0][0], weights, atol=1e-6)


def test_the_multihead_hook_refuses_masks_bias_kv_and_dropout():
    x, mask = torch.randn(1, 3, 8), torch.zeros(1, 3, dtype=torch.bool)
    capture = AttentionCapture()
    capture.block = 0
    plain = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    for args, kwargs in [
        ((x, x, x, mask), {}),
        ((x, x, x), {"key_padding_mask": mask}),
        ((x, x, x, None, True, torch.zeros(3, 3)), {}),
        ((x, x, x), {"attn_mask": torch.zeros(3, 3)}),
    ]:
        with pytest.raises(ValueError, match="without masks"):
            capture.multihead_hook(plain, args, kwargs, (x, None))
    for options in ({"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 4}):
        module = torch.nn.MultiheadAttention(8, 2, batch_first=True, **options).eval()
        with pytest.raises(ValueError, match="packed q/k/v"):
            capture.multihead_hook(module, (x, x, x), {}, (x, None))
    with pytest.raises(ValueError, match="dropout"):
        capture.multihead_hook(
            torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True), (x, x, x), {}, (x, None)
        )
    for module in (torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).eval(), plain.train()):
        capture.multihead_hook(module, (x, x, x), {}, (x, None))  # dropout that is off is no reason to refuse
