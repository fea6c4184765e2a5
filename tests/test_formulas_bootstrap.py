"""The 95% percentile bootstrap intervals printed with every metric, against scipy.stats.bootstrap's
percentile method (its own resampling: agreement within the Monte Carlo error, which is far below
what a wrong confidence level or a wrong tail would move) and against numpy percentiles of the same
resampled means (exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap

from whycam import metrics


def skewed_scores() -> torch.Tensor:
    """40 scores from an exponential distribution: a skewed mean, so an interval is not symmetric."""
    return torch.from_numpy(np.random.default_rng(0).exponential(size=40))


def test_interval_matches_scipy_percentile_bootstrap():
    scores = skewed_scores()
    result = metrics.MetricResult("x", scores, True)
    low, high = result.interval(resamples=20000)
    peer = bootstrap(
        (scores.numpy(),), np.mean, confidence_level=0.95, n_resamples=20000, method="percentile", random_state=1
    ).confidence_interval
    # measured: the ends move by up to 0.007 between resampling seeds; the 90% or the 97.5% interval
    # moves them by 0.04 to 0.07
    assert low == pytest.approx(peer.low, abs=0.02)
    assert high == pytest.approx(peer.high, abs=0.02)
    for confidence in (0.5, 0.9):
        low, high = result.interval(confidence, resamples=20000)
        peer = bootstrap(
            (scores.numpy(),),
            np.mean,
            confidence_level=confidence,
            n_resamples=20000,
            method="percentile",
            random_state=1,
        ).confidence_interval
        assert (low, high) == pytest.approx((peer.low, peer.high), abs=0.02), confidence


def test_interval_is_the_percentiles_of_the_resampled_means():
    """Same resamples as whycam's documented scheme (a torch generator seeded with ``seed`` draws
    (resamples, B) indices with replacement): numpy's linear percentiles of their means."""
    scores = skewed_scores()
    result = metrics.MetricResult("x", scores, False)
    for seed, confidence in ((0, 0.95), (3, 0.8)):
        indices = torch.randint(40, (1000, 40), generator=torch.Generator().manual_seed(seed)).numpy()
        means = scores.numpy()[indices].mean(1)
        tail = 100 * (1 - confidence) / 2
        expected = np.percentile(means, [tail, 100 - tail])
        assert result.interval(confidence, seed=seed) == pytest.approx(tuple(expected), abs=1e-12)
    summary = result.summary
    indices = torch.randint(40, (1000, 40), generator=torch.Generator().manual_seed(0)).numpy()
    expected = np.percentile(scores.numpy()[indices].mean(1), [2.5, 97.5])
    assert summary == pytest.approx({"value": float(scores.mean()), "low": expected[0], "high": expected[1]})
    assert str(result) == (
        f"x: {float(scores.mean()):.4f} [95% CI {expected[0]:.4f}, {expected[1]:.4f}] over 40 images (lower is better)"
    )


def test_a_custom_statistic_is_bootstrapped_over_images():
    """A metric whose headline is not the mean (MaxBoxAcc's best threshold over the dataset) resamples
    images and recomputes that statistic on each resample: here the median of the scores."""
    scores = skewed_scores()
    result = metrics.MetricResult("x", scores, True, statistic=lambda idx: scores[idx].median(1).values)
    assert result.value == float(scores.median())
    low, high = result.interval(resamples=4000)
    peer = bootstrap(
        (scores.numpy(),), np.median, n_resamples=4000, method="percentile", random_state=2
    ).confidence_interval
    assert (low, high) == pytest.approx((peer.low, peer.high), abs=0.05)


def test_nan_scores_are_left_out_of_the_mean():
    scores = torch.tensor([1.0, float("nan"), 3.0])
    assert metrics.MetricResult("x", scores, True).value == pytest.approx(2.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_a_confidence_outside_0_1_is_refused(confidence):
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        metrics.MetricResult("x", skewed_scores(), True).interval(confidence)
