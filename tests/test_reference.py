"""Reference statistics: exact streaming and merging, shrinkage equal to scikit-learn's, exact save/load."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from sklearn.covariance import OAS, LedoitWolf

from whycam import ReferenceBank, ReferenceStats
from whycam.reference import (
    FORMAT_VERSION,
    NotFittedError,
    ReferenceMismatchError,
    model_fingerprint,
    nearest_solve,
    read_tensors,
)


def _data(n: int, dim: int, seed: int = 0, shift: float = 1.0) -> torch.Tensor:
    """Correlated, non-centred, unequally scaled embeddings."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    scale = torch.rand(dim, generator=generator, dtype=torch.float64) * 2
    return (torch.randn(n, dim, generator=generator, dtype=torch.float64) * scale) @ mixing + shift


def _equal_stats(a: ReferenceStats, b: ReferenceStats, tol: float = 1e-10) -> None:
    assert a.count_ == b.count_
    for name in ("sum_", "outer_", "moment3_", "moment4_"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.allclose(x, y, rtol=tol, atol=tol * max(1.0, float(y.abs().max()))), name


def test_streaming_and_merging_equal_the_concatenated_data():
    data = _data(57, 12)
    whole = ReferenceStats.from_embeddings(data)
    streamed = ReferenceStats(12)
    for chunk in data.split(5):
        streamed.update(chunk)
    merged = (
        ReferenceStats.from_embeddings(data[:20])
        + ReferenceStats.from_embeddings(data[20:31])
        + ReferenceStats.from_embeddings(data[31:])
    )
    summed = sum([ReferenceStats.from_embeddings(c) for c in data.split(19)])
    for stats in (streamed, merged, summed):
        _equal_stats(stats, whole)
        assert torch.allclose(stats.mean_, data.mean(0), atol=1e-12)
        assert torch.allclose(stats.empirical_covariance(), torch.cov(data.T, correction=0), atol=1e-10)


@pytest.mark.parametrize("n, dim, shift", [(10, 50, 0.0), (200, 30, 3.0), (40, 40, -2.0), (10, 300, 1.0), (5, 1, 0.5)])
def test_ledoit_wolf_and_oas_equal_scikit_learn(n, dim, shift):
    """The intensities come from the sufficient statistics only, yet equal sklearn's on the raw data."""
    data = _data(n, dim, seed=n + dim, shift=shift)
    stats = ReferenceStats.from_embeddings(data[: n // 2]) + ReferenceStats.from_embeddings(data[n // 2 :])
    for shrinkage, oracle in (("ledoit-wolf", LedoitWolf()), ("oas", OAS())):
        oracle.fit(data.numpy())
        shrunk = stats.shrunk(shrinkage)
        assert shrunk.method == shrinkage
        assert abs(shrunk.intensity - oracle.shrinkage_) < 1e-10
        assert np.abs(shrunk.covariance.numpy() - oracle.covariance_).max() < 1e-10
        assert 0 <= shrunk.intensity <= 1


def test_fixed_and_ridge_shrinkage():
    data = _data(30, 8)
    stats = ReferenceStats.from_embeddings(data)
    empirical = stats.empirical_covariance()
    mu, eye = empirical.trace() / 8, torch.eye(8, dtype=torch.float64)
    assert torch.allclose(stats.covariance(0.25), 0.75 * empirical + 0.25 * mu * eye)
    assert torch.allclose(stats.covariance(1.0), mu * eye)
    assert torch.allclose(stats.covariance(("ridge", 0.5)), empirical + 0.5 * eye)
    assert stats.shrunk(("ridge", 0.5)).intensity == 0.5 and stats.shrunk(0.25).method == "fixed"
    for bad in ("lw", 1.5, -0.1, ("ridge", -1), ("tikhonov", 1.0), True):
        with pytest.raises(ValueError, match="shrinkage"):
            stats.covariance(bad)


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", "oas"])
def test_shrinkage_keeps_the_covariance_positive_definite_with_n_far_below_k(shrinkage):
    data = _data(10, 2048, seed=3)
    shrunk = ReferenceStats.from_embeddings(data).shrunk(shrinkage)  # its Cholesky factor exists: S is PD
    assert shrunk.intensity > 0
    if shrinkage == "ledoit-wolf":
        assert torch.linalg.eigvalsh(shrunk.covariance).min() > 0
    rhs = torch.randn(3, 2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solved = shrunk.solve(rhs)
    assert torch.allclose(shrunk.covariance @ solved.T, rhs.T, atol=1e-8)


def test_singular_and_too_small_groups_are_refused():
    data = _data(10, 50)
    with pytest.raises(ValueError, match="not positive definite.*ledoit-wolf"):
        ReferenceStats.from_embeddings(data).covariance(0.0)
    with pytest.raises(ValueError, match="not positive definite"):
        ReferenceStats.from_embeddings(torch.ones(6, 4)).covariance()
    with pytest.raises(ValueError, match="at least 2 embeddings.*has 1"):
        ReferenceStats.from_embeddings(data[:1]).covariance()
    with pytest.raises(NotFittedError, match=r"no embeddings yet: update\(embeddings\) first"):
        _ = ReferenceStats(3).mean_
    with pytest.raises(ValueError, match=r"\(n, 50\)"):
        ReferenceStats(50).update(torch.randn(4, 49))
    with pytest.raises(ValueError, match="NaN"):
        ReferenceStats.from_embeddings(torch.tensor([[1.0, float("nan")]]))


def test_the_cholesky_factor_is_cached_per_setting_and_reset_by_an_update():
    stats = ReferenceStats.from_embeddings(_data(20, 6))
    assert stats.shrunk("oas") is stats.shrunk("oas")
    assert stats.shrunk("oas") is not stats.shrunk("ledoit-wolf")
    before = stats.shrunk("oas")
    stats.update(_data(3, 6, seed=9))
    assert stats.shrunk("oas") is not before and stats.count_ == 23


def test_merge_refuses_statistics_of_another_layer():
    a = ReferenceStats.from_embeddings(_data(5, 4), meta={"layer": "layer4", "embedding": "avg"})
    b = ReferenceStats.from_embeddings(_data(5, 4), meta={"layer": "layer3", "embedding": "avg"})
    with pytest.raises(ReferenceMismatchError, match="layer 'layer3'.*layer 'layer4'"):
        a + b
    with pytest.raises(ValueError, match="4 and 5 channels"):
        a + ReferenceStats.from_embeddings(_data(5, 5))
    merged = a + ReferenceStats.from_embeddings(_data(5, 4), meta={"layer": "layer4", "input_size": "64x64"})
    assert merged.meta == {"layer": "layer4", "embedding": "avg", "input_size": "64x64"}


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_and_load_round_trip_exactly(tmp_path, suffix):
    meta = {"model": "abc", "layer": "layer4", "embedding": "max", "normalize": "false", "input_size": "64x64"}
    stats = ReferenceStats.from_embeddings(_data(9, 7), meta=meta, keep_embeddings=True)
    path = stats.save(tmp_path / f"stats{suffix}")
    loaded = ReferenceStats.load(path)
    assert loaded.meta == meta and loaded.count_ == 9 and loaded.dim == 7
    for name in ("sum_", "outer_", "moment3_", "moment4_", "embeddings_"):
        assert torch.equal(getattr(loaded, name), getattr(stats, name)), name
    assert torch.equal(loaded.covariance(), stats.covariance())
    plain = ReferenceStats.load(ReferenceStats.from_embeddings(_data(4, 3)).save(tmp_path / f"plain{suffix}"))
    assert plain.embeddings_ is None


def test_files_of_another_kind_or_format_are_refused(tmp_path):
    stats = ReferenceStats.from_embeddings(_data(4, 3))
    with pytest.raises(ValueError, match=r"\*.safetensors or \*.npz"):
        stats.save(tmp_path / "stats.pt")
    bank = ReferenceBank.from_embeddings(_data(4, 3), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="holds a ReferenceBank, not a ReferenceStats"):
        ReferenceStats.load(bank.save(tmp_path / "bank.npz"))
    np.savez(tmp_path / "other.npz", sum=np.zeros(3))
    with pytest.raises(ValueError, match="not a ReferenceStats"):
        ReferenceStats.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ReferenceStats.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_file_without_this_format_version_is_refused(tmp_path, suffix):
    """The version is written, and read back: a missing or other version is refused with the fix."""
    stats = ReferenceStats.from_embeddings(_data(6, 3), meta={"layer": "layer4"})
    tensors, meta = read_tensors(stats.save(tmp_path / f"ok{suffix}"), "ReferenceStats")
    assert meta == {"layer": "layer4"} and FORMAT_VERSION == "1"
    for version, message in ((None, "has no format version"), ("0", "has format version '0'")):
        written = {"layer": "layer4", "kind": "ReferenceStats"} | (
            {} if version is None else {"whycam_format": version}
        )
        path = tmp_path / f"v{version}{suffix}"
        if suffix == ".npz":
            np.savez(path, **{k: v.numpy() for k, v in tensors.items()}, __meta__=np.array(json.dumps(written)))
        else:
            save_file(tensors, str(path), metadata=written)
        with pytest.raises(ValueError, match=message + r".*reads version '1' only; build the statistics again"):
            ReferenceStats.load(path)


def test_bank_groups_equal_the_statistics_of_their_rows():
    data = _data(40, 6)
    labels = [i % 4 for i in range(40)]
    bank = ReferenceBank()
    for rows in torch.arange(40).split(7):
        bank.update(data[rows], [labels[i] for i in rows])
    assert bank.labels == [0, 1, 2, 3]
    rows_of = {c: [i for i in range(40) if labels[i] == c] for c in range(4)}
    _equal_stats(bank[2], ReferenceStats.from_embeddings(data[rows_of[2]]))
    _equal_stats(bank.group([1, 3]), ReferenceStats.from_embeddings(data[sorted(rows_of[1] + rows_of[3])]))
    others = sorted(rows_of[1] + rows_of[2] + rows_of[3])
    _equal_stats(bank.all_but(0), ReferenceStats.from_embeddings(data[others]))
    _equal_stats(bank.all(), ReferenceStats.from_embeddings(data))
    assert bank.group([3, 1]) is bank.group([1, 3])
    with pytest.raises(KeyError, match=r"no class 7; its classes are \[0, 1, 2, 3\]"):
        bank.all_but(7)
    with pytest.raises(ValueError, match="no class is left"):
        bank.all_but([0, 1, 2, 3])
    with pytest.raises(ValueError, match="40 embeddings but 3 labels"):
        bank.update(data, [0, 1, 2])


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_bank_save_and_load_round_trip(tmp_path, suffix):
    bank = ReferenceBank.from_embeddings(
        _data(12, 5), ["cat", "dog", "cat", "eel"] * 3, meta={"layer": "features"}, keep_embeddings=True
    )
    loaded = ReferenceBank.load(bank.save(tmp_path / f"bank{suffix}"))
    assert loaded.labels == ["cat", "dog", "eel"] and loaded.meta == {"layer": "features"}
    for label in bank.labels:
        _equal_stats(loaded[label], bank[label], tol=0)
        assert torch.equal(loaded[label].embeddings_, bank[label].embeddings_)


@pytest.mark.parametrize("shrinkage", ["ledoit-wolf", "oas", 0.3, 1.0, ("ridge", 0.2)])
def test_nearest_solve_equals_the_statistics_of_the_nearest_references(shrinkage):
    """The batched Woodbury solve equals S^-1 (t - m) of the k nearest references, solved in full."""
    references, targets = _data(60, 24, seed=1), _data(4, 24, seed=2)
    k = 9
    solved = nearest_solve(references, targets, k, shrinkage)
    for target, weights in zip(targets, solved, strict=True):
        nearest = torch.cdist(target[None], references)[0].argsort()[:k]
        stats = ReferenceStats.from_embeddings(references[nearest])
        assert torch.allclose(weights, stats.solve(target - stats.mean_, shrinkage), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="2 <= k <= the number of references"):
        nearest_solve(references, targets, 61, "oas")
    with pytest.raises(ValueError, match="positive ridge"):
        nearest_solve(references, targets, k, 0.0)


def test_model_fingerprint_sees_every_value():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    twin = copy.deepcopy(model)
    assert model_fingerprint(model) == model_fingerprint(twin)
    with torch.no_grad():
        twin.layer3[0].bn1.running_mean[5] += 1e-6
    assert model_fingerprint(model) != model_fingerprint(twin)


def test_only_the_sufficient_statistics_are_kept_unless_asked():
    """By default a bank keeps n, the sum and the sum of outer products, never the embeddings."""
    x = _data(6, 4)
    bank = ReferenceBank.from_embeddings(x, [0, 1] * 3)
    assert all(stats.embeddings_ is None for stats in bank.classes.values())
    assert ReferenceStats.from_embeddings(x).embeddings_ is None
    kept = ReferenceBank.from_embeddings(x, [0, 1] * 3, keep_embeddings=True)
    torch.testing.assert_close(kept.classes[1].embeddings_, x[1::2].double())


@pytest.mark.parametrize("k", [2, 5])
def test_nearest_solve_accepts_k_from_2_to_n_and_equals_numpy(k):
    """k = 2 and k = n are both valid; float32 targets are read in the references' float64. Expected:
    S = 0.5 C + 0.5 (tr C / K) I of the k nearest (C divided by k), solved by numpy."""
    references, target = _data(5, 3, seed=3), torch.tensor([[0.3, -0.2, 0.9]], dtype=torch.float32)
    x, t = references.numpy(), target.double().numpy()[0]
    near = x[np.argsort(np.linalg.norm(x - t, axis=1))[:k]]
    centred = near - near.mean(0)
    covariance = centred.T @ centred / k
    shrunk = 0.5 * covariance + 0.5 * np.trace(covariance) / 3 * np.eye(3)
    expected = np.linalg.solve(shrunk, t - near.mean(0))
    np.testing.assert_allclose(nearest_solve(references, target, k, 0.5)[0].numpy(), expected, rtol=1e-9)
    for bad in (1, 6):
        with pytest.raises(ValueError, match="2 <= k <= the number of references"):
            nearest_solve(references, target, bad, 0.5)


def test_a_statistics_file_without_its_sums_is_refused():
    tensors = ReferenceStats.from_embeddings(_data(4, 3)).tensors()
    del tensors["outer"]
    with pytest.raises(ValueError, match="missing outer"):
        ReferenceStats.from_tensors(tensors, {})
