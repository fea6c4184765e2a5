"""Evidence against (``sign=``) on every CAM method, the stride each explainer records, and the
diverging colour map of signed maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import whycam
from whycam.methods.base import CAMExplainer, normalize_maps, normalize_signed
from whycam.viz import overlay

CLASSES = [3, 7]
NON_NEGATIVE = ("gradcam++", "layercam", "scorecam")


def cam_methods():
    return [name for name, cls in whycam.methods().items() if issubclass(cls, CAMExplainer)]


def test_negative_gradcam_is_the_gradcam_of_the_negated_score(resnet18, images):
    """Grad-CAM is linear in the score: the evidence against y_c is the evidence for -y_c."""
    classes = torch.tensor(CLASSES)[:, None]
    against = whycam.GradCAM(resnet18, "layer3", sign="negative")(images, CLASSES)
    negated = whycam.GradCAM(resnet18, "layer3")(images, lambda out: -out.gather(1, classes)[:, 0])
    assert torch.allclose(against, negated, atol=1e-6)
    assert (against - whycam.GradCAM(resnet18, "layer3")(images, CLASSES)).abs().max() > 0.1


def test_both_is_the_signed_map_divided_by_its_largest_magnitude(resnet18, images):
    raw = whycam.GradCAM(resnet18, "layer3")(images, CLASSES, raw=True)
    both = whycam.GradCAM(resnet18, "layer3", sign="both")(images, CLASSES)
    upsampled = F.interpolate(raw[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    expected = upsampled / upsampled.flatten(1).abs().amax(1)[:, None, None]
    assert torch.allclose(both, expected, atol=1e-6)
    assert (both.flatten(1).abs().amax(1) == 1).all() and (both < 0).any() and (both > 0).any()
    assert torch.equal(torch.sign(both), torch.sign(upsampled))


@pytest.mark.parametrize("name", cam_methods())
def test_every_cam_method_offers_evidence_for_and_against(name, resnet18, images):
    cls = whycam.methods()[name]
    target = [1, 2] if cls.needs_target else None
    references = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    light = {"scorecam": {"batch_size": 256}, "ablationcam": {"batch_size": 256}}.get(name, {})
    layer = "layer2" if name == "scorecam" else "layer4"  # one forward pass per channel: the narrow layer

    def run(sign):
        explainer = cls(resnet18, layer, sign=sign, **light)
        if callable(getattr(explainer, "fit", None)):
            explainer.fit(references)
        return explainer(images, target)

    raw = cls(resnet18, layer, **light).fit(references) if name == "diffcam" else cls(resnet18, layer, **light)
    raw = raw(images, target, raw=True)
    positive, negative, both = run("positive"), run("negative"), run("both")
    assert torch.allclose(positive, normalize_maps(raw, (64, 64)))
    assert torch.allclose(negative, normalize_maps(-raw, (64, 64)))
    assert torch.allclose(both, normalize_signed(raw, (64, 64)))
    if name in NON_NEGATIVE:  # non-negative weights on post-ReLU activations: nothing against
        assert raw.min() >= 0 and negative.abs().max() == 0
    else:
        assert (raw < 0).any(), "the check needs a map with evidence against"


def test_sign_is_checked_and_smoothgrad_keeps_it(resnet18, images):
    with pytest.raises(ValueError, match="negative"):
        whycam.GradCAM(resnet18, sign="against")
    smooth = whycam.SmoothGrad(whycam.GradCAM(resnet18, "layer3", sign="both"), samples=2)
    assert smooth(images, 1).min() < 0


def test_stride_is_the_input_pixels_per_map_cell(resnet18, images):
    explainer = whycam.GradCAM(resnet18, "layer3")
    assert explainer.stride_ is None
    explainer(images, 3)
    assert explainer.stride_ == (16.0, 16.0)
    fused = whycam.GradCAM(resnet18, ["layer3", "layer4"])
    fused(images, 3)
    assert fused.stride_ == (32.0, 32.0)  # the coarsest layer limits what can be localised
    saliency = whycam.Saliency(resnet18)
    saliency(images, 3)
    assert saliency.stride_ == (1.0, 1.0)
    wide = torch.randn(1, 3, 64, 96)
    explainer(wide, 3)
    assert explainer.stride_ == (16.0, 16.0) and explainer(wide, 3, raw=True).shape == (1, 4, 6)


def test_signed_overlays_use_the_diverging_colour_map():
    image = np.zeros((3, 3, 3), np.float32)
    saliency = np.array([[-1.0, 0.0, 1.0]] * 3, np.float32)
    blended = overlay(image, saliency, alpha=1.0, signed=True)
    blue, white, red = blended[0, 0], blended[0, 1], blended[0, 2]
    assert blue[2] > blue[0] and red[0] > red[2] and white.min() > 200
    assert not np.array_equal(overlay(image, saliency.clip(0, 1), alpha=1.0), blended)
