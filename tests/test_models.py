"""load_model: every spec kind, weights files (safetensors, weights_only), preprocessing, errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from whycam.models import (
    DIGITS_WEIGHTS,
    EfficientNetLite0,
    LoadedModel,
    ModelSpecError,
    Preprocess,
    digits_images,
    imagenet_classes,
    load_model,
)


def test_preprocess_resizes_shorter_side_crops_and_normalises():
    preprocess = Preprocess(resize=16, crop=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    image = torch.rand(3, 32, 64)
    assert preprocess.geometry(image).shape == (3, 16, 16)
    assert preprocess.output_size((32, 64)) == (16, 16)
    out = preprocess(torch.ones(3, 32, 64))
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5


def test_boxes_follow_the_same_geometry_as_masks():
    preprocess = Preprocess(resize=20, crop=(20, 20))
    mask = torch.zeros(1, 40, 80)
    mask[:, 10:30, 30:50] = 1  # box (30, 10, 50, 30), centred horizontally
    moved = preprocess.geometry(mask, mode="nearest")[0]
    [(x0, y0, x1, y1)] = preprocess.boxes([(30, 10, 50, 30)], (40, 80))
    ys, xs = torch.nonzero(moved, as_tuple=True)
    assert (x0, y0, x1, y1) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)


def test_digits_cnn_ships_small_and_accurate():
    assert DIGITS_WEIGHTS.stat().st_size < 300_000
    loaded = load_model("digits-cnn")
    model, preprocess, classes = loaded  # unpacks as a tuple
    assert classes == [str(i) for i in range(10)] and not model.training
    images, labels = digits_images()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    held_out = order[int(0.8 * len(order)) :]
    with torch.no_grad():
        predictions = model(torch.stack([preprocess(images[i]) for i in held_out])).argmax(1)
    accuracy = (predictions == labels[held_out]).float().mean().item()
    assert accuracy > 0.95  # measured 0.986 on the 360 held-out digits


def test_efficientnet_wrapper_computes_the_same_function():
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0").eval()
    wrapped = EfficientNetLite0(net).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net(x), atol=1e-5)
        assert wrapped.features(x).shape == (1, 1280, 2, 2)


@pytest.mark.slow
def test_efficientnet_lite0_recognises_the_cat():
    import skimage.data

    from whycam.data import to_tensor

    loaded = load_model("efficientnet-lite0")
    assert len(loaded.classes) == 1000 and loaded.layer == "features"
    with torch.no_grad():
        top = loaded.model(loaded.preprocess(to_tensor(skimage.data.chelsea()))[None]).argmax(1).item()
    assert loaded.class_name(top) in ("tabby", "tiger cat", "Egyptian cat")


def test_imagenet_class_names_offline():
    names = imagenet_classes()
    assert len(names) == 1000 and names[281] == "tabby"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_with_local_weights(tmp_path, suffix):
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    loaded = load_model("torchvision:resnet18", weights=path)
    assert loaded.model.fc.out_features == 7 and loaded.classes is None  # class count read from the weights
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), source.state_dict().values(), strict=True)
    )
    assert loaded.preprocess.crop == (224, 224) and loaded.preprocess.mean == (0.485, 0.456, 0.406)


def test_torchvision_without_weights_is_random_init_with_imagenet_names():
    loaded = load_model("torchvision:resnet18")
    assert loaded.classes is not None and len(loaded.classes) == 1000
    with pytest.raises(ModelSpecError, match="torchvision has no model"):
        load_model("torchvision:resnet_nope")


def test_timm_with_local_weights(tmp_path):
    source = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model("timm:resnet10t", weights=tmp_path / "w.safetensors")
    assert loaded.model.num_classes == 3 and loaded.classes is None
    with pytest.raises(ModelSpecError, match="timm has no model"):
        load_model("timm:nonexistent_model_xyz")


def test_torchscript_file(tmp_path):
    from tiny_model import plain

    model = plain()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "tiny.ts"))
    loaded = load_model(str(tmp_path / "tiny.ts"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))


def test_factory_specs(tmp_path):
    loaded = load_model("tests/tiny_model.py:make")
    assert isinstance(loaded, LoadedModel) and loaded.classes[2] == "cat" and loaded.class_index("Cat") == 2
    bare = load_model("tests.tiny_model:plain")
    assert isinstance(bare.model, nn.Module) and bare.classes is None
    with pytest.raises(ModelSpecError, match="no function"):
        load_model("tests.tiny_model:missing")
    with pytest.raises(ModelSpecError, match="unknown model spec"):
        load_model("resnet50")
    with pytest.raises(ValueError, match="unknown class"):
        loaded.class_index("zebra")


def test_weights_are_never_unpickled(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelSpecError, match="weights_only=True"):
        load_model("tests/tiny_model.py:make", weights=tmp_path / "pickled.pt")


def test_weights_that_do_not_fit(tmp_path):
    save_file({"features.0.weight": torch.zeros(2, 3, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelSpecError, match="do not fit"):
        load_model("tests/tiny_model.py:make", weights=tmp_path / "bad.safetensors")
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model("tests/tiny_model.py:make", weights=tmp_path / "missing.safetensors")
