"""The explainer contract, for every method of the CAM family: output, model restored, targets, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_score import TinyCNN, images
from torch import nn

import whycam
from whycam.methods.base import fuse_maps

FAMILY = ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam"]
GRADIENT = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def method(name: str):
    return whycam.methods()[name]


def snapshot(model: nn.Module):
    """Everything an explainer must give back: modules, modes, flags, hooks, parameter values and grads."""
    return {
        "modules": [(n, id(m)) for n, m in model.named_modules()],
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [(n, d, list(getattr(m, d, {}))) for n, m in model.named_modules() for d in HOOK_DICTS],
        "values": [t.clone() for t in model.state_dict().values()],
    }


def assert_same(before, after):
    for key in ("modules", "modes", "flags", "hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])
    assert all(torch.equal(a, b) for a, b in zip(before["values"], after["values"], strict=True))


class Fragile(TinyCNN):
    """Raises in its head (after the tapped layer) at its ``fail_at``-th forward call."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            self.body(x)
            raise RuntimeError("boom")
        return super().forward(x)


def user_state(model: nn.Module) -> nn.Module:
    """A model as a user may hand it over: one sub-module training, a frozen layer, a hook of their own."""
    model.eval()
    model.body[0].train()
    model.body[0].weight.requires_grad_(False)
    model.body[2].register_forward_hook(lambda m, i, o: None)
    model.fc.register_forward_pre_hook(lambda m, i: None)
    return model


@pytest.mark.parametrize("name", FAMILY)
def test_model_restored_after_a_call(name):
    torch.manual_seed(0)
    model = user_state(TinyCNN())
    before = snapshot(model)
    maps = method(name)(model, "body.3")(images(), target=[1, 2])
    assert_same(before, snapshot(model))
    assert maps.shape == (2, 16, 16) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1


# Every method fails in its first forward pass (hooks on, gradient graph started); the methods with
# many passes also fail in their third, with their chunk hooks registered.
FAILURES = [(name, 1) for name in FAMILY] + [("scorecam", 3), ("ablationcam", 3)]


@pytest.mark.parametrize(("name", "fail_at"), FAILURES)
def test_model_restored_when_the_call_raises(name, fail_at):
    torch.manual_seed(0)
    model = user_state(Fragile(fail_at))
    options = {"batch_size": 2} if name in ("scorecam", "ablationcam") else {}
    explainer = method(name)(model, "body.3", **options)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        explainer(images(), target=[1, 2])
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", FAMILY)
def test_works_inside_no_grad(name):
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    outside = method(name)(model, "body.3")(x, target=[1, 2])
    with torch.no_grad():
        inside = method(name)(model, "body.3")(x, target=[1, 2])
        assert not torch.is_grad_enabled()
    assert torch.allclose(inside, outside)


@pytest.mark.parametrize("name", FAMILY)
def test_mixed_targets_are_per_image(name):
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    together = method(name)(model, "body.3")(x, target=[1, 4])
    apart = torch.cat([method(name)(model, "body.3")(x[:1], target=1), method(name)(model, "body.3")(x[1:], target=4)])
    assert torch.allclose(together, apart, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in FAMILY if n not in ("cam", "eigencam")])
def test_callable_target_equals_class_target(name):
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    # Score-CAM and Ablation-CAM apply the callable to the outputs of their perturbed rows: it must
    # score each row of the output on its own.
    by_class = method(name)(model, "body.3")(x, target=4)
    by_callable = method(name)(model, "body.3")(x, target=lambda out: out[:, 4])
    assert torch.allclose(by_class, by_callable, atol=1e-6)


def test_none_target_is_the_predicted_class():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    predicted = model(x).argmax(1).tolist()
    cam = whycam.GradCAM(model, "body.3")
    assert torch.equal(cam(x), cam(x, target=predicted))


class TupleOutput(nn.Module):
    def __init__(self, inner, kind):
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x):
        logits = self.inner(x)
        if self.kind == "tuple":
            return logits, logits.sum()
        return {"aux": logits * 0 + 1, "scores": logits}


@pytest.mark.parametrize(
    ("kind", "output"), [("tuple", None), ("tuple", 0), ("dict", "scores"), ("dict", lambda out: out["scores"])]
)
@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam"])
def test_tuple_and_dict_outputs_through_the_selector(kind, output, name):
    torch.manual_seed(0)
    inner, x = TinyCNN().eval(), images()
    expected = method(name)(inner, "body.3")(x, target=[1, 2])
    maps = method(name)(TupleOutput(inner, kind).eval(), "inner.body.3", output=output)(x, target=[1, 2])
    assert torch.allclose(maps, expected, atol=1e-6)


def test_dict_output_without_a_selector_names_the_keys():
    with pytest.raises(ValueError, match="aux.*scores|output="):
        whycam.GradCAM(TupleOutput(TinyCNN(), "dict").eval(), "inner.body.3")(images(), target=1)


@pytest.mark.parametrize("name", FAMILY)
def test_constant_map_is_zeros_not_nan(name):
    torch.manual_seed(0)
    model = TinyCNN(dead=6).eval()  # every channel of the tapped layer is zero
    maps = method(name)(model, "body.3")(images(), target=[1, 2])
    assert torch.isfinite(maps).all() and (maps == 0).all()


def test_class_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range.*5 classes"):
        whycam.GradCAM(TinyCNN().eval(), "body.3")(images(), target=7)


def test_wrong_number_of_targets_is_refused():
    with pytest.raises(ValueError, match="3 targets for 2 images"):
        whycam.GradCAM(TinyCNN().eval(), "body.3")(images(), target=[1, 2, 3])


def test_nan_output_is_refused():
    model = TinyCNN().eval()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        whycam.GradCAM(model, "body.3")(images(), target=1)


@pytest.mark.parametrize(
    ("bad", "error", "hint"),
    [
        (torch.randn(3, 16, 16), ValueError, "unsqueeze"),
        (torch.randn(2, 1, 16, 16), ValueError, "expand"),
        (torch.randn(2, 4, 16, 16), ValueError, r"images\[:, :3\]"),
        ((torch.rand(2, 3, 16, 16) * 255).to(torch.uint8), TypeError, "float"),
        (torch.full((2, 3, 16, 16), float("nan")), ValueError, "NaN"),
        ([[0.0]], TypeError, "tensor"),
    ],
)
def test_bad_images_are_refused_with_the_fix(bad, error, hint):
    with pytest.raises(error, match=hint):
        whycam.GradCAM(TinyCNN().eval(), "body.3")(bad, target=1)


@pytest.mark.parametrize("name", GRADIENT)
def test_gradients_reach_the_tapped_layer_only(name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    fired = []
    handle = model.conv1.register_full_backward_hook(lambda m, gi, go: fired.append(1))
    try:
        method(name)(model, "layer4")(images(size=64), target=[1, 2])
    finally:
        handle.remove()
    assert fired == [], "no backward pass into the layers before the tapped one"
    assert all(p.grad is None for p in model.parameters())


def hand_gradcam(features: torch.Tensor, head, classes) -> torch.Tensor:
    """Grad-CAM from a leaf activation and a head written by hand: sum_k mean(dy/dA_k) A_k."""
    leaf = features.detach().requires_grad_(True)
    out = head(leaf)
    (grad,) = torch.autograd.grad(out.gather(1, torch.tensor(classes)[:, None]).sum(), leaf)
    return (grad.mean((2, 3), keepdim=True) * features).sum(1)


@pytest.mark.parametrize("layer", ["features.norm5", "features"])
def test_densenet_inplace_relu_does_not_corrupt_the_capture(layer):
    # DenseNet's forward is relu(features(x), inplace=True): the tapped norm5 output is overwritten in
    # place unless the capture is protected. Reference: the same map with the head written by hand.
    torch.manual_seed(0)
    model, x = torchvision.models.densenet121(num_classes=5).eval(), images(size=32)
    with torch.no_grad():
        features = model.features(x)  # norm5's output, signed

    def head(a):
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(a), 1), 1))

    raw = whycam.GradCAM(model, layer)(x, target=[1, 2], raw=True)
    assert (features < 0).any()
    assert torch.allclose(raw, hand_gradcam(features, head, [1, 2]), atol=1e-6)


def test_raw_map_is_signed_at_feature_resolution():
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), images()
    with torch.no_grad():
        features = model.body(x)
    raw = whycam.GradCAM(model, "body.3")(x, target=[1, 2], raw=True)
    expected = hand_gradcam(features, lambda a: model.fc(a.mean((2, 3))), [1, 2])
    assert raw.shape == (2, 8, 8)
    assert torch.allclose(raw, expected, atol=1e-6)
    assert (raw < 0).any(), "raw maps keep their sign"


def test_several_layers_fuse_and_report_per_layer():
    torch.manual_seed(0)
    model, x = torchvision.models.resnet18(num_classes=5).eval(), images(size=64)
    cam = whycam.GradCAM(model, ["layer3", "layer4"])
    per_layer = cam.per_layer(x, target=[1, 2])
    assert list(per_layer) == ["layer3", "layer4"]
    single = {name: whycam.GradCAM(model, name)(x, target=[1, 2]) for name in per_layer}
    for name, maps in per_layer.items():
        assert torch.allclose(maps, single[name], atol=1e-6)
    raw = cam.per_layer(x, target=[1, 2], raw=True)
    assert raw["layer3"].shape == (2, 4, 4) and raw["layer4"].shape == (2, 2, 2)
    # the fusion rule: normalise each layer's map at input size, average, normalise the mean
    mean = (single["layer3"] + single["layer4"]) / 2
    low = mean.flatten(1).min(1).values[:, None, None]
    fused = (mean - low) / (mean.flatten(1).max(1).values[:, None, None] - low)
    assert torch.allclose(cam(x, target=[1, 2]), fused, atol=1e-6)
    assert torch.allclose(fuse_maps(list(raw.values()), (64, 64)), fused, atol=1e-6)
    with pytest.raises(ValueError, match="per_layer"):
        cam(x, target=[1, 2], raw=True)


def test_registry_offers_the_family():
    registry = whycam.methods()
    for name in FAMILY:
        assert issubclass(registry[name], whycam.CAMExplainer)
        assert registry[name].summary


def test_training_mode_warns():
    model = TinyCNN().train()
    with pytest.warns(UserWarning, match="eval"):
        whycam.GradCAM(model, "body.3")(images(), target=1)
    assert model.training


def test_cam_refuses_a_callable_target_with_the_reason(resnet18, images):
    with pytest.raises(ValueError, match="class index"):
        whycam.CAM(resnet18)(images, target=lambda out: out[:, 0] - out[:, 1])


def test_a_model_in_training_mode_keeps_its_batchnorm_statistics(images):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with pytest.warns(UserWarning, match="training mode"):
        whycam.GradCAM(model)(images, target=1)
    assert model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_a_stopping_tap_ends_the_pass_at_its_layers_and_counts_calls():
    """Tap(stop=True) ends the forward pass once every tapped layer has run: later layers never run,
    the rest of the ``with`` block is skipped quietly, the hooks are gone; a plain tap counts calls."""
    from whycam.taps import Tap

    torch.manual_seed(0)
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Conv2d(4, 4, 3), act, nn.Flatten())
    ran_after = []
    model[2].register_forward_hook(lambda *args: ran_after.append(1))
    x = torch.randn(2, 3, 12, 12)
    with Tap([model[1]], stop=True) as tap:
        model(x)
        ran_after.append("block")
    assert ran_after == [] and torch.equal(tap.captured()[0], torch.relu(model[0](x)))
    assert tap.calls == [1] and not act._forward_hooks
    with Tap([act]) as tap:  # a shared module: the whole pass, the last call kept
        model(x)
    assert tap.calls == [2] and torch.equal(tap.captured()[0], model(x).view(2, 4, 8, 8))
