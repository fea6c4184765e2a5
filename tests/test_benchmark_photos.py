"""The real-photo section's ground truth: hand-drawn boxes follow the model's resize and crop exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import photos  # noqa: E402

from whycam import metrics  # noqa: E402
from whycam.models import Preprocess  # noqa: E402


def test_boxes_become_masks_through_the_same_resize_and_crop():
    preprocess = Preprocess(resize=256, crop=(224, 224))
    image = torch.zeros(3, 400, 600)  # resized to 256 x 384, cropped at x 80..304
    masks = photos.box_masks([image, image], [[0, 0, 600, 400], [240, 100, 360, 300]], preprocess)
    assert masks.shape == (2, 224, 224) and masks[0].all()
    rows, cols = masks[1].nonzero(as_tuple=True)
    # 240..360 x 100..300 scales by 0.64 to 153.6..230.4 x 64..192, then shifts by the crop's 80 columns
    assert abs(int(cols.min()) - 74) <= 1 and abs(int(cols.max()) + 1 - 150) <= 1
    assert abs(int(rows.min()) - 48) <= 1 and abs(int(rows.max()) + 1 - 176) <= 1


def test_every_shipped_photograph_has_a_box_inside_it_and_the_box_map_scores_the_maximum():
    names, images, boxes, _ = photos.photographs()
    assert {"chelsea", "coffee", "rocket"} <= set(names)
    for image, (x0, y0, x1, y1) in zip(images, boxes):
        assert 0 <= x0 < x1 <= image.shape[-1] and 0 <= y0 < y1 <= image.shape[-2]
    masks = photos.box_masks(images, boxes, Preprocess())
    assert masks.flatten(1).any(1).all()
    assert metrics.auprc(masks.float(), masks).value == 1.0
    assert metrics.energy_pointing_game(masks.float(), masks).value == 1.0
