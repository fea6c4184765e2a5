"""Score-CAM and Ablation-CAM against brute-force loops written from the papers, and their batching."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import whycam


class TinyCNN(nn.Module):
    """conv-relu-conv-relu, global average pooling, linear; ``dead`` channels of the last conv never fire."""

    def __init__(self, dead: int = 0, concat_early: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU()
        )
        self.concat_early = concat_early
        self.fc = nn.Linear(6 + (8 if concat_early else 0), 5)
        with torch.no_grad():
            self.body[2].bias[:dead] = -1e3

    def forward(self, x):
        early = self.body[1](self.body[0](x))
        features = self.body[3](self.body[2](early)).mean((2, 3))
        if self.concat_early:  # the head needs the early features' batch: no replay possible
            features = torch.cat([features, early.mean((2, 3))], 1)
        return self.fc(features)


def images(n=2, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def model_input_batches(model):
    """Record the batch size of every call of ``model``; returns (sizes, handle)."""
    sizes = []
    return sizes, model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))


def captured(model, layer, x):
    store = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o.detach()))
    with torch.no_grad():
        out = model(x)
    handle.remove()
    return out, store["a"]


def brute_force_ablation(model, layer, x, classes, spatial):
    """w_k = (y - y_k) / y with y_k from one forward pass per (image, channel), zeroing A_k by hand."""
    out, act = captured(model, layer, x)
    grid = spatial(act)
    maps = []
    for b in range(x.shape[0]):
        y = out[b, classes[b]]
        weights = []
        for k in range(grid.shape[1]):

            def zero(m, i, o, k=k):
                o = o.clone()
                spatial(o)[:, k] = 0  # spatial() returns a view of o's elements
                return o

            handle = dict(model.named_modules())[layer].register_forward_hook(zero)
            with torch.no_grad():
                weights.append((y - model(x[b : b + 1])[0, classes[b]]) / y)
            handle.remove()
        maps.append((torch.stack(weights)[:, None, None] * grid[b]).sum(0))
    return torch.stack(maps)


def test_ablationcam_equals_brute_force_on_a_cnn_with_replay():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    sizes, handle = model_input_batches(model)
    try:
        raw = whycam.AblationCAM(model, "body.3", batch_size=4)(x, target=[1, 3], raw=True)
    finally:
        handle.remove()
    expected = brute_force_ablation(model, "body.3", x, [1, 3], lambda a: a)
    assert torch.allclose(raw, expected, atol=1e-5)
    assert max(sizes[1:]) == 1, "the layers before the tapped one run once per chunk, on one image"


def test_ablationcam_falls_back_to_repeating_the_input():
    torch.manual_seed(0)
    model, x = TinyCNN(concat_early=True).eval(), images()
    sizes, handle = model_input_batches(model)
    try:
        raw = whycam.AblationCAM(model, "body.3", batch_size=4)(x, target=[1, 3], raw=True)
    finally:
        handle.remove()
    expected = brute_force_ablation(model, "body.3", x, [1, 3], lambda a: a)
    assert torch.allclose(raw, expected, atol=1e-5)
    assert max(sizes) == 4, "each row repeats its image, batch_size rows per pass"


def test_ablationcam_on_vit_tokens_zeroes_the_patch_tokens_feature():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5).eval()
    x = images(size=32)

    def grid(tokens):  # 1 class token + 2x2 patches -> (B, D, 2, 2), sharing the tokens' storage
        return tokens[:, 1:, :].unflatten(1, (2, 2)).permute(0, 3, 1, 2)

    raw = whycam.AblationCAM(model, "blocks.1.norm1", batch_size=64)(x, target=[0, 4], raw=True)
    expected = brute_force_ablation(model, "blocks.1.norm1", x, [0, 4], grid)
    assert torch.allclose(raw, expected, atol=1e-4)


def brute_force_scorecam(model, layer, x, classes, align_corners=True, normalize_at="input"):
    """Wang et al.: w_k = softmax_k y_c(x * s(Up(A_k))); Up: align_corners=True; s: min-max, 0 if flat.
    ``normalize_at="feature"`` (torchcam): s applied to A_k before Up instead of after. 2-D or 3-D."""

    def minmax(t):
        span = t.max() - t.min()
        return (t - t.min()) / span if span > 0 else torch.zeros_like(t)

    _, act = captured(model, layer, x)
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    maps = []
    for b in range(x.shape[0]):
        scores = []
        for k in range(act.shape[1]):
            channel = act[b : b + 1, k : k + 1]
            channel = minmax(channel) if normalize_at == "feature" else channel
            up = F.interpolate(channel, size=x.shape[2:], mode=mode, align_corners=align_corners)
            mask = minmax(up) if normalize_at == "input" else up
            with torch.no_grad():
                scores.append(model(x[b : b + 1] * mask)[0, classes[b]])
        weights = torch.softmax(torch.stack(scores), 0)
        maps.append((weights.view(-1, *[1] * (act.dim() - 2)) * act[b]).sum(0))
    return torch.stack(maps)


@pytest.mark.parametrize(("align_corners", "normalize_at"), [(False, "input"), (False, "feature"), (True, "feature")])
def test_scorecam_conventions_equal_brute_force(align_corners, normalize_at):
    torch.manual_seed(0)
    model, x = TinyCNN(dead=2).eval(), images()
    cam = whycam.ScoreCAM(model, "body.3", align_corners=align_corners, normalize_at=normalize_at)
    expected = brute_force_scorecam(model, "body.3", x, [2, 0], align_corners, normalize_at)
    assert torch.allclose(cam(x, target=[2, 0], raw=True), expected, atol=1e-5)


def test_scorecam_on_a_volume_upsamples_trilinearly():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    raw = whycam.ScoreCAM(model, "1")(x, target=[1, 2], raw=True)
    assert torch.allclose(raw, brute_force_scorecam(model, "1", x, [1, 2]), atol=1e-5)


def test_scorecam_equals_brute_force_and_shares_the_zero_image_pass():
    torch.manual_seed(0)
    model, x = TinyCNN(dead=2).eval(), images()
    sizes, handle = model_input_batches(model)
    try:
        raw = whycam.ScoreCAM(model, "body.3", batch_size=3)(x, target=[2, 0], raw=True)
    finally:
        handle.remove()
    assert torch.allclose(raw, brute_force_scorecam(model, "body.3", x, [2, 0]), atol=1e-5)
    # one pass on the 2 images, one on the zero image for the 2 x 2 dead channels, then 8 live rows by 3
    assert sizes == [2, 1, 3, 3, 2]


@pytest.mark.parametrize("method", [whycam.ScoreCAM, whycam.AblationCAM])
def test_batch_size_changes_speed_not_the_map(method):
    torch.manual_seed(0)
    model, x = TinyCNN(dead=1).eval(), images(3)
    one = method(model, "body.3", batch_size=1)(x, target=[0, 1, 2])
    many = method(model, "body.3", batch_size=64)(x, target=[0, 1, 2])
    assert torch.allclose(one, many, atol=1e-5)


@pytest.mark.parametrize("method", [whycam.ScoreCAM, whycam.AblationCAM])
def test_callable_target_scores_each_row(method):
    torch.manual_seed(0)
    model, x = TinyCNN(dead=2).eval(), images()  # dead channels: the zero-image pass scores rows too
    by_class = method(model, "body.3")(x, target=3)
    by_callable = method(model, "body.3")(x, target=lambda out: out[:, 3])
    assert torch.allclose(by_class, by_callable, atol=1e-6)


@pytest.mark.parametrize("method", [whycam.ScoreCAM, whycam.AblationCAM])
@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_batch_size_must_be_a_positive_int(method, bad):
    with pytest.raises(ValueError, match="batch_size"):
        method(TinyCNN(), batch_size=bad)


def test_scorecam_refuses_unknown_normalisation():
    with pytest.raises(ValueError, match="normalize_at"):
        whycam.ScoreCAM(TinyCNN(), normalize_at="output")


class FlatHead(nn.Module):
    """A conv whose output is flattened with ``view``: it cannot take channels-last input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        features = self.conv(x)
        return self.fc(features.view(features.shape[0], -1))


def test_channels_last_falls_back_for_a_model_that_cannot_take_it():
    torch.manual_seed(0)
    model, x = FlatHead().eval(), images()
    with pytest.raises(RuntimeError):  # the premise: this model refuses channels-last input
        model(x.contiguous(memory_format=torch.channels_last))
    explainer = whycam.ScoreCAM(model, "conv.1")
    fallback = explainer(x, target=[1, 3], raw=True)
    assert explainer.channels_last is False
    assert torch.allclose(fallback, brute_force_scorecam(model, "conv.1", x, [1, 3]), atol=1e-5)


def test_channels_last_passes_give_the_contiguous_map():
    torch.manual_seed(0)
    model, x = TinyCNN(dead=1).eval(), images()
    fast = whycam.ScoreCAM(model, "body.3")(x, target=[2, 0], raw=True)
    plain = whycam.ScoreCAM(model, "body.3", channels_last=False)(x, target=[2, 0], raw=True)
    assert torch.allclose(fast, plain, atol=1e-6)


def test_scorecam_passes_its_options_on():
    with pytest.raises(ValueError, match="sign"):
        whycam.ScoreCAM(TinyCNN(), "body.3", sign="bogus")
