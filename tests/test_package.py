"""The package's face: version, registry, and the public names other code relies on."""

import timm
import torch

import whycam


def test_version_is_a_release_string():
    assert whycam.__version__.count(".") == 2


def test_registry_offers_every_cam_method_by_name():
    registry = whycam.methods()
    for name in (
        "cam",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "hirescam",
        "layercam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "diffcam",
        "saliency",
        "inputxgradient",
        "smoothgrad",
        "integratedgradients",
        "guidedbackprop",
        "guidedgradcam",
        "occlusion",
        "rise",
        "meaningfulperturbation",
    ):
        assert issubclass(registry[name], whycam.Explainer)
        assert registry[name].name == name
        assert registry[name].summary


# The contract does not depend on how many masks or steps a method takes, nor on the layer: light
# settings keep this fast (Score-CAM and Ablation-CAM run one pass per channel: layer1 has 64, layer4 512;
# occlusion one per window position: 49 with these, 225 by default).
LIGHT = {
    "scorecam": {"layer": "layer1"},
    "ablationcam": {"layer": "layer1"},
    "occlusion": {"window": 16, "stride": 8},
    "rise": {"masks": 32},
    "meaningfulperturbation": {"steps": 5},
    "integratedgradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
}


def test_every_registered_method_keeps_the_output_contract(resnet18, images):
    references = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
    for name, method in whycam.methods().items():
        model = vit if method.needs_attention else resnet18  # LeGrad explains ViTs only
        explainer = method(model, **LIGHT.get(name, {}))
        if explainer.needs_reference:  # a reference-group method (DiffCAM) is fitted first
            explainer.fit(references)
        maps = explainer(images, target=[1, 2] if method.needs_target else None)
        assert maps.shape == (2, 64, 64), name
        assert maps.dtype == torch.float32, name
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0, name
        assert torch.isfinite(maps).all(), name
