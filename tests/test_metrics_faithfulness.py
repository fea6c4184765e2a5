"""ROAD, deletion, insertion, Average Drop and Increase in Confidence: the pytorch-grad-cam oracle
for ROAD, the definitions recomputed by hand, and the left-half property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from whycam import metrics
from whycam.metrics import registry


class LeftTexture(nn.Module):
    """Class 0's logit grows with the high-frequency energy of the image's left half; class 1 opposite."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        left = images[..., : images.shape[-1] // 2].mean(1, keepdim=True)
        kernel = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])[None, None]
        energy = F.conv2d(left, kernel).abs().mean((1, 2, 3))
        return torch.stack([4 * (energy - 1.5), -4 * (energy - 1.5)], 1)


def _textured(count: int = 2, size: int = 24) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    checker = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2.0 - 1
    return checker.expand(count, 3, size, size) + 0.1 * torch.randn(count, 3, size, size, generator=generator)


def _halves(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    left = torch.zeros(count, size, size)
    left[..., : size // 2] = 1
    return left, 1 - left


def test_left_map_beats_right_map_on_road_deletion_insertion():
    model, images = LeftTexture(), _textured()
    left, right = _halves(2, 24)
    for metric in (metrics.road, metrics.deletion, metrics.insertion):
        good = metric(model, images, left, 0)
        bad = metric(model, images, right, 0)
        better = good.scores > bad.scores if good.higher_is_better else good.scores < bad.scores
        assert better.all(), (metric.__name__, good.scores, bad.scores)


def test_constant_map_removes_the_same_pixels_in_both_directions():
    model, images = LeftTexture(), _textured()
    result = metrics.road(model, images, torch.full((2, 24, 24), 0.3), 0, percentages=[20, 60])
    assert torch.equal(result.curves["morf"], result.curves["lerf"])
    assert torch.equal(result.scores, torch.zeros(2))


def test_road_matches_pytorch_grad_cam(resnet18):
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 40, 40, generator=generator)
    # ten levels of 160 pixels each: every percentile the peer takes falls between two levels, so
    # its threshold and whycam's exact pixel count remove the same pixels
    levels = [torch.randperm(1600, generator=generator).view(40, 40) // 160 for _ in range(2)]
    maps = torch.stack(levels) / 9.0
    classes = [3, 7]
    ours = metrics.road(resnet18, images, maps, classes, percentages=[10, 30, 50, 70, 90], noise=0.0)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    for order, peer_class in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
        for step, percentage in enumerate([10, 30, 50, 70, 90]):
            peer = peer_class(percentile=100 - percentage)  # the peer's percentile is the part kept
            peer.perturbation.imputer.noise = 0.0
            change = torch.from_numpy(peer(images, maps.numpy(), targets, resnet18)).float()
            ours_change = ours.curves[order][:, step] - ours.curves["original"][:, 0]
            assert (ours_change - change).abs().max() < 1e-5, (order, percentage)
    combined = ((ours.curves["lerf"] - ours.curves["morf"]) / 2).mean(1)
    assert torch.allclose(ours.scores, combined)


def test_road_accuracy_and_batching_do_not_change_results(resnet18, images):
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2))
    one = metrics.road(resnet18, images, maps, percentages=[25, 75], batch_size=1)
    many = metrics.road(resnet18, images, maps, percentages=[25, 75], batch_size=16)
    assert torch.allclose(one.curves["morf"], many.curves["morf"], atol=1e-5)
    predicted = resnet18(images).argmax(1)
    assert set(one.curves) == {"morf", "lerf", "morf_accuracy", "lerf_accuracy", "original"}
    logits = metrics.road(resnet18, images, maps, percentages=[25, 75], score="logit")
    expected = resnet18(images).gather(1, predicted[:, None])[:, 0]
    assert torch.allclose(logits.curves["original"][:, 0], expected)


def test_road_pixel_space_imputation_uses_the_transforms(resnet18, images):
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(2))
    identity = metrics.road(resnet18, images, maps, percentages=[50], noise=0.0)
    spaced = metrics.road(
        resnet18,
        images,
        maps,
        percentages=[50],
        noise=0.0,
        denormalize=lambda x: x * 2 + 1,
        normalize=lambda x: (x - 1) / 2,
    )
    assert torch.allclose(identity.curves["morf"], spaced.curves["morf"], atol=1e-5)  # imputation is affine
    with pytest.raises(ValueError, match="both"):
        metrics.road(resnet18, images, maps, denormalize=lambda x: x)


def _scores(model, images, target):
    with torch.no_grad():
        return model(images).softmax(1)[:, target]


def test_deletion_and_insertion_follow_the_definition():
    model, images = LeftTexture(), _textured(1, 8)
    maps = torch.arange(64.0).flip(0).view(1, 8, 8)  # raster order: pixel 0 first
    result = metrics.deletion(model, images, maps, 0, steps=4)
    curve = []
    for k in range(5):
        step = images.clone().view(1, 3, 64)
        step[..., : 16 * k] = 0
        curve.append(_scores(model, step.view(1, 3, 8, 8), 0))
    curve = torch.cat(curve)
    assert torch.allclose(result.curves["score"][0], curve, atol=1e-6)
    trapezoid = ((curve[1:] + curve[:-1]) / 2).sum() / 4
    assert torch.allclose(result.scores[0], trapezoid, atol=1e-6)
    inserted = metrics.insertion(model, images, maps, 0, steps=4, blur_sigma=1.0)
    assert inserted.curves["score"][0, -1] == pytest.approx(float(curve[0]), abs=1e-6)  # all inserted
    assert inserted.higher_is_better and not result.higher_is_better


def test_average_drop_and_increase_in_confidence_follow_the_paper(resnet18, images):
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probabilities = resnet18(images).softmax(1)
        classes = probabilities.argmax(1)
        original = probabilities.gather(1, classes[:, None])[:, 0]
        explained = resnet18(images * maps[:, None]).softmax(1).gather(1, classes[:, None])[:, 0]
    drop = metrics.average_drop(resnet18, images, maps)
    assert torch.allclose(drop.scores, 100 * (original - explained).clamp(min=0) / original, atol=1e-4)
    increase = metrics.increase_in_confidence(resnet18, images, maps)
    assert torch.equal(increase.scores, 100 * (explained > original).float())
    assert not drop.higher_is_better and increase.higher_is_better
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.average_drop(resnet18, images, maps * 2)


def test_model_is_given_back_untouched_and_bad_input_refused(resnet18, images):
    resnet18.train()
    try:
        before = {k: v.clone() for k, v in resnet18.state_dict().items()}
        metrics.deletion(resnet18, images, torch.rand(2, 64, 64), steps=2)
        assert resnet18.training
        assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    finally:
        resnet18.eval()
    with pytest.raises(ValueError, match="do not match"):
        metrics.road(resnet18, images, torch.rand(2, 32, 32))
    with pytest.raises(ValueError, match="percentages"):
        metrics.road(resnet18, images, torch.rand(2, 64, 64), percentages=[100])
    with pytest.raises(ValueError, match="score"):
        metrics.deletion(resnet18, images, torch.rand(2, 64, 64), score="margin")
    with pytest.raises(ValueError, match="out of range"):
        metrics.insertion(resnet18, images, torch.rand(2, 64, 64), 99)


def test_result_summary_is_seeded():
    result = metrics.MetricResult("x", torch.arange(10.0), True)
    assert result.value == pytest.approx(4.5)
    assert result.interval(seed=1) == result.interval(seed=1)
    # the percentiles of the means of 1000 resamples drawn with replacement by a generator seeded 0
    indices = torch.randint(10, (1000, 10), generator=torch.Generator().manual_seed(0))
    expected = np.percentile(indices.double().mean(1).numpy(), [2.5, 97.5])
    assert result.interval() == pytest.approx(tuple(expected), abs=1e-12)
    assert "higher is better" in str(result)


def test_the_metric_decorator_records_what_it_is_told():
    """``metric`` runs at import for every metric; here it runs again where a test can watch it."""

    def probe_metric(maps, truth):
        return maps

    try:
        assert registry.metric("localisation", truth="boxes", higher_is_better=False)(probe_metric) is probe_metric
        entry = registry.metrics()["probe_metric"]
        assert (entry.name, entry.function, entry.kind, entry.truth, entry.higher_is_better) == (
            "probe_metric",
            probe_metric,
            "localisation",
            "boxes",
            False,
        )
        registry.metric("faithfulness")(probe_metric)
        entry = registry.metrics()["probe_metric"]
        assert (entry.kind, entry.truth, entry.higher_is_better) == ("faithfulness", None, True)
    finally:
        registry._REGISTRY.pop("probe_metric", None)
    for kind, truth in (("speed", None), ("localisation", None), ("faithfulness", "mask"), ("localisation", "pixels")):
        with pytest.raises(ValueError):
            registry.metric(kind, truth=truth)
