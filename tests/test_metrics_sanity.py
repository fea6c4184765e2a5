"""Sanity checks: Spearman (scipy), SSIM (scikit-image), MPRT (Quantus) oracles; the caller's model
untouched; pass for a model-dependent map, fail for a model-independent one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import whycam
from whycam import metrics
from whycam.metrics.sanity import hog, parameter_layers


def test_spearman_equals_scipy_with_ties():
    from scipy.stats import spearmanr

    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (3, 50), generator=generator).float()
    b = torch.randint(0, 6, (3, 50), generator=generator).float()
    expected = [spearmanr(x.numpy(), y.numpy())[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(metrics.spearman(a, b).numpy(), expected, atol=1e-10)
    assert metrics.spearman(a, torch.zeros(3, 50)).eq(0).all()  # a constant map keeps no order


@pytest.mark.parametrize("gaussian", [False, True])
def test_ssim_equals_scikit_image(gaussian):
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(1)
    a = torch.rand(2, 30, 40, generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(2, 30, 40, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = metrics.ssim(a, b, gaussian_weights=gaussian)
    expected = [
        structural_similarity(x.numpy(), y.numpy(), data_range=1.0, gaussian_weights=gaussian)
        for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10)


def test_hog_correlation_separates_structure():
    generator = torch.Generator().manual_seed(2)
    edges = torch.zeros(1, 32, 32)
    edges[0, :, 16:] = 1
    rotated = edges.transpose(1, 2)
    assert torch.allclose(hog(edges), hog(edges.clone()))
    from whycam.metrics.sanity import pearson

    assert pearson(hog(edges), hog(edges + 0.01 * torch.rand(1, 32, 32, generator=generator))) > 0.9
    assert pearson(hog(edges), hog(rotated)) < 0.5


def _gradcam(model):
    return whycam.GradCAM(model, layer="layer3")


def _signed_gradcam(model):
    """Grad-CAM's signed map upsampled: Quantus refuses all-zero maps, which ReLU-ed maps of a
    randomised model can be."""
    cam = whycam.GradCAM(model, layer="layer3")
    return lambda x, target: F.interpolate(
        cam(x, target, raw=True)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]


def test_mprt_agrees_with_quantus():
    import quantus

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = model(images).argmax(1)

    def explain(model, inputs, targets, **kwargs):
        return _signed_gradcam(model)(torch.as_tensor(inputs), torch.as_tensor(targets))[:, None].numpy()

    peer = quantus.MPRT(layer_order="top_down", seed=41, abs=False, normalise=False, disable_warnings=True)
    scores = peer(
        model=model, x_batch=images.numpy(), y_batch=labels.numpy(), a_batch=None, explain_func=explain, batch_size=2
    )
    ours = metrics.sanity_check(_signed_gradcam, model, images, labels, seed=42, modes=["cascading"])
    layers = ours["cascading"].settings["layers"]
    assert layers == [name for name in scores if name != "original"]
    peer_curve = np.array([scores[name] for name in layers]).T  # Quantus seeds every layer with seed + 1
    np.testing.assert_allclose(ours["cascading"].curves["spearman"].numpy(), peer_curve, atol=1e-5)


def test_caller_model_untouched_and_verdicts(resnet18, images):
    state = {k: v.clone() for k, v in resnet18.state_dict().items()}
    flags = [p.requires_grad for p in resnet18.parameters()]
    result = metrics.sanity_check(_gradcam, resnet18, images, layers=parameter_layers(resnet18)[:3])
    assert all(torch.equal(state[k], v) for k, v in resnet18.state_dict().items())
    assert flags == [p.requires_grad for p in resnet18.parameters()] and not resnet18.training
    cascading, independent = result["cascading"], result["independent"]
    assert cascading.curves["spearman"].shape == (2, 3)
    assert set(cascading.curves) == {"spearman", "spearman_abs", "ssim", "hog"}
    assert independent.curves["ssim"].shape == (2, 3)

    def intensity(model):  # ignores the model: the map is the image's own intensity
        return lambda x, target: x.abs().mean(1)

    blind = metrics.sanity_check(intensity, resnet18, images, layers=parameter_layers(resnet18)[:3])
    assert not blind["cascading"].settings["passed"]
    assert blind["cascading"].value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no module named"):
        metrics.sanity_check(_gradcam, resnet18, images, layers=["nope"])
