"""Oracle tests: whycam's gradient and perturbation attributions against Captum 0.9.0.

Same model, input and target; the per-channel attributions (before whycam's channel reduction) are
compared by relative error max|ours - Captum| / max|Captum| < 1e-4. Measured on this machine: 0 for
saliency, input x gradient, guided backprop, Guided Grad-CAM and IG (Gauss-Legendre, left, right,
middle); ~2e-8 for occlusion; ~5e-7 for the noise-tunnel variants (float32 vs our float64 mean).
"""

from __future__ import annotations

import copy
import warnings

import captum.attr as ca
import pytest
import torch
import torchvision
from tiny_model import small_cnn
from torch import nn

import whycam

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

TARGETS = [3, 7]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    ours, theirs = ours.detach(), theirs.detach()
    scale = float(theirs.abs().max())
    assert scale > 0, "the oracle returned an all-zero attribution: the comparison would be empty"
    return float((ours - theirs).abs().max()) / scale


@pytest.fixture(params=["resnet18", "small_cnn"])
def model(request, resnet18):
    return resnet18 if request.param == "resnet18" else small_cnn()


@pytest.fixture
def images32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_saliency_matches_captum(model, images32):
    theirs = ca.Saliency(model).attribute(images32, target=TARGETS, abs=True)
    assert relative_error(whycam.Saliency(model).per_channel(images32, TARGETS), theirs) < 1e-4


def test_input_x_gradient_matches_captum(model, images32):
    theirs = ca.InputXGradient(model).attribute(images32, target=TARGETS)
    assert relative_error(whycam.InputXGradient(model).per_channel(images32, TARGETS), theirs) < 1e-4


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"])
def test_integrated_gradients_matches_captum(model, images32, method):
    # In float64: whycam runs the model channels-last, Captum channels-first, and in float32 the
    # different rounding flips a few ReLU/max-pool decisions along the path (ResNet-18, Gauss-Legendre:
    # 4e-3 relative on an AMD EPYC, 0 with channels_last off); in float64 they agree to 3e-9.
    model, images32 = copy.deepcopy(model).double(), images32.double()
    baseline = torch.full_like(images32, -0.5)
    ours = whycam.IntegratedGradients(model, steps=16, method=method, baseline=baseline, batch_size=7)
    theirs = ca.IntegratedGradients(model).attribute(
        images32, baselines=baseline, target=TARGETS, n_steps=16, method=method
    )
    assert relative_error(ours.per_channel(images32, TARGETS), theirs) < 1e-4


def test_integrated_gradients_trapezoid_follows_the_rule_not_captum(resnet18, images32):
    """Captum's "riemann_trapezoid" uses nodes linspace(0, 1, n) with step 1/n (weights summing to
    (n-1)/n), not the trapezoid rule's 1/(n-1): its attributions are (n-1)/n of the rule's, which
    breaks completeness by 1/n. We follow the rule, so ours * (n-1)/n equals Captum's."""
    steps = 16
    ours = whycam.IntegratedGradients(resnet18, steps=steps, method="riemann_trapezoid").per_channel(images32, TARGETS)
    theirs = ca.IntegratedGradients(resnet18).attribute(
        images32, target=TARGETS, n_steps=steps, method="riemann_trapezoid"
    )
    assert relative_error(ours * (steps - 1) / steps, theirs) < 1e-4
    assert relative_error(ours, theirs) > 0.05


def test_guided_backprop_matches_captum_with_inplace_relus(resnet18, images32):
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in resnet18.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets hooks
        theirs = ca.GuidedBackprop(resnet18).attribute(images32, target=TARGETS)
    assert relative_error(whycam.GuidedBackprop(resnet18).per_channel(images32, TARGETS), theirs) < 1e-4


def test_guided_backprop_matches_captum_small_cnn(images32):
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ca.GuidedBackprop(model).attribute(images32, target=TARGETS)
    assert relative_error(whycam.GuidedBackprop(model).per_channel(images32, TARGETS), theirs) < 1e-4


def test_guided_gradcam_matches_captum(resnet18, images):
    """At 64 px layer3 is 4x4; Captum's interpolation is set to bilinear, as ours (its default is nearest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ca.GuidedGradCam(resnet18, resnet18.layer3).attribute(
            images, target=TARGETS, interpolate_mode="bilinear"
        )
    ours = whycam.GuidedGradCAM(resnet18, "layer3").per_channel(images, TARGETS)
    assert relative_error(ours, theirs) < 1e-4


@pytest.mark.parametrize(("window", "stride"), [(8, 4), (8, 5), (6, 6)])
def test_occlusion_matches_captum(model, images32, window, stride):
    theirs = ca.Occlusion(model).attribute(
        images32,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.25,
        target=TARGETS,
        perturbations_per_eval=16,
    )
    assert torch.equal(theirs[:, 0], theirs[:, 2])  # a window over all channels: one map
    ours = whycam.Occlusion(model, window=window, stride=stride, baseline=0.25, batch_size=13)
    assert relative_error(ours(images32, TARGETS, raw=True), theirs[:, 0]) < 1e-4


@pytest.mark.parametrize(
    ("ours_variant", "captum_variant"),
    [("smoothgrad", "smoothgrad"), ("smoothgrad2", "smoothgrad_sq"), ("vargrad", "vargrad")],
)
def test_smoothgrad_matches_noise_tunnel_with_the_same_noise(model, images32, ours_variant, captum_variant):
    """Identical noise, honestly: Captum draws torch.normal(0, sigma) for the n copies of the image from
    the global generator; ours draws n standard-normal fields from a torch.Generator with the same
    seed, in the same order (sample by sample), times sigma. Same stream, same noise."""
    image = images32[:1]
    noise, samples, seed = 0.2, 8, 11
    sigma = noise * float(image.max() - image.min())
    ours = whycam.SmoothGrad(
        whycam.Saliency(model), noise=noise, samples=samples, batch_size=3, seed=seed, variant=ours_variant
    ).per_channel(image, 3)
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.Saliency(model)).attribute(
        image, nt_type=captum_variant, nt_samples=samples, stdevs=sigma, target=3
    )
    assert relative_error(ours, theirs) < 1e-4


def test_smoothgrad_of_integrated_gradients_matches_noise_tunnel():
    model = small_cnn()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = whycam.SmoothGrad(whycam.IntegratedGradients(model, steps=8), noise=0.1, samples=4, seed=2)
    torch.manual_seed(2)
    theirs = ca.NoiseTunnel(ca.IntegratedGradients(model)).attribute(
        image, nt_type="smoothgrad", nt_samples=4, stdevs=0.1 * float(image.max() - image.min()), target=5, n_steps=8
    )
    assert relative_error(ours.per_channel(image, 5), theirs) < 1e-4


def test_saliency_matches_captum_on_densenet():
    """A second real architecture: DenseNet's concatenations and functional, in-place ReLU."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=5).eval()
    image = torch.randn(1, 3, 32, 32)
    theirs = ca.Saliency(model).attribute(image, target=2)
    assert relative_error(whycam.Saliency(model).per_channel(image, 2), theirs) < 1e-4
