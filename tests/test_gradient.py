"""Gradient methods: channel reductions, Integrated Gradients' quadrature and completeness, guided
backpropagation's hooks, SmoothGrad around any explainer, and the model left exactly as it was."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whycam
from whycam.methods.base import _REGISTRY, register
from whycam.methods.gradient import PixelExplainer, quadrature

HOOK_TABLES = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def model_state(model: nn.Module) -> dict:
    """Everything an explainer could leave changed: modes, flags, hooks, gradients, values."""
    return {
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "hooks": [len(getattr(m, t, {})) for m in model.modules() for t in HOOK_TABLES],
        "grads": [p.grad is None for p in model.parameters()],
        "values": [t.clone() for t in model.state_dict().values()],
        "full_backward": [m._is_full_backward_hook for m in model.modules()],
        "grad_mode": torch.is_grad_enabled(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in before:
        if key == "values":
            assert all(torch.equal(a, b) for a, b in zip(before[key], after[key])), "parameter values changed"
        else:
            assert before[key] == after[key], f"{key} changed"


class FunctionalReLUNet(nn.Module):
    """A model that calls relu as a function, as torchvision's DenseNet and many timm models do."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def tiny_net(inplace: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


GRADIENT_METHODS = {
    "saliency": lambda m: whycam.Saliency(m),
    "inputxgradient": lambda m: whycam.InputXGradient(m),
    "integratedgradients": lambda m: whycam.IntegratedGradients(m, steps=4, baseline="blur"),
    "guidedbackprop": lambda m: whycam.GuidedBackprop(m),
    "guidedgradcam": lambda m: whycam.GuidedGradCAM(m),
    "smoothgrad": lambda m: whycam.SmoothGrad(m, samples=3),
    "smoothgrad-gradcam": lambda m: whycam.SmoothGrad(whycam.GradCAM(m), samples=3, variant="vargrad"),
}


# --- channel reductions ----------------------------------------------------------------------------


def test_saliency_is_the_max_over_channels_of_the_absolute_gradient(resnet18, images):
    saliency = whycam.Saliency(resnet18)
    per_channel = saliency.per_channel(images, [1, 2])
    assert (per_channel >= 0).all()
    assert torch.equal(saliency(images, [1, 2], raw=True), per_channel.amax(1))


@pytest.mark.parametrize("reduce", ["sum", "max_abs", "sum_abs", "l2"])
def test_every_reduction_is_offered(resnet18, images, reduce):
    method = whycam.InputXGradient(resnet18, reduce=reduce)
    per_channel = method.per_channel(images, 1)
    expected = {
        "sum": per_channel.sum(1),
        "max_abs": per_channel.abs().amax(1),
        "sum_abs": per_channel.abs().sum(1),
        "l2": per_channel.norm(dim=1),
    }[reduce]
    assert torch.allclose(method(images, 1, raw=True), expected)


def test_unknown_reduction_names_the_choices(resnet18):
    with pytest.raises(ValueError, match="max_abs"):
        whycam.Saliency(resnet18, reduce="mean")


def test_input_x_gradient_is_input_times_saliency_sign(resnet18, images):
    gradient = whycam.Saliency(resnet18).per_channel(images, 4)
    assert torch.allclose(whycam.InputXGradient(resnet18).per_channel(images, 4).abs(), images.abs() * gradient)


def test_gradient_methods_work_under_no_grad_and_leave_parameter_gradients_alone(resnet18, images):
    for name, build in GRADIENT_METHODS.items():
        with torch.no_grad():
            maps = build(resnet18)(images, [1, 2])
        assert maps.shape == (2, 64, 64) and maps.max() == 1, name
        assert all(p.grad is None for p in resnet18.parameters()), name


# --- Integrated Gradients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_quadrature_weights_sum_to_one_and_nodes_lie_in_the_unit_interval(method):
    alphas, weights = quadrature(method, 10)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert alphas.min() >= 0 and alphas.max() <= 1


def test_quadrature_integrates_what_each_rule_integrates_exactly():
    alphas, weights = quadrature("gausslegendre", 5)  # exact up to degree 9
    assert torch.isclose((weights * alphas**9).sum(), torch.tensor(0.1, dtype=torch.float64))
    alphas, weights = quadrature("riemann_trapezoid", 7)  # exact for linear functions
    assert torch.isclose((weights * (3 * alphas + 1)).sum(), torch.tensor(2.5, dtype=torch.float64))
    alphas, weights = quadrature("riemann_middle", 7)
    assert torch.isclose((weights * (3 * alphas + 1)).sum(), torch.tensor(2.5, dtype=torch.float64))


def test_unknown_quadrature_names_the_choices(resnet18):
    with pytest.raises(ValueError, match="gausslegendre"):
        whycam.IntegratedGradients(resnet18, method="simpson")


@pytest.mark.parametrize("baseline", ["black", "blur", "uniform"])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_completeness_within_one_percent_at_64_steps(resnet18, images, baseline, method):
    """|sum(a) - (y(x) - y(x'))| <= 1% of |y(x) - y(x')|, for the class whose score the path changes most
    (the relative error is ill-conditioned for a class whose score hardly changes). Measured here:
    3e-7 (Gauss-Legendre, black), 0.1% to 0.8% for the others (ReLU kinks along the path), one 64 px image."""
    images = images[:1]
    ig = whycam.IntegratedGradients(resnet18, steps=64, method=method, baseline=baseline, batch_size=64)
    with torch.no_grad():
        target = (resnet18(images) - resnet18(ig.baselines(images))).abs().argmax(1)
    check = ig.completeness(images, target)
    assert check.attributions.shape == images.shape
    assert torch.allclose(check.total, check.attributions.flatten(1).sum(1))
    assert (check.delta.abs() <= 0.01 * check.difference.abs()).all(), (check.total, check.difference)


def test_integrated_gradients_does_not_depend_on_the_batch_size(resnet18, images):
    one = whycam.IntegratedGradients(resnet18, steps=6, batch_size=1).per_channel(images, [0, 3])
    all_ = whycam.IntegratedGradients(resnet18, steps=6, batch_size=100).per_channel(images, [0, 3])
    assert torch.allclose(one, all_, atol=1e-6 * float(all_.abs().max()))


def test_integrated_gradients_target_none_is_the_predicted_class(resnet18, images):
    predicted = resnet18(images).argmax(1)
    ig = whycam.IntegratedGradients(resnet18, steps=4)
    assert torch.equal(ig.per_channel(images), ig.per_channel(images, predicted))


def test_integrated_gradients_baselines(resnet18, images):
    ig = whycam.IntegratedGradients(resnet18, baseline="uniform", seed=3)
    assert torch.equal(ig.baselines(images), ig.baselines(images))
    low, high = images.amin((1, 2, 3)), images.amax((1, 2, 3))
    uniform = ig.baselines(images)
    assert (uniform.amin((1, 2, 3)) >= low).all() and (uniform.amax((1, 2, 3)) <= high).all()
    blurred = whycam.IntegratedGradients(resnet18, baseline="blur").baselines(images)
    assert blurred.std() < images.std()
    given = torch.linspace(-1, 1, 3).view(1, 3, 1, 1)
    assert torch.equal(
        whycam.IntegratedGradients(resnet18, baseline=given).baselines(images)[1, :, 5, 5], given.flatten()
    )
    with pytest.raises(ValueError, match="does not broadcast"):
        whycam.IntegratedGradients(resnet18, baseline=torch.zeros(5, 5)).baselines(images)
    with pytest.raises(ValueError, match="black"):
        whycam.IntegratedGradients(resnet18, baseline="grey").baselines(images)


# --- guided backpropagation ------------------------------------------------------------------------


def test_guided_backprop_is_the_same_with_inplace_relus():
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    inplace = whycam.GuidedBackprop(tiny_net(inplace=True)).per_channel(image, 2)
    plain = whycam.GuidedBackprop(tiny_net(inplace=False)).per_channel(image, 2)
    assert torch.equal(inplace, plain)
    assert not torch.equal(plain, whycam.Saliency(tiny_net(False)).per_channel(image, 2))


def test_guided_backprop_stops_negative_gradients_at_each_relu():
    """One hidden ReLU layer: GB = W1^T (ReLU(W2^T e_c) * 1[h > 0]), by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 3, 2, 2)
    hidden = model[1](x.flatten(1))
    expected = ((model[3].weight[1].clamp(min=0) * (hidden[0] > 0)) @ model[1].weight).view(1, 3, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(whycam.GuidedBackprop(model).per_channel(x, 1), expected.detach(), atol=1e-6)


def test_guided_backprop_leaves_no_modified_backward_behind(resnet18, images):
    before = whycam.Saliency(resnet18).per_channel(images, 3)
    whycam.GuidedBackprop(resnet18)(images, 3)
    with pytest.raises(ValueError, match="score per image"):
        whycam.GuidedBackprop(resnet18)(images, lambda out: out)  # raises with the hooks in place
    assert torch.equal(whycam.Saliency(resnet18).per_channel(images, 3), before)


def test_guided_backprop_names_the_functional_relus_it_cannot_guide():
    with pytest.warns(UserWarning, match=r"1 ReLU call\(s\) made as functions.*test_gradient.py:\d+ in forward"):
        whycam.GuidedBackprop(FunctionalReLUNet().eval())(torch.randn(1, 3, 8, 8), 0)


def test_guided_backprop_warns_about_other_activations_and_stays_silent_otherwise():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    with pytest.warns(UserWarning, match="SiLU"):
        whycam.GuidedBackprop(model)(torch.randn(1, 3, 8, 8), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whycam.GuidedBackprop(tiny_net())(torch.randn(1, 3, 8, 8), 0)


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_gradcam(resnet18, images):
    cam = whycam.GradCAM(resnet18, "layer3")(images, 5, raw=True).clamp(min=0)
    cam = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    expected = whycam.GuidedBackprop(resnet18).per_channel(images, 5) * cam
    assert torch.allclose(whycam.GuidedGradCAM(resnet18, "layer3").per_channel(images, 5), expected)


# --- SmoothGrad ------------------------------------------------------------------------------------


def test_smoothgrad_built_from_a_model_smooths_saliency(resnet18, images):
    smooth = whycam.SmoothGrad(resnet18, samples=4, seed=1)
    assert isinstance(smooth.explainer, whycam.Saliency) and smooth.reduce == "max_abs"
    wrapped = whycam.SmoothGrad(whycam.Saliency(resnet18), samples=4, seed=1)
    assert torch.equal(smooth(images, 2), wrapped(images, 2))


def test_smoothgrad_same_seed_same_map_other_seed_other_map(resnet18, images):
    first = whycam.SmoothGrad(resnet18, samples=4, seed=7)(images, 1)
    assert torch.equal(first, whycam.SmoothGrad(resnet18, samples=4, seed=7, batch_size=3)(images, 1))
    assert not torch.equal(first, whycam.SmoothGrad(resnet18, samples=4, seed=8)(images, 1))


def test_smoothgrad_map_of_an_image_does_not_depend_on_its_batch(resnet18, images):
    """The noise fields are shared by every image, so explaining an image alone, or second in a batch
    beside another image, gives the same map."""
    smooth = whycam.SmoothGrad(resnet18, samples=4, seed=3, batch_size=3)
    together = smooth(images, [1, 2])
    alone = torch.cat([smooth(images[i : i + 1], [t]) for i, t in enumerate([1, 2])])
    assert torch.allclose(together, alone, atol=1e-6)


def test_smoothgrad_without_noise_is_the_wrapped_explainer(resnet18, images):
    for inner in (whycam.InputXGradient(resnet18), whycam.GradCAM(resnet18)):
        smooth = whycam.SmoothGrad(inner, noise=0.0, samples=2)
        assert torch.allclose(smooth(images, [1, 2], raw=True), inner(images, [1, 2], raw=True), atol=1e-6)


def test_smoothgrad_wraps_cam_methods_at_feature_resolution(resnet18, images):
    for variant in whycam.SmoothGrad.variants:
        smooth = whycam.SmoothGrad(whycam.GradCAM(resnet18), samples=3, variant=variant)
        assert smooth(images, raw=True).shape == (2, 2, 2)
        assert smooth(images).shape == (2, 64, 64)
    with pytest.raises(TypeError, match="per-channel"):
        whycam.SmoothGrad(whycam.GradCAM(resnet18)).per_channel(images)


def test_smoothgrad_variants_relate_as_mean_square_and_variance(resnet18, images):
    def run(variant):
        return whycam.SmoothGrad(whycam.InputXGradient(resnet18), samples=5, seed=2, variant=variant).per_channel(
            images, 0
        )

    mean, square, variance = run("smoothgrad"), run("smoothgrad2"), run("vargrad")
    assert torch.allclose(variance, square - mean**2, atol=1e-6 * float(square.max()))
    assert (variance >= -1e-6 * float(square.max())).all()


def test_smoothgrad_pins_a_missing_target_to_the_clean_prediction(resnet18, images):
    predicted = resnet18(images).argmax(1)
    smooth = whycam.SmoothGrad(resnet18, noise=0.5, samples=3)
    assert torch.equal(smooth(images), smooth(images, predicted))


def test_smoothgrad_refuses_bad_options(resnet18):
    with pytest.raises(ValueError, match="variant"):
        whycam.SmoothGrad(resnet18, variant="smoothgrad3")
    with pytest.raises(ValueError, match="fraction"):
        whycam.SmoothGrad(resnet18, noise=-1)
    with pytest.raises(ValueError, match="samples"):
        whycam.SmoothGrad(resnet18, samples=0)


# --- the model comes back as it was ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_model_unchanged_after_a_call_and_after_a_failing_call(resnet18, images, name):
    resnet18.fc.train()  # a mixed state must come back mixed (no BatchNorm in train mode:
    resnet18.layer4[1].relu.train()  # its running statistics would move in any forward pass)
    resnet18.layer1[0].conv1.weight.requires_grad_(False)
    try:
        before = model_state(resnet18)
        method = GRADIENT_METHODS[name](resnet18)
        method(images, [1, 2])
        assert_same_state(before, model_state(resnet18))

        def failing(output):
            raise RuntimeError("target failed mid-call")

        with pytest.raises(RuntimeError, match="mid-call"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            method(images, failing)
        assert_same_state(before, model_state(resnet18))
    finally:
        resnet18.eval()
        resnet18.layer1[0].conv1.weight.requires_grad_(True)


def test_every_pixel_method_is_registered():
    registry = whycam.methods()
    for name in ("saliency", "inputxgradient", "smoothgrad", "integratedgradients", "guidedbackprop", "guidedgradcam"):
        assert issubclass(registry[name], PixelExplainer) and registry[name].name == name


def test_register_offers_a_class_once_under_its_name():
    """``register`` runs at import for every method; here it runs again where a test can watch it."""

    class Probe(PixelExplainer):
        name = "probe-registration"

    class Twin(PixelExplainer):
        name = "probe-registration"

    try:
        assert register(Probe) is Probe and whycam.methods()["probe-registration"] is Probe
        assert register(Probe) is Probe  # the same class again is no clash
        with pytest.raises(ValueError, match="two explainers"):
            register(Twin)
    finally:
        _REGISTRY.pop("probe-registration", None)
