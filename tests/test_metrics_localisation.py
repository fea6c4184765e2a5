"""Localisation metrics: Quantus and scikit-learn oracles, perfect and constant maps, box protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whycam import metrics
from whycam.metrics.localisation import box_iou, ground_truth_masks

LOCALISATION = (
    metrics.box_accuracy,
    metrics.max_box_accuracy,
    metrics.mask_iou,
    metrics.topk_iou,
    metrics.relevance_rank_accuracy,
    metrics.auprc,
    metrics.pointing_game,
    metrics.energy_pointing_game,
)


def _data(count: int = 6, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(count, size, size, generator=generator)
    corner = torch.randint(0, size // 2, (count, 2), generator=generator)
    extent = torch.randint(4, size // 2, (count, 2), generator=generator)
    boxes = torch.cat([corner, corner + extent], 1)
    return maps, boxes


def test_boxes_become_half_open_masks():
    masks = ground_truth_masks(torch.tensor([[1, 2, 4, 3]]), torch.zeros(1, 5, 6))
    expected = torch.zeros(1, 5, 6, dtype=torch.bool)
    expected[0, 2, 1:4] = True
    assert torch.equal(masks, expected)


def _quantus(metric, maps, masks):
    return np.asarray(
        metric(
            model=None,
            x_batch=np.zeros((len(maps), 1, *maps.shape[1:]), np.float32),
            y_batch=np.zeros(len(maps), int),
            a_batch=maps[:, None].numpy(),
            s_batch=masks[:, None].numpy().astype(np.float32),
        ),
        dtype=float,
    )


def test_agrees_with_quantus():
    import quantus

    maps, boxes = _data()
    masks = ground_truth_masks(boxes, maps)
    options = {"normalise": False, "abs": False, "disable_warnings": True}
    pairs = [
        (metrics.pointing_game(maps, boxes, tolerance=0), quantus.PointingGame(**options)),
        (metrics.relevance_rank_accuracy(maps, masks), quantus.RelevanceRankAccuracy(**options)),
        (metrics.energy_pointing_game(maps, boxes), quantus.RelevanceMassAccuracy(**options)),
        (metrics.energy_pointing_game(maps, boxes), quantus.AttributionLocalisation(**options)),
    ]
    for ours, peer in pairs:
        np.testing.assert_allclose(ours.scores.numpy(), _quantus(peer, maps, masks), atol=1e-6)


def test_auprc_equals_scikit_learn():
    from sklearn.metrics import average_precision_score

    maps, boxes = _data()
    maps = (maps * 8).round() / 8  # ties, where the definition of the thresholds matters
    masks = ground_truth_masks(boxes, maps)
    result = metrics.auprc(maps, boxes)
    expected = [
        average_precision_score(m.flatten().numpy(), s.flatten().numpy()) for m, s in zip(masks, maps, strict=True)
    ]
    np.testing.assert_allclose(result.scores.numpy(), expected, atol=1e-6)
    pooled = average_precision_score(masks.flatten().numpy(), maps.flatten().numpy())
    assert result.settings["pooled"] == pytest.approx(pooled, abs=1e-9)
    assert result.value == pytest.approx(float(np.mean(expected)), abs=1e-6)


def test_the_ground_truth_as_map_scores_the_maximum():
    maps, boxes = _data()
    masks = ground_truth_masks(boxes, maps)
    for metric in LOCALISATION:
        for truth in (boxes, masks):
            assert torch.equal(metric(masks.float(), truth).scores, torch.ones(6)), metric.__name__


def test_a_constant_map_scores_at_chance():
    count, size = 2000, 8
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(count, size, size, generator=generator) < 0.3  # scattered pixels
    area = masks.flatten(1).float().mean(1)
    zero = torch.zeros(count, size, size)
    for metric in (metrics.energy_pointing_game, metrics.auprc, metrics.mask_iou):
        assert torch.allclose(metric(zero, masks).scores, area, atol=1e-6), metric.__name__
    for metric in (metrics.relevance_rank_accuracy, lambda m, t: metrics.pointing_game(m, t, tolerance=0)):
        assert abs(metric(zero, masks).value - area.mean().item()) < 0.05


def test_box_accuracy_takes_the_largest_component_and_max_box_accuracy_sweeps_tau():
    maps = torch.zeros(1, 20, 20)
    maps[0, 2:6, 2:6] = 1.0  # small strong blob
    maps[0, 10:19, 8:18] = 0.6  # large weaker blob
    big = torch.tensor([[8, 10, 18, 19]])
    assert metrics.box_accuracy(maps, big, tau=0.5).scores.item() == 1.0
    assert metrics.box_accuracy(maps, big, tau=0.8).scores.item() == 0.0  # only the small blob is left
    small = torch.tensor([[2, 2, 6, 6]])
    result = metrics.max_box_accuracy(maps, small, component="largest")
    assert result.value == 1.0 and result.settings["best_tau"][0] > 0.6
    both = torch.cat([maps, maps])
    sweep = metrics.max_box_accuracy(both, torch.cat([small, big]), iou_thresholds=(0.5,))
    assert sweep.value == 1.0  # "best": each image's best matching component
    assert (
        metrics.max_box_accuracy(both, torch.cat([small, big]), iou_thresholds=(0.5,), component="largest").value == 0.5
    )


def test_topk_iou_and_pointing_tolerance():
    maps = torch.zeros(1, 10, 10)
    maps[0, 0, 0] = 1.0
    truth = torch.tensor([[3, 0, 6, 3]])
    assert metrics.pointing_game(maps, truth, tolerance=2).scores.item() == 0.0
    assert metrics.pointing_game(maps, truth, tolerance=3).scores.item() == 1.0
    maps[0, 0:2, 3:6] = 0.5  # 6 of the box's 9 pixels, plus the corner: top-9 has 7 inside
    iou = metrics.topk_iou(maps, truth).scores.item()
    assert iou == pytest.approx(6 / 12, abs=1e-6) or iou == pytest.approx(7 / 11, abs=1e-6)


def test_bad_ground_truth_is_refused():
    maps = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="boxes"):
        metrics.mask_iou(maps, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x0 <= x1"):
        metrics.mask_iou(maps, torch.tensor([[4, 0, 2, 3], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.energy_pointing_game(maps - 1, torch.tensor([[0, 0, 2, 3], [0, 0, 1, 1]]))


def test_top_pixels_fast_path_equals_the_seeded_ranking():
    from whycam.metrics.ranks import pixel_ranks, top_pixels

    generator = torch.Generator().manual_seed(4)
    maps = (torch.rand(40, 9, 9, generator=generator) * 4).round()  # ties at most cuts
    maps[:10] = torch.rand(10, 9, 9, generator=generator)  # no ties
    counts = torch.randint(0, 82, (40,), generator=generator)
    assert torch.equal(top_pixels(maps, counts, 3), pixel_ranks(maps, True, 3) < counts[:, None, None])


def test_several_boxes_per_image_are_their_union_for_pixels_and_the_best_match_for_boxes():
    """(B, M, 4) boxes, padded with empty boxes: pixel metrics see the union of the boxes; the box
    metrics score the map's box against whichever object it fits best, so a map on the second object
    of an image scores as if that object were the only one."""
    maps = torch.zeros(2, 40, 40)
    maps[0, 22:34, 24:36] = 1.0  # image 0: on its second object
    maps[1, 2:12, 3:15] = 1.0  # image 1: on its only object
    boxes = torch.tensor([[[2, 2, 14, 12], [24, 22, 36, 34]], [[3, 2, 15, 12], [0, 0, 0, 0]]], dtype=torch.float32)
    union = torch.zeros(2, 40, 40, dtype=torch.bool)
    union[0, 2:12, 2:14] = union[0, 22:34, 24:36] = union[1, 2:12, 3:15] = True
    assert torch.equal(ground_truth_masks(boxes, maps), union)
    for name in ("auprc", "pointing_game", "energy_pointing_game", "topk_iou", "mask_iou"):
        several, masked = getattr(metrics, name)(maps, boxes), getattr(metrics, name)(maps, union)
        assert torch.equal(several.scores, masked.scores), name
    matched = torch.stack([boxes[0, 1], boxes[1, 0]])  # the object each map lies on, alone
    for name in ("box_accuracy", "max_box_accuracy"):
        several, alone = getattr(metrics, name)(maps, boxes), getattr(metrics, name)(maps, matched)
        assert several.value == alone.value == 1.0, name
        assert getattr(metrics, name)(maps, union).value < 1.0, name  # the union's bounding box misses
    with pytest.raises(ValueError, match="pad with 0, 0, 0, 0"):
        metrics.max_box_accuracy(maps, torch.tensor([[[5.0, 5, 1, 1]], [[0, 0, 4, 4]]]))
    with pytest.raises(ValueError, match=r"\(2, M, 4\) boxes"):
        metrics.auprc(maps, torch.zeros(3, 2, 4))


def test_box_iou_by_hand():
    """Half-open boxes, fractional and empty ones included; each expected IoU is worked out by hand."""
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 0.5, 0.5], [0, 0, 0, 0]])
    b = torch.tensor([[3, 0, 5, 2], [0, 3, 2, 5], [2, 2, 6, 6], [0, 0, 0.5, 0.25], [0, 0, 0, 0]])
    # apart in x only, apart in y only, 2x2 of 16 + 16 - 4, 0.125 of 0.25, both empty (0, not 0/0)
    expected = torch.tensor([0.0, 0.0, 4 / 28, 0.5, 0.0])
    assert torch.allclose(box_iou(a, b), expected, atol=1e-7)


def test_a_single_component_is_boxed_and_a_mask_truth_is_its_bounding_box():
    maps = torch.zeros(1, 10, 12)
    maps[0, 3:7, 2:8] = 1.0  # the only component at every tau: box (2, 3, 8, 7)
    for truth in (maps.bool(), torch.tensor([[2, 3, 8, 7]])):
        assert metrics.box_accuracy(maps, truth, tau=0.5).curves["iou"].item() == 1.0
    shifted = torch.tensor([[2, 3, 9, 7]])  # one column wider: IoU 24 / 28
    assert abs(metrics.box_accuracy(maps, shifted, tau=0.5).curves["iou"].item() - 24 / 28) < 1e-6
    # "best" keeps the component whose IoU is highest even when that IoU is below 1
    assert metrics.max_box_accuracy(maps, shifted, taus=torch.tensor([0.5]), iou_thresholds=(0.8,)).value == 1.0
    single = metrics.max_box_accuracy(maps, maps.bool(), taus=torch.tensor([0.5]), iou_thresholds=(0.99,))
    assert single.value == 1.0
