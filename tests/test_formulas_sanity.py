"""The sanity check's numbers, recomputed independently: the model parameter randomisation test
(Adebayo et al., NeurIPS 2018) done by hand (each layer re-initialised by its own ``reset_parameters``
under ``torch.manual_seed(seed)``, maps compared with scipy's Spearman and scikit-image's SSIM) and by
Quantus' MPRT; the reported score and the pass/fail verdict derived from those curves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import quantus
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

import whycam
from whycam import metrics

SEED = 42


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def signed_gradcam(model: nn.Module):
    """Grad-CAM's signed map on the second convolution, upsampled to the image (never all zero)."""
    cam = whycam.GradCAM(model, layer="2")
    return lambda x, target: F.interpolate(
        cam(x, target, raw=True)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]


@pytest.fixture(scope="module")
def setting():
    model = small_cnn()
    images = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, 2, 3])
    return model, images, targets


def layer_names(model: nn.Module) -> list[str]:
    """Modules with parameters, output first."""
    return [name for name, module in model.named_modules() if hasattr(module, "reset_parameters")][::-1]


def by_hand(model, images, targets, mode: str) -> dict[str, np.ndarray]:
    """Curves (B, layers) of the randomisation test computed from its definition."""
    original = signed_gradcam(copy.deepcopy(model))(images, targets).detach().numpy()
    randomised = copy.deepcopy(model)
    curves = {"spearman": [], "spearman_abs": [], "ssim": []}
    for name in layer_names(model):
        if mode == "independent":
            randomised = copy.deepcopy(model)
        torch.manual_seed(SEED)
        dict(randomised.named_modules())[name].reset_parameters()
        maps = signed_gradcam(randomised)(images, targets).detach().numpy()
        curves["spearman"].append([spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(original, maps)])
        curves["spearman_abs"].append(
            [spearmanr(np.abs(a).ravel(), np.abs(b).ravel())[0] for a, b in zip(original, maps)]
        )
        curves["ssim"].append([structural_similarity(a, b, data_range=1.0) for a, b in zip(original, maps)])
    return {key: np.array(value).T for key, value in curves.items()}


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_curves_score_and_verdict_match_the_definition(setting, mode):
    model, images, targets = setting
    expected = by_hand(model, images, targets, mode)
    result = metrics.sanity_check(signed_gradcam, model, images, targets, seed=SEED, modes=[mode])[mode]
    assert result.settings["layers"] == layer_names(model)
    for key, curve in expected.items():
        np.testing.assert_allclose(result.curves[key].numpy(), curve, atol=1e-5, err_msg=key)
    # the score: the last step's Spearman for cascading, the mean over layers for independent
    score = expected["spearman"][:, -1] if mode == "cascading" else expected["spearman"].mean(1)
    np.testing.assert_allclose(result.scores.numpy(), score, atol=1e-5)
    assert result.value == pytest.approx(score.mean(), abs=1e-5)
    assert not result.higher_is_better


def test_independent_mode_matches_quantus(setting):
    # Quantus re-seeds every layer with seed + 1, restores the original weights before each layer and
    # goes from the input up (the order does not matter when each layer is randomised alone).
    model, images, targets = setting

    def explain(model, inputs, targets, **kwargs):
        return signed_gradcam(model)(torch.as_tensor(inputs), torch.as_tensor(targets))[:, None].detach().numpy()

    peer = quantus.MPRT(layer_order="independent", seed=SEED - 1, abs=False, normalise=False, disable_warnings=True)
    scores = peer(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=None, explain_func=explain, batch_size=3
    )
    result = metrics.sanity_check(signed_gradcam, model, images, targets, seed=SEED, modes=["independent"])
    ours = result["independent"]
    assert sorted(ours.settings["layers"]) == sorted(name for name in scores if name != "original")
    curve = np.array([scores[name] for name in ours.settings["layers"]]).T
    np.testing.assert_allclose(ours.curves["spearman"].numpy(), curve, atol=1e-5)
    np.testing.assert_allclose(ours.scores.numpy(), curve.mean(1), atol=1e-5)


def test_a_model_dependent_map_passes_and_the_verdict_follows_the_threshold(setting):
    model, images, targets = setting
    expected = by_hand(model, images, targets, "cascading")["spearman"][:, -1].mean()
    assert expected < 0.5  # Grad-CAM of a fully random network keeps little of the original order
    result = metrics.sanity_check(signed_gradcam, model, images, targets, seed=SEED, modes=["cascading"])
    assert result["cascading"].settings["passed"] is True
    for threshold, verdict in ((expected + 0.01, True), (expected - 0.01, False)):
        strict = metrics.sanity_check(
            signed_gradcam, model, images, targets, seed=SEED, threshold=threshold, modes=["cascading"]
        )
        assert strict["cascading"].settings["passed"] is verdict, threshold


def test_a_model_independent_map_fails(setting):
    model, images, targets = setting
    result = metrics.sanity_check(lambda m: lambda x, t: x.mean(1), model, images, targets, modes=["cascading"])
    assert result["cascading"].value == pytest.approx(1.0)
    assert result["cascading"].settings["passed"] is False


class Gain(nn.Module):
    """A per-channel gain and a scalar offset: parameters without ``reset_parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
        self.offset = nn.Parameter(torch.tensor(0.25))

    def forward(self, x):
        return (x * self.weight).sum(1, keepdim=True) + self.offset


def test_a_module_without_reset_parameters_is_redrawn_at_its_own_scale(setting):
    """A parameter of a module without ``reset_parameters`` becomes N(0, 1) draws under
    ``torch.manual_seed(seed)`` times its own standard deviation (1 for a single value), drawn in
    registration order; the caller's random stream is left where it was."""
    _, images, targets = setting
    model = nn.Sequential(Gain(), nn.Flatten(), nn.LazyLinear(4)).eval()
    model(images)

    def gain_map(m):
        return lambda x, target: (x * m[0].weight).sum(1) + m[0].offset

    torch.manual_seed(SEED)
    weight = torch.randn(1, 3, 1, 1) * torch.tensor([1.0, -2.0, 0.5]).std()
    offset = torch.randn(()) * 1.0
    original = (images * torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)).sum(1) + 0.25
    redrawn = (images * weight).sum(1) + offset
    torch.manual_seed(7)
    expected_stream = torch.rand(3)
    torch.manual_seed(7)
    result = metrics.sanity_check(gain_map, model, images, targets, layers=["0"], seed=SEED, modes=["cascading"])
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected_stream.numpy())
    curves = result["cascading"].curves
    for b, (a, r) in enumerate(zip(original.numpy(), redrawn.numpy())):
        assert float(curves["spearman"][b, 0]) == pytest.approx(spearmanr(a.ravel(), r.ravel())[0], abs=1e-5)
        assert float(curves["ssim"][b, 0]) == pytest.approx(structural_similarity(a, r, data_range=1.0), abs=1e-5)


@pytest.mark.parametrize(("size", "with_hog"), [(15, False), (16, True)])
def test_hog_is_compared_from_16_pixels_on_each_side(size, with_hog):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 2, size, size + 4, generator=generator)
    assert ("hog" in metrics.sanity.similarities(a, b)) is with_hog
