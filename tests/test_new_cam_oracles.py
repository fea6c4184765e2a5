"""Oracle tests of FinerCAM, ShapleyCAM and KPCA-CAM against pytorch-grad-cam 1.5.7, on CNNs and a
ViT (the cases of test_cam_oracles): normalised maps agree within 1e-4 (max abs).

Measured on this machine (max abs difference of the normalised maps): FinerCAM 5e-7 (ResNet-18),
3e-7 (ViT); against given classes (versus, one or two) 8e-6 (ResNet-18), 5e-7 (ViT), and with one
given class equal to Grad-CAM of y_c - y_v; ShapleyCAM 1.4e-6 (ResNet-18, logit and softmax scores;
with the logit it equals Grad-CAM there, H A = 0), ViT below 1e-4 with a non-zero Hessian term;
KPCA-CAM 4e-7 (ResNet-18), raw maps 2e-6 relative (ViT, up to the eigenvector's sign).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import KPCA_CAM, ShapleyCAM
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FinerWeightedTarget,
)
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel
from test_cam_oracles import CLASSES, TOLERANCE, case, grad_cam_oracle, renormalise
from torch.nn.attention import SDPBackend, sdpa_kernel

import whycam
from whycam.targets import Versus


def largest_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    assert float(theirs.amax()) > 0, "the oracle's map is all zero: the comparison would be empty"
    return float((ours - theirs).abs().max())


# --- FinerCAM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["resnet18", "vit"])
def test_finercam_matches_pytorch_grad_cam(model_name):
    model, layer, images, reshape = case(model_name)
    with FinerCAM(model, [dict(model.named_modules())[layer]], reshape) as cam:
        theirs = renormalise(cam(images))  # the predicted class against the three next ones, alpha = 1
    maps = whycam.FinerCAM(model, layer)(images)
    assert largest_difference(maps, theirs) < TOLERANCE
    assert (maps - whycam.GradCAM(model, layer)(images)).abs().max() > 0.01, "FinerCAM must differ from Grad-CAM"


def test_finercam_of_another_class_and_alpha_matches_pytorch_grad_cam():
    model, layer, images, reshape = case("resnet18")
    with FinerCAM(model, [dict(model.named_modules())[layer]], reshape) as cam:
        theirs = renormalise(cam(images, target_idx=5, alpha=0.6, comparison_categories=[1, 2]))
    maps = whycam.FinerCAM(model, layer, alpha=0.6, ranks=(1, 2))(images, 5)
    assert largest_difference(maps, theirs) < TOLERANCE


def finer_oracle(model, layer, images, reshape, versus) -> torch.Tensor:
    """pytorch-grad-cam's FinerCAM with the comparison classes given: each image's CLASSES entry
    against ``versus``, alpha = 1 (its ``FinerWeightedTarget``)."""
    targets = [FinerWeightedTarget(c, list(versus), 1.0) for c in CLASSES]
    with FinerCAM(model, [dict(model.named_modules())[layer]], reshape) as cam:
        return renormalise(cam(images, targets=targets))


@pytest.mark.parametrize("model_name", ["resnet18", "vit"])
def test_finercam_why_not_matches_pytorch_grad_cam(model_name):
    """ "Why c, not 5": the comparison set {5}, as versus=5 or the target Versus(c, 5). With one compared
    class p_5 cancels and the score is y_c - y_5, so Grad-CAM of Versus(c, 5) gives the same map."""
    model, layer, images, reshape = case(model_name)
    theirs = finer_oracle(model, layer, images, reshape, [5])
    maps = whycam.FinerCAM(model, layer, versus=5)(images, CLASSES)
    assert largest_difference(maps, theirs) < TOLERANCE
    first = whycam.FinerCAM(model, layer)(images[:1], Versus(CLASSES[0], 5))
    assert largest_difference(first, theirs[:1]) < TOLERANCE
    assert largest_difference(whycam.GradCAM(model, layer)(images[:1], Versus(CLASSES[0], 5)), first) < TOLERANCE
    assert (maps - whycam.FinerCAM(model, layer)(images, CLASSES)).abs().max() > 0.01, "versus must matter"


def test_finercam_against_two_given_classes_matches_pytorch_grad_cam():
    """Two compared classes: their probabilities weight the differences (no longer a plain difference)."""
    model, layer, images, reshape = case("resnet18")
    theirs = finer_oracle(model, layer, images, reshape, [5, 8])
    maps = whycam.FinerCAM(model, layer, versus=(5, 8))(images, CLASSES)
    assert largest_difference(maps, theirs) < TOLERANCE
    assert (maps - finer_oracle(model, layer, images, reshape, [5])).abs().max() > 0.01


def test_finercam_versus_is_refused_where_it_cannot_mean_anything():
    model, layer, images, _ = case("resnet18")
    with pytest.raises(ValueError, match="not both"):
        whycam.FinerCAM(model, layer, ranks=(1,), versus=5)
    with pytest.raises(ValueError, match="one of the compared classes"):
        whycam.FinerCAM(model, layer, versus=3)(images, CLASSES)
    with pytest.raises(ValueError, match="already names the compared class"):
        whycam.FinerCAM(model, layer, versus=4)(images, Versus(3, 5))
    with pytest.raises(ValueError, match="10 classes"):
        whycam.FinerCAM(model, layer, versus=12)(images, CLASSES)
    with pytest.raises(TypeError, match="Versus"):
        whycam.FinerCAM(model, layer)(images, lambda output: output[:, 3] - output[:, 5])


def test_finer_target_is_the_weighted_difference_by_hand():
    output = torch.tensor([[2.0, 5.0, 4.5, -1.0, 4.0, 3.0]], requires_grad=True)
    target = whycam.FinerTarget(alpha=0.5)  # predicted class 1; most similar: 2 (4.5), 4 (4.0), 3 is 3.0 -> 5
    classes, others = target.comparisons(output)
    assert classes.tolist() == [1] and others.tolist() == [[2, 4, 5]]
    p = output.detach().softmax(1)[0, [2, 4, 5]]
    expected = (p * (5.0 - 0.5 * torch.tensor([4.5, 4.0, 3.0]))).sum() / p.sum()
    assert torch.allclose(target(output), expected[None])


def test_finer_target_serves_any_cam():
    model, layer, images, _ = case("resnet18")
    maps = whycam.LayerCAM(model, layer)(images, whycam.FinerTarget(CLASSES))
    assert maps.shape == images.shape[:1] + images.shape[2:] and maps.amax() == 1
    with pytest.raises(ValueError, match="ranks"):
        whycam.FinerCAM(model, layer, ranks=(0, 1))


# --- ShapleyCAM ----------------------------------------------------------------------------------


class ShapleyCAMForTokens(ShapleyCAM):
    """pytorch-grad-cam 1.5.7's ShapleyCAM reshapes a ViT's tokens into a grid inside
    ``get_cam_weights`` but then hands the tokens (B, N, D), unreshaped, to ``get_cam_image``, which
    refuses them; this subclass reshapes them there too. The weights are the oracle's own."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        grid = self.activations_and_grads.reshape_transform(activations).detach().numpy()
        return (weights[:, :, None, None] * grid).sum(axis=1)


def shapley_oracle(model, layer, images, reshape, targets) -> torch.Tensor:
    method = ShapleyCAM if reshape is None else ShapleyCAMForTokens
    cam = method(model=model, target_layers=[dict(model.named_modules())[layer]], reshape_transform=reshape)
    with sdpa_kernel(SDPBackend.MATH):  # the CPU's fused attention has no double backward
        maps = cam(input_tensor=images, targets=targets)
    cam.activations_and_grads.gradients = []  # its release() cannot detach_ the views it kept
    cam.activations_and_grads.release()
    return renormalise(maps)


def softmax_target(out: torch.Tensor) -> torch.Tensor:
    return out.softmax(1).gather(1, torch.tensor(CLASSES)[:, None])[:, 0]


@pytest.mark.parametrize("score", ["logit", "softmax"])
@pytest.mark.parametrize(("model_name", "layer"), [("resnet18", None), ("vit", "blocks.10.norm1")])
def test_shapleycam_matches_pytorch_grad_cam(model_name, layer, score):
    model, layer, images, reshape = case(model_name, layer)
    if score == "logit":
        targets, target = [ClassifierOutputTarget(c) for c in CLASSES], CLASSES
    else:
        targets, target = [ClassifierOutputSoftmaxTarget(c) for c in CLASSES], softmax_target
    theirs = shapley_oracle(model, layer, images, reshape, targets)
    maps = whycam.ShapleyCAM(model, layer)(images, target)
    assert largest_difference(maps, theirs) < TOLERANCE
    gradcam = whycam.GradCAM(model, layer)(images, target)
    if score == "softmax" or model_name == "vit":  # the softmax, or GELU, attention and LayerNorm: H A counts
        assert (maps - gradcam).abs().max() > 0.01
    else:  # ReLU, average pooling and a linear head after ResNet's layer4: H A = 0
        assert torch.allclose(maps, gradcam)


# --- KPCA-CAM ------------------------------------------------------------------------------------


def layer_grid(model, layer, images, reshape) -> torch.Tensor:
    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured[0] if reshape is None else reshape(captured[0])


def test_kpcacam_matches_pytorch_grad_cam_on_a_cnn():
    model, layer, images, reshape = case("resnet18")
    theirs = grad_cam_oracle(KPCA_CAM, model, layer, images, reshape)
    assert largest_difference(whycam.KPCACAM(model, layer)(images), theirs) < TOLERANCE


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11", "vit"])
@pytest.mark.parametrize(("kernel", "gamma"), [("sigmoid", None), ("rbf", 0.01), ("poly", None)])
def test_kpcacam_raw_maps_match_pytorch_grad_cam_up_to_the_eigenvector_sign(model_name, kernel, gamma):
    """The first kernel principal component has no sign of its own: scikit-learn (inside
    pytorch-grad-cam) makes the largest entry of its eigenvector positive, whycam makes the map
    correlate with the channel-mean activation (as its Eigen-CAM). Raw maps agree up to that sign."""
    model, layer, images, reshape = case(model_name)
    grid = layer_grid(model, layer, images, reshape)
    # float64 activations: in float32, scikit-learn's rbf distances lose 5% of the map to cancellation
    theirs = torch.from_numpy(get_2d_projection_kernel(grid.double().numpy(), kernel, gamma)).float()
    ours = whycam.KPCACAM(model, layer, kernel=kernel, gamma=gamma)(images, raw=True)
    sign = torch.sign((ours * theirs).flatten(1).sum(1))[:, None, None]
    assert float((ours - sign * theirs).abs().max() / theirs.abs().max()) < TOLERANCE
    mean_map = grid.mean(1)
    if mean_map.abs().max() < 1e-5 * grid.abs().max():  # the ViT's LayerNorm'd tokens: no channel-mean signal
        largest = ours.flatten(1).gather(1, ours.flatten(1).abs().argmax(1, keepdim=True))
        assert (largest > 0).all()  # then the largest entry is positive, not a sign drawn by rounding
        return
    correlation = ((ours - ours.mean((1, 2), keepdim=True)) * (mean_map - mean_map.mean((1, 2), keepdim=True))).sum(
        (1, 2)
    )
    assert (correlation > 0).all()


@pytest.mark.parametrize("method", [whycam.EigenCAM, whycam.KPCACAM])
def test_the_component_sign_is_not_drawn_by_rounding_on_a_layernormed_layer(method):
    """timm's PVT-v2 ends in a LayerNorm: the channel mean of every cell is 0 up to rounding, so the
    sign rule "correlate with the channel mean" would follow float noise, and an image's map would
    flip with its batch-mates. The largest entry is made positive instead."""
    torch.manual_seed(0)
    model = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=5).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    explainer = method(model)
    assert explainer.layers(x)[0][0] == "stages"
    raw = explainer(x, raw=True)
    assert torch.allclose(raw[1:], explainer(x[1:], raw=True), atol=1e-4 * raw.abs().max())
    largest = raw.flatten(1).gather(1, raw.flatten(1).abs().argmax(1, keepdim=True))
    assert (largest > 0).all()


def test_kpcacam_with_the_linear_kernel_is_eigencam():
    model, layer, images, _ = case("resnet18")
    linear = whycam.KPCACAM(model, layer, kernel="linear")(images, raw=True)
    eigen = whycam.EigenCAM(model, layer)(images, raw=True)
    assert np.allclose(linear.numpy(), eigen.numpy(), rtol=1e-4, atol=1e-4 * float(eigen.abs().max()))
