"""Localisation metrics on edge cases whose value is known by definition."""

from __future__ import annotations

import torch

from whycam import metrics


def test_topk_iou_without_any_object_is_undefined_not_an_error():
    """k = the ground truth's area = 0 on every image: no pixel chosen, IoU 0/0, NaN (left out of means)."""
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    result = metrics.topk_iou(maps, torch.zeros(2, 8, 8, dtype=torch.bool))
    assert result.scores.isnan().all()
    mixed = torch.zeros(2, 8, 8, dtype=torch.bool)
    mixed[1].view(-1)[maps[1].flatten().argmax()] = True  # the one pixel the map ranks first
    assert torch.equal(metrics.topk_iou(maps, mixed).scores.isnan(), torch.tensor([True, False]))
    assert metrics.topk_iou(maps, mixed).scores[1] == 1.0
