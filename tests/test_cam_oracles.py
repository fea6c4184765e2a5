"""Oracle tests: whycam's CAM maps against pytorch-grad-cam (PyPI grad-cam) and torchcam.

Same random-init model, input, layer and target on both sides; the normalised maps must agree
within 1e-4 (max abs). Both oracles produce maps in other orders than whycam's "ReLU, upsample,
min-max": pytorch-grad-cam min-max normalises at feature resolution and then resizes (cv2 bilinear,
half-pixel centres like torch's align_corners=False); torchcam returns the map at feature resolution.
Bilinear resizing is affine, so min-max normalising the oracle's upsampled map again gives exactly
the map normalised after upsampling: that is what ``renormalise`` does to the oracle's output.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchcam.methods as torchcam
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import whycam

TOLERANCE = 1e-4
CLASSES = [3, 7]


def renormalise(maps) -> torch.Tensor:
    """ReLU and per-image min-max of an oracle's maps (constant -> zeros)."""
    maps = torch.as_tensor(maps).float().clamp(min=0)
    low = maps.flatten(1).min(1).values[:, None, None]
    span = maps.flatten(1).max(1).values[:, None, None] - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=1e-30), 0.0)


def upsampled(maps: torch.Tensor, size) -> torch.Tensor:
    """A torchcam map (B, h, w) at the input size: ReLU, bilinear (half-pixel centres), min-max."""
    maps = F.interpolate(maps.clamp(min=0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return renormalise(maps)


def vit_tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape transform: drop the class token, (B, D, h, w)."""
    batch, n, dim = tokens.shape
    side = int((n - 1) ** 0.5)
    return tokens[:, 1:, :].reshape(batch, side, side, dim).permute(0, 3, 1, 2)


CASES = {
    # name: (builder, layer, input size, reshape for pytorch-grad-cam)
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), "layer4", 96, None),
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=10), "features.19", 64, None),
    "vit": (
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10),
        "blocks.11.norm1",
        64,
        vit_tokens_to_grid,
    ),
}
_built: dict[str, torch.nn.Module] = {}


def case(name: str, layer: str | None = None, size: int | None = None):
    """The model, layer, two seeded images and pytorch-grad-cam reshape of a case (layer/size overridable)."""
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = CASES[name][0]().eval()
    model = _built[name]
    _, default_layer, default_size, reshape = CASES[name]
    layer, size = layer or default_layer, size or default_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, layer, images, reshape


def grad_cam_oracle(method, model, layer, images, reshape, targets=None, **options) -> torch.Tensor:
    """pytorch-grad-cam's maps (the model is already in eval mode, which is all it changes)."""
    module = dict(model.named_modules())[layer]
    targets = targets or [ClassifierOutputTarget(c) for c in CLASSES]
    with method(model=model, target_layers=[module], reshape_transform=reshape, **options) as cam:
        return renormalise(cam(input_tensor=images, targets=targets))


GRADIENT_METHODS = [
    (whycam.GradCAM, GradCAM),
    (whycam.XGradCAM, XGradCAM),
    (whycam.HiResCAM, HiResCAM),
    (whycam.LayerCAM, LayerCAM),
]


@pytest.mark.parametrize("model_name", list(CASES))
@pytest.mark.parametrize(("ours", "theirs"), GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_gradient_cams_match_pytorch_grad_cam(model_name, ours, theirs):
    model, layer, images, reshape = case(model_name)
    expected = grad_cam_oracle(theirs, model, layer, images, reshape)
    maps = ours(model, layer)(images, target=CLASSES)
    assert maps.shape == expected.shape
    assert (maps - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("model_name", list(CASES))
def test_gradcam_plus_plus_matches_pytorch_grad_cam(model_name):
    # pytorch-grad-cam adds eps = 1e-6 to alpha's denominator 2 G^2 + sum(A) G^3; with a random-init
    # model G ~ 1e-4, so that eps would dominate (and near-cancelling denominators on a ViT's signed
    # LayerNorm outputs amplify it). Both sides explain the same score 1e5 * y_c, whose gradients are
    # large enough for the eps to be negligible: the paper's formula on both sides. In float64: on the
    # ViT the float32 rounding of those near-cancelling denominators alone differs by 1.6e-3 between the
    # two (measured on an AMD EPYC; 9.6e-6 in float64).
    model, layer, images, reshape = case(model_name)
    model, images = copy.deepcopy(model).double(), images.double()
    targets = [lambda out, c=c: 1e5 * out[..., c] for c in CLASSES]
    expected = grad_cam_oracle(GradCAMPlusPlus, model, layer, images, reshape, targets=targets)
    classes = torch.tensor(CLASSES)[:, None]
    maps = whycam.GradCAMPlusPlus(model, layer)(images, target=lambda out: 1e5 * out.gather(1, classes)[:, 0])
    assert (maps - expected).abs().max() < TOLERANCE


def test_torchcam_gradcam_plus_plus_is_not_the_paper():
    # torchcam 0.5.0 divides alpha in place through a boolean-mask copy (alpha[mask].div_(...)), so its
    # alpha stays G^2: a no-op normalisation. whycam follows the paper (checked against pytorch-grad-cam
    # above); here we show torchcam's weights are sum G^2 ReLU(G), not the paper's.
    model, layer, images, _ = case("resnet18")
    with torchcam.GradCAMpp(model, layer) as extractor:
        scores = model(images)
        (theirs,) = extractor(class_idx=CLASSES, scores=scores, normalized=False)
    activations, gradients = {}, {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: activations.update(a=o))
    try:
        out = model(images)
        score = out.gather(1, torch.tensor(CLASSES)[:, None]).sum()
        (gradients["g"],) = torch.autograd.grad(score, activations["a"])
    finally:
        handle.remove()
    a, g = activations["a"].detach(), gradients["g"]
    no_op = ((g.pow(2) * g.clamp(min=0)).sum((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    assert torch.allclose(theirs, no_op, rtol=1e-4, atol=1e-9)
    ours = whycam.GradCAMPlusPlus(model, layer)(images, target=CLASSES, raw=True).clamp(min=0)
    assert (upsampled(ours, (96, 96)) - upsampled(theirs.detach(), (96, 96))).abs().max() > 1e-2


@pytest.mark.parametrize("model_name", list(CASES))
def test_eigencam_matches_pytorch_grad_cam_up_to_sign(model_name):
    # The oracle takes the first singular vector with whatever sign the SVD returns; whycam fixes the
    # sign (positive correlation with the mean activation). Compare with both signs of whycam's map.
    model, layer, images, reshape = case(model_name)
    expected = grad_cam_oracle(EigenCAM, model, layer, images, reshape)
    raw = whycam.EigenCAM(model, layer)(images, raw=True)
    size = tuple(images.shape[-2:])
    for index in range(images.shape[0]):
        errors = [
            (upsampled(sign * raw[index : index + 1], size) - expected[index : index + 1]).abs().max()
            for sign in (1, -1)
        ]
        assert min(errors) < TOLERANCE


# One forward pass per channel: the fast runs use a 256-channel ResNet layer and the ViT; the 512-channel
# layers of ResNet-18 and VGG-11 take minutes on two cores and are marked slow.
SCORE_CASES = [
    pytest.param("resnet18", "layer3", 64, id="resnet18-layer3"),
    pytest.param("vit", None, None, id="vit"),
    pytest.param("resnet18", None, None, id="resnet18-layer4", marks=pytest.mark.slow),
    pytest.param("vgg11", None, None, id="vgg11", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("model_name", "layer", "size"), SCORE_CASES)
def test_scorecam_matches_pytorch_grad_cam(model_name, layer, size):
    model, layer, images, reshape = case(model_name, layer, size)
    expected = grad_cam_oracle(ScoreCAM, model, layer, images, reshape)
    maps = whycam.ScoreCAM(model, layer, batch_size=48)(images, target=CLASSES)
    assert (maps - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize(("model_name", "layer", "size"), [p for p in SCORE_CASES if p.id != "vit"])
def test_ablationcam_matches_pytorch_grad_cam(model_name, layer, size):
    # CNN layers after a ReLU only: there pytorch-grad-cam zeroes the channel, as the paper does. Where
    # a layer has negative values (a ViT's LayerNorm) it sets the channel to min - 1e7 instead, a
    # deviation from the paper; whycam always zeroes (tested against a brute-force loop in test_score).
    model, layer, images, reshape = case(model_name, layer, size)
    expected = grad_cam_oracle(AblationCAM, model, layer, images, reshape, batch_size=48)
    maps = whycam.AblationCAM(model, layer, batch_size=48)(images, target=CLASSES)
    assert (maps - expected).abs().max() < TOLERANCE


def torchcam_maps(method, model, layer, images, *, scores_needed: bool, **options) -> torch.Tensor:
    with method(model, layer, input_shape=tuple(images.shape[1:]), **options) as extractor:
        with torch.set_grad_enabled(scores_needed):
            scores = model(images)
        (maps,) = extractor(class_idx=CLASSES, scores=scores, normalized=False)
    return upsampled(maps.detach(), tuple(images.shape[-2:]))


TORCHCAM_GRADIENT = [
    (whycam.GradCAM, torchcam.GradCAM),
    (whycam.XGradCAM, torchcam.XGradCAM),
    (whycam.LayerCAM, torchcam.LayerCAM),
]


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
@pytest.mark.parametrize(("ours", "theirs"), TORCHCAM_GRADIENT, ids=lambda m: m.__name__)
def test_gradient_cams_match_torchcam(model_name, ours, theirs):
    model, layer, images, _ = case(model_name)
    expected = torchcam_maps(theirs, model, layer, images, scores_needed=True)
    maps = ours(model, layer)(images, target=CLASSES)
    assert (maps - expected).abs().max() < TOLERANCE


def test_cam_matches_torchcam():
    model, layer, images, _ = case("resnet18")
    expected = torchcam_maps(torchcam.CAM, model, layer, images, scores_needed=False, fc_layer="fc")
    maps = whycam.CAM(model, layer)(images, target=CLASSES)
    assert (maps - expected).abs().max() < TOLERANCE


def test_scorecam_matches_torchcam_with_its_conventions():
    # torchcam normalises A_k at feature resolution, then upsamples with align_corners=False.
    model, layer, images, _ = case("resnet18", "layer3", 64)
    expected = torchcam_maps(torchcam.ScoreCAM, model, layer, images, scores_needed=False, batch_size=48)
    maps = whycam.ScoreCAM(model, layer, align_corners=False, normalize_at="feature")(images, target=CLASSES)
    assert (maps - expected).abs().max() < TOLERANCE
