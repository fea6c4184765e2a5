"""Attention rollout and gradient-weighted attention relevance against the libraries' own attention
probabilities: Hugging Face's eager ``output_attentions``, timm's eager path (its ``attn_drop``
receives the probabilities), and torch's ``MultiheadAttention(need_weights=True)``. whycam runs on
the same models with their fused kernels, which never form the probabilities."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import Attention as TimmAttention
from tiny_model import SMALL_VIT
from transformers import ViTConfig, ViTForImageClassification

import whycam
from whycam.methods.transformer import attend, has_attention

CLASSES = [1, 3]


def images(size=64, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def rollout(attentions):
    """Abnar & Zuidema's rollout by hand: R = prod_l rownorm(0.5 mean_h A_l + 0.5 I), class row."""
    result = None
    for a in attentions:
        mixed = 0.5 * a.mean(1).double() + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    return result[:, 0, 1:].reshape(2, 4, 4).float()


def test_rollout_matches_hugging_face_eager_attentions():
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**{**SMALL_VIT, "num_hidden_layers": 3}, num_labels=5)).eval()
    x = images()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(x, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    assert len(attentions) == 3
    ours = whycam.AttentionRollout(model)(x, raw=True)
    assert torch.allclose(ours, rollout(attentions), atol=1e-5)
    assert whycam.AttentionRollout(model)(x).shape == (2, 64, 64)


def test_rollout_matches_torch_multihead_attention_weights():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    x = images()
    attentions, inside = [], []

    def own_weights(module, args):
        if not inside:  # the call below runs this hook again
            inside.append(True)
            tokens = args[0]
            attentions.append(module(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)[1])
            inside.clear()

    handles = [b.self_attention.register_forward_pre_hook(own_weights) for b in model.encoder.layers]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert torch.allclose(whycam.AttentionRollout(model)(x, raw=True), rollout(attentions), atol=1e-5)


def test_chefer_relevance_matches_timm_eager_probabilities_and_their_gradients():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=3, num_classes=5).eval()
    x = images()
    for block in model.blocks:
        block.attn.fused_attn = False
    seen = []
    handles = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    with torch.enable_grad():
        score = model(x).gather(1, torch.tensor(CLASSES)[:, None]).sum()
        gradients = torch.autograd.grad(score, seen)
    for handle in handles:
        handle.remove()
    relevance = torch.eye(17, dtype=torch.float64).expand(2, 17, 17)
    for a, g in zip(seen, gradients, strict=True):
        relevance = relevance + (g * a.detach()).clamp(min=0).mean(1).double() @ relevance
    expected = relevance[:, 0, 1:].reshape(2, 4, 4).float()
    for block in model.blocks:
        block.attn.fused_attn = True
    ours = whycam.AttentionRelevance(model)(x, target=CLASSES, raw=True)
    assert torch.allclose(ours, expected, atol=1e-5 * float(expected.abs().max()))
    assert all(b.attn.fused_attn for b in model.blocks)  # the model's own path is left as it was


def test_attention_that_is_not_plain_softmax_is_refused():
    torch.manual_seed(0)
    swin = timm.models.swin_transformer.SwinTransformer(
        img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=5
    ).eval()
    with pytest.raises(ValueError, match="not plain softmax"):
        whycam.AttentionRollout(swin)(images())
    assert all(not m._forward_hooks for m in swin.modules())
    with pytest.raises(ValueError, match="no attention module"):
        whycam.AttentionRollout(torchvision.models.resnet18(num_classes=3))


@pytest.mark.parametrize("batch_first", [True, False])
def test_attend_recomputes_torchs_multihead_attention(batch_first):
    """torch's own output and per-head probabilities are the oracle (non-zero in-projection bias)."""
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    torch.nn.init.normal_(module.in_proj_bias)  # torch starts it at zero
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        expected, weights = module(x, x, x, need_weights=True, average_attn_weights=False)
        probabilities, output = attend(module, x)
    assert torch.allclose(output, expected, atol=1e-6) and torch.allclose(probabilities, weights, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"qkv_bias": True, "qk_norm": True, "scale_norm": True, "gated": True}])
def test_attend_recomputes_timms_attention(options):
    """timm's own forward is the oracle, with its q/k norms, the norm before the projection and the gate."""
    torch.manual_seed(0)
    module = TimmAttention(16, num_heads=2, norm_layer=torch.nn.LayerNorm, **options).eval()
    for parameter in module.parameters():  # LayerNorm starts as the identity's scale and shift
        torch.nn.init.normal_(parameter, std=0.5)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.allclose(attend(module, x)[1], module(x), atol=1e-5)


class HandAttention(torch.nn.Module):
    """A Hugging Face style attention (q_proj, k_proj, v_proj, o_proj or out_proj), its forward by hand:
    softmax(q k^T s) v with s its ``scaling``, else its ``scale``, else head_dim^-1/2."""

    def __init__(self, out: str = "o_proj", output: bool = True, **scale):
        super().__init__()
        self.head_dim = 4
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(8, 8) for _ in range(3))
        if output:
            setattr(self, out, torch.nn.Linear(8, 8))
        self.out = out
        for name, value in scale.items():
            setattr(self, name, value)

    def forward(self, x):
        q, k, v = (p(x).unflatten(-1, (2, 4)).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        s = getattr(self, "scaling", getattr(self, "scale", 0.5))
        a = (q @ k.transpose(-2, -1) * s).softmax(-1)
        return getattr(self, self.out)((a @ v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize(("out", "scale"), [("o_proj", {"scaling": 0.3}), ("out_proj", {"scale": 0.7}), ("o_proj", {})])
def test_attend_recomputes_a_hugging_face_style_attention_by_hand(out, scale):
    torch.manual_seed(0)
    module, x = HandAttention(out, **scale), torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(attend(module, x)[1], module(x), atol=1e-6)
    assert not has_attention(HandAttention(output=False))  # no output projection


def test_rollout_without_a_class_token_averages_the_token_rows():
    """No class token: the map is the mean of the rollout's rows. timm's own softmax probabilities,
    read from its unfused attention's dropout (an identity in eval), are the oracle."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_classes=5,
        class_token=False,
        global_pool="avg",
    ).eval()
    x, attentions = images(32), []
    fused = [block.attn.fused_attn for block in model.blocks]
    handles = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: attentions.append(o)) for b in model.blocks]
    for block in model.blocks:
        block.attn.fused_attn = False
    with torch.no_grad():
        model(x)
    for block, was, handle in zip(model.blocks, fused, handles, strict=True):
        block.attn.fused_attn = was
        handle.remove()
    result = None
    for a in attentions:
        mixed = 0.5 * a.mean(1).double() + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    expected = result.mean(1).reshape(2, 4, 4).float()
    assert torch.allclose(whycam.AttentionRollout(model)(x, raw=True), expected, atol=1e-5)
