"""The real-model section of docs/results.md: EfficientNet-Lite0 (ImageNet) on real photographs with boxes.

    python benchmarks/photos.py            # writes the "results-photos" section of docs/results.md

The photographs are scikit-image's chelsea, coffee and rocket (CC0 / public domain), boxed by hand
(benchmarks/photo_boxes.json), and imgaug's quokka with the box that ships with it (found when the
imgaug package is installed, e.g. ``pip install --no-deps imgaug``; skipped, and said so, otherwise).
Every registered method explains the model's predicted class at its default layer (``features``),
with the demo's light settings for the many-pass methods; DiffCAM's reference group is the demo's
texture crops ("what differs from plain textures?"). Four images: small, so say so, but real.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from common import machine, table, write_section

import whycam
from whycam import metrics
from whycam.data import to_tensor
from whycam.demo import LIGHT, SKIPPED, texture_references
from whycam.runs import Runner

HERE = Path(__file__).resolve().parent
METRICS = {
    "AUPRC ↑": metrics.auprc,
    "pointing ↑": metrics.pointing_game,
    "energy pointing ↑": metrics.energy_pointing_game,
    "box accuracy ↑": metrics.box_accuracy,
}


def photographs() -> tuple[list[str], list[torch.Tensor], list[list[int]], list[str]]:
    """Names, (3, H, W) images in [0, 1], boxes in their pixels, and notes on what was left out."""
    import skimage.data
    from PIL import Image

    spec = json.loads((HERE / "photo_boxes.json").read_text())["photos"]
    names, images, boxes, notes = [], [], [], []
    for name, entry in spec.items():
        if entry["source"] == "skimage":
            image = to_tensor(getattr(skimage.data, name)())
        else:
            found = importlib.util.find_spec(entry["source"])
            if found is None or found.origin is None:
                notes.append(f"{name}: the package {entry['source']} is not installed, so it is left out")
                continue
            image = to_tensor(Image.open(Path(found.origin).parent / f"{name}.jpg"))
        names.append(name)
        images.append(image)
        boxes.append(entry["box"])
    return names, images, boxes, notes


def box_masks(images: list[torch.Tensor], boxes: list[list[int]], preprocess) -> torch.Tensor:
    """The boxes as masks at the model's input, through the same resize and crop as the images."""
    masks = []
    for image, (x0, y0, x1, y1) in zip(images, boxes):
        mask = torch.zeros(1, *image.shape[-2:])
        mask[:, y0:y1, x0:x1] = 1
        masks.append(preprocess.geometry(mask, mode="nearest")[0] > 0.5)
    return torch.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()

    loaded = whycam.load_model("efficientnet-lite0")
    model, preprocess, classes = loaded
    names, images, boxes, notes = photographs()
    inputs = torch.stack([preprocess(image) for image in images])
    masks = box_masks(images, boxes, preprocess)
    chosen = [name for name, cls in whycam.methods().items() if name not in SKIPPED and not cls.needs_attention]
    notes += [f"{name}: not run ({reason})" for name, reason in SKIPPED.items()]
    notes += [
        f"{name}: not run (it explains transformers)" for name, c in whycam.methods().items() if c.needs_attention
    ]
    runner = Runner(
        loaded, {name: LIGHT.get(name, {}) for name in chosen}, reference=texture_references(preprocess), batch_size=64
    )
    batch = runner.explain_batch(inputs, ids=names)
    probabilities, predicted = runner.predict(inputs).softmax(1), batch.predictions
    notes += [f"{failure.method}: failed ({failure.error})" for failure in batch.failures]
    rows = []
    for name, maps in batch.maps.items():
        scores = [f"{fn(maps, masks).value:.3f}" for fn in METRICS.values()]
        rows.append([name, *scores, f"{batch.seconds[name] / len(names):.2f}"])
    chance = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    rows.append(["random (baseline)", *[f"{fn(chance, masks).value:.3f}" for fn in METRICS.values()], "-"])

    predictions = ", ".join(
        f"{n}: {classes[int(c)]} ({float(probabilities[i, c]):.2f})" for i, (n, c) in enumerate(zip(names, predicted))
    )
    coverage = ", ".join(f"{n} {float(m.float().mean()):.0%}" for n, m in zip(names, masks))
    text = "\n\n".join(
        [
            f"### Real model: EfficientNet-Lite0 (ImageNet) on {len(names)} photographs\n\n"
            f"Each photograph's predicted class is explained at layer `{loaded.layer}`; the ground truth is one "
            f"box per photograph (benchmarks/photo_boxes.json), {coverage} of the 224x224 input. Predictions: "
            f"{predictions}. Pointing tolerance 15 px; box accuracy at tau = 0.2, IoU 0.5. With "
            f"{len(names)} images these are per-image anecdotes, not estimates: no intervals are given.",
            table(["method", *METRICS, "s / image"], rows),
            "\n".join(f"- {note}" for note in notes) if notes else "",
            f"_`python benchmarks/photos.py --threads {args.threads}`: {machine()}; whole run "
            f"{(time.perf_counter() - start) / 60:.1f} min._",
        ]
    )
    write_section("results.md", "results-photos", text)
    print(text)


if __name__ == "__main__":
    main()
