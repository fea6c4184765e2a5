"""The explorer's logic, without the page: models, images, maps, curves and downloads.

``Explorer`` answers what the interactive page (``whycam.app``) asks: the top-5 predictions of an
image, the layers a CAM can read, the maps of several methods side by side (each with its time, the
layer it read and its stride in input pixels per map cell), DiffCAM's questions against a per-class
bank or a reference group, the deletion/insertion or ROAD curves of the maps shown, and the raw maps
and overlays as files. Every call goes through ``runs.Runner``, the loop behind every command; one
``Runner`` per (model, method, settings) is kept, so a reference group is fitted once.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from . import metrics
from .data import find_images, read_image, to_tensor
from .demo import PHOTOS, TEXTURES, skimage_image, texture_references
from .errors import UsageError
from .layers import spatial_layers
from .methods.factory import method_class, option_names
from .models import LoadedModel, digits_images, load_model
from .runs import Runner
from .viz import curve_figure, overlay_figure, png

AUTOMATIC = "automatic"
QUESTIONS = {
    "why": "why is this its class (reference: every other class)",
    "why-not": "why is this not the class chosen below (reference: that class)",
    "unusual": "what is unusual about it (reference: its own class)",
    "group": "what differs from the reference group",
}
CURVES = ("deletion / insertion", "ROAD")


@dataclass
class Source:
    """A model the page offers: how to load it, its example images, and its reference groups.

    ``images``: name -> (3, H, W) image in [0, 1]. ``bank``: a per-class reference, model inputs and
    labels ``(inputs, labels)`` or a saved bank, for DiffCAM's questions (``bank_images``: the same
    images in [0, 1], for thumbnails); ``group``: a reference group (model inputs, statistics, or a
    folder) and ``group_images``: a few of its images, shown as thumbnails.
    """

    load: Callable[[], LoadedModel]
    images: Mapping[str, Tensor] = field(default_factory=dict)
    bank: object = None
    group: object = None
    group_images: Sequence[Tensor] = ()
    group_name: str = ""
    bank_images: Tensor | None = None


@dataclass
class Shown:
    """One method's map of the image on screen: (H, W) in [0, 1], or in [-1, 1] when ``signed``."""

    method: str
    map: Tensor
    seconds: float
    layers: list[str]
    stride: tuple[float, float] | None
    signed: bool = False

    @property
    def caption(self) -> str:
        parts = [self.method, f"{self.seconds * 1000:.0f} ms"]
        if self.layers:
            parts.append("layer " + ", ".join(self.layers))
        if self.stride is not None:
            parts.append(f"{self.stride[0]:g}×{self.stride[1]:g} px per cell")
        return " · ".join(parts)


@dataclass
class Explanation:
    """What the page shows after a run: the image, the class explained, and one ``Shown`` per method."""

    model: str
    display: Tensor
    inputs: Tensor
    target: int
    target_name: str
    shown: list[Shown]
    failures: dict[str, str]
    reference: str = ""


class Explorer:
    """The page's questions as Python calls (see the module docstring); ``sources``: name -> ``Source``."""

    def __init__(self, sources: Mapping[str, Source], *, cache_size: int = 16):
        if not sources:
            raise UsageError("the explorer needs at least one model")
        self.sources = dict(sources)
        self._models: dict[str, LoadedModel] = {}
        self._runners: OrderedDict[tuple, Runner] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def demo(cls) -> Explorer:
        """The demo models: EfficientNet-Lite0 on scikit-image's photographs (DiffCAM against plain
        textures), and the digits CNN on scikit-learn's digits (DiffCAM's three questions)."""
        return cls({"efficientnet-lite0": photo_source(), "digits-cnn": digits_source()})

    @classmethod
    def launched(
        cls,
        model: LoadedModel | None = None,
        *,
        images: str | Path | None = None,
        reference: str | Path | None = None,
        bank: str | Path | None = None,
    ) -> Explorer:
        """The demo models, and ``model`` (first) with DiffCAM's ``reference`` group (a folder of
        images or a statistics file) and per-class ``bank`` file; ``images``: a folder of images
        offered with ``model`` (or, without one, with every demo model)."""
        if model is None and (reference is not None or bank is not None):
            raise UsageError("--reference and --bank are the reference groups of --model: give --model too")
        explorer = cls.demo()
        extra = folder_images(images) if images is not None else {}
        if model is None:
            for source in explorer.sources.values():
                source.images = {**extra, **source.images}
            return explorer
        source = Source(
            lambda: model,
            extra or explorer.sources["efficientnet-lite0"].images,
            bank=None if bank is None else str(bank),
            group=None if reference is None else str(reference),
            group_images=list(folder_images(reference, limit=6).values())
            if reference and Path(reference).is_dir()
            else [],
            group_name=str(reference or ""),
        )
        name = model.name or "model"
        return cls({name: source, **{key: other for key, other in explorer.sources.items() if key != name}})

    # ------------------------------------------------------------------------------------- models
    def model(self, name: str) -> LoadedModel:
        """The loaded model ``name`` (loaded once)."""
        if name not in self.sources:
            raise UsageError(f"no model {name!r}; the explorer has {', '.join(self.sources)}")
        if name not in self._models:
            self._models[name] = self.sources[name].load()
            self._models[name].model.eval()
        return self._models[name]

    def prepare(self, name: str, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(display image, model input (1, C, h, w))`` of a (3, H, W) image in [0, 1]."""
        preprocess = self.model(name).preprocess
        display = preprocess.geometry(image)
        return display, preprocess.normalize(display)[None]

    def top5(self, name: str, image: Tensor) -> list[tuple[int, str, float]]:
        """The five most probable classes of ``image``: ``(index, name, probability)``."""
        loaded = self.model(name)
        _, inputs = self.prepare(name, image)
        with torch.no_grad():
            output = loaded.model(inputs)
        if not isinstance(output, Tensor) or output.dim() != 2:
            raise UsageError("the model's output is not (batch, classes): the explorer explains classifiers")
        probabilities = output.softmax(1)[0]
        top = probabilities.topk(min(5, probabilities.numel()))
        return [(int(i), loaded.class_name(int(i)), float(p)) for p, i in zip(top.values, top.indices, strict=True)]

    def layers(self, name: str, image: Tensor) -> list[str]:
        """The layers whose output is a spatial map or a grid of tokens, last first."""
        _, inputs = self.prepare(name, image)
        return spatial_layers(self.model(name).model, inputs)[::-1]

    def questions(self, name: str) -> list[str]:
        """DiffCAM's questions the model's references allow (a bank: why, why-not, unusual; a group)."""
        source = self.sources[name]
        return [
            *(["why", "why-not", "unusual"] if source.bank is not None else []),
            *(["group"] if source.group is not None else []),
        ]

    def reference_images(self, name: str, question: str | None, target: int | None, versus: int | None) -> list[Tensor]:
        """A few images of the reference group a question asks against (none for a saved bank)."""
        source = self.sources[name]
        if question == "group" or source.bank is None:
            return list(source.group_images)[:6]
        if source.bank_images is None:
            return []
        images, labels = source.bank_images, source.bank[1]
        chosen = {"why": labels != target, "why-not": labels == versus, "unusual": labels == target}.get(question)
        if chosen is None or target is None:
            return []
        return list(images[chosen.nonzero()[:, 0][:: max(1, int(chosen.sum()) // 6)][:6]])

    # ------------------------------------------------------------------------------------- maps
    def explain(
        self,
        name: str,
        image: Tensor,
        methods: Sequence[str],
        *,
        target: int | None = None,
        layer: str | None = None,
        sign: str = "positive",
        question: str | None = None,
        versus: int | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> Explanation:
        """Every method's map of ``image`` for class ``target`` (default: the predicted class)."""
        if not methods:
            raise UsageError("choose at least one method")
        loaded = self.model(name)
        display, inputs = self.prepare(name, image)
        if target is None:
            target = self.top5(name, image)[0][0]
        shown, failures, reference = [], {}, ""
        for step, method in enumerate(methods):
            if progress is not None:
                progress(step, len(methods), method)
            runner = self.runner(name, method, layer=layer, sign=sign, question=question, versus=versus)
            batch = runner.explain_batch(inputs, torch.tensor([target]))
            if method not in batch.maps:
                failures[method] = "; ".join(f.error for f in batch.failures if f.method == method)
                continue
            signed = sign == "both" and "sign" in option_names(method)
            stride = runner.explainers[method].stride_
            shown.append(
                Shown(method, batch.maps[method][0], batch.seconds[method], batch.layers[method], stride, signed)
            )
            reference = runner.references.get(method, reference)
        return Explanation(name, display, inputs, target, loaded.class_name(target), shown, failures, reference)

    def runner(self, name: str, method: str, *, layer=None, sign="positive", question=None, versus=None) -> Runner:
        """The ``Runner`` of one method with these settings (built, and fitted, once)."""
        options = {"sign": sign} if "sign" in option_names(method) and sign != "positive" else {}
        reads_reference = method_class(method).needs_reference
        asked = (question or self.questions(name)[0]) if reads_reference and self.questions(name) else None
        key = (name, method, layer, options.get("sign"), asked, versus if asked == "why-not" else None)
        if key in self._runners:
            self._runners.move_to_end(key)
            return self._runners[key]
        source, reference = self.sources[name], None
        if reads_reference:
            if asked not in self.questions(name):
                offered = ", ".join(self.questions(name)) or "no reference group"
                raise UsageError(f"{method} cannot ask {asked!r} of this model: it offers {offered}")
            reference = source.group if asked == "group" else source.bank
        runner = Runner(
            self.model(name),
            {method: options},
            layer=None if layer in (None, AUTOMATIC) else layer,
            reference=reference,
            question=None if asked in (None, "group") else asked,
            versus=versus if asked == "why-not" else None,
        )
        self._runners[key] = runner
        while len(self._runners) > self._cache_size:
            self._runners.popitem(last=False)
        return runner

    # ------------------------------------------------------------------------------------- curves
    def curves(self, explanation: Explanation, kind: str = CURVES[0], *, steps: int = 20):
        """A figure of each shown map's faithfulness curves: deletion and insertion, or ROAD's MoRF and LeRF."""
        model = self.model(explanation.model).model
        target = torch.tensor([explanation.target])
        lines = {}
        for shown in explanation.shown:
            saliency = shown.map.clamp(min=0)[None]
            if kind == "ROAD":
                result = metrics.road(model, explanation.inputs, saliency, target)
                x = result.steps.tolist()
                lines[f"{shown.method} MoRF"] = (x, result.curves["morf"][0])
                lines[f"{shown.method} LeRF"] = (x, result.curves["lerf"][0])
            else:
                for metric in (metrics.deletion, metrics.insertion):
                    result = metric(model, explanation.inputs, saliency, target, steps=steps)
                    value = f"{result.value:.3f}"
                    lines[f"{shown.method} {metric.__name__} ({value})"] = (
                        result.steps.tolist(),
                        result.curves["score"][0],
                    )
        xlabel = "fraction of pixels removed (%)" if kind == "ROAD" else "fraction of pixels removed / revealed"
        return curve_figure(lines, title=f"{kind}: class {explanation.target_name}", xlabel=xlabel, ylabel="score")

    # ------------------------------------------------------------------------------------- pictures and files
    def overlay(self, explanation: Explanation, shown: Shown, opacity: float = 0.5) -> np.ndarray:
        """The image with ``shown``'s map on top and its colour bar, as an (H, W, 3) uint8 array (the
        page shows the caption beside it, so every overlay has the same size)."""
        figure = overlay_figure(explanation.display, shown.map, alpha=opacity, signed=shown.signed)
        return np.asarray(_png_array(png(figure)))

    def archive(self, explanation: Explanation, opacity: float = 0.5) -> bytes:
        """A zip of every shown map: ``maps/METHOD.npy`` (float32) and ``overlays/METHOD.png``."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for shown in explanation.shown:
                array = io.BytesIO()
                np.save(array, shown.map.numpy().astype(np.float32))
                archive.writestr(f"maps/{shown.method}.npy", array.getvalue())
                figure = overlay_figure(
                    explanation.display, shown.map, shown.caption, alpha=opacity, signed=shown.signed
                )
                archive.writestr(f"overlays/{shown.method}.png", png(figure))
        return buffer.getvalue()


def _png_array(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# ----------------------------------------------------------------------------------------- sources
def photo_source() -> Source:
    """EfficientNet-Lite0 (ImageNet) on scikit-image's photographs; DiffCAM against plain textures."""
    loaded = load_model("efficientnet-lite0")
    return Source(
        lambda: loaded,
        {name: skimage_image(name) for name in PHOTOS},
        group=texture_references(loaded.preprocess),
        group_images=[skimage_image(name) for name in TEXTURES],
        group_name="plain textures (scikit-image's brick, grass and gravel)",
    )


def digits_source(per_class: int = 4) -> Source:
    """The digits CNN on held-out scikit-learn digits; DiffCAM's questions against all 1797 digits."""
    images, labels = digits_images()
    shown = {}
    for digit in range(10):
        for k, index in enumerate((labels == digit).nonzero()[:, 0][-per_class:].tolist()):
            shown[f"digit {digit} #{k + 1}"] = images[index]
    loaded = load_model("digits-cnn")
    inputs = torch.stack([loaded.preprocess(image) for image in images])
    return Source(lambda: loaded, shown, bank=(inputs, labels), bank_images=images)


def folder_images(folder: str | Path, limit: int = 64) -> dict[str, Tensor]:
    """The readable images of a folder (at most ``limit``), by file name; unreadable files are skipped."""
    found = {}
    for path in find_images(folder)[:limit]:
        try:
            found[path.name] = to_tensor(read_image(path))
        except OSError:
            continue
    return found


def iter_thumbnails(images: Sequence[Tensor], size: int = 96) -> Iterator[np.ndarray]:
    """Small (h, w, 3) uint8 pictures of (3, H, W) images in [0, 1]."""
    for image in images:
        scale = size / max(image.shape[-2:])
        small = nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
        yield (small.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
