"""DiffCAM: the Fisher direction, an independent numpy/scikit-learn oracle, the questions, the refusals."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.linalg
import timm
import torch
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import whycam
from whycam import DiffCAM, ReferenceBank, ReferenceStats
from whycam.methods.base import normalize_maps
from whycam.reference import NotFittedError, ReferenceMismatchError


def _cnn(pool: nn.Module | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        pool or nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


@pytest.fixture
def cnn():
    return _cnn()


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(40, 3, 32, 32, generator=generator), torch.arange(40) % 4


def _activations(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The layer's output through a plain forward hook (independent of whycam's taps)."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().double().numpy()))
    with torch.no_grad():
        model(images)
    handle.remove()
    return seen[0]


def test_map_equals_an_independent_numpy_and_scikit_learn_computation(cnn, data):
    """M = sum_k w_k A_k with w = S^-1 (z - mu), S from sklearn's LedoitWolf, solved by numpy."""
    references, images = data[0][:30], data[0][30:33]
    dc = DiffCAM(cnn, layer="3", shrinkage="ledoit-wolf").fit(references)
    reference_embeddings = _activations(cnn, cnn[3], references).mean((2, 3))
    activations = _activations(cnn, cnn[3], images)
    oracle = LedoitWolf().fit(reference_embeddings)
    weights = np.linalg.solve(oracle.covariance_, (activations.mean((2, 3)) - oracle.location_).T).T
    expected = np.einsum("bk,bkhw->bhw", weights, activations)
    raw = dc(images, raw=True)
    assert raw.shape == (3, 16, 16) and raw.dtype == torch.float32
    assert np.abs(raw.numpy() - expected).max() < 1e-4 * np.abs(expected).max()
    # relative: the fourth moment from the sums cancels digits on these small, off-centre embeddings (1e-9 seen)
    assert abs(dc.reference_.shrunk().intensity - oracle.shrinkage_) < 1e-8 * oracle.shrinkage_
    maps = dc(images)
    assert maps.shape == (3, 32, 32) and float(maps.min()) == 0 and float(maps.max()) == 1


def test_weights_maximise_the_fisher_criterion_and_are_the_generalised_eigenvector(cnn, data):
    dc = DiffCAM(cnn, layer="3", shrinkage="ledoit-wolf").fit(data[0][:30])
    z = dc.embed(data[0][30:31])[0]
    weights = dc.direction(z[None], dc.reference_)[0]
    difference = (z - dc.reference_.mean_).numpy()
    covariance = dc.reference_.covariance().numpy()

    def criterion(w: np.ndarray) -> np.ndarray:
        return (w @ difference) ** 2 / np.einsum("...i,ij,...j->...", w, covariance, w)

    random = np.random.default_rng(0).standard_normal((5000, len(difference)))
    best = criterion(weights.numpy())
    assert best >= criterion(random).max()
    assert np.isclose(best, difference @ np.linalg.solve(covariance, difference), rtol=1e-10)
    values, vectors = scipy.linalg.eigh(np.outer(difference, difference), covariance)
    leading = vectors[:, -1]
    cosine = abs(leading @ weights.numpy()) / np.linalg.norm(leading) / np.linalg.norm(weights.numpy())
    assert cosine > 1 - 1e-10 and np.isclose(values[-1], best, rtol=1e-8)


def test_identity_covariance_reduces_to_the_mean_difference(cnn, data):
    """shrinkage=1 gives S = (tr C / K) I: no whitening, w proportional to z - mu."""
    dc = DiffCAM(cnn, layer="3", shrinkage=1.0).fit(data[0][:30])
    z = dc.embed(data[0][30:34])
    weights = dc.direction(z, dc.reference_)
    scale = dc.reference_.empirical_covariance().trace() / dc.reference_.dim
    assert torch.allclose(weights * scale, z - dc.reference_.mean_, rtol=1e-12, atol=1e-14)


def test_one_forward_pass_stopped_at_the_layer_no_gradient_and_the_model_restored(cnn, data):
    dc = DiffCAM(cnn, layer="3").fit(data[0][:20])
    head_calls = []
    counter = cnn[6].register_forward_hook(lambda *args: head_calls.append(1))
    flags = [p.requires_grad for p in cnn.parameters()]
    maps = dc(data[0][20:24])
    counter.remove()
    assert maps.shape == (4, 32, 32) and head_calls == []
    assert all(p.grad is None for p in cnn.parameters())
    assert [p.requires_grad for p in cnn.parameters()] == flags and not cnn.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())
    bad = ReferenceStats.from_embeddings(torch.randn(5, 16), meta={"embedding": "max"})
    with pytest.raises(ReferenceMismatchError):
        DiffCAM(cnn, layer="3").fit(bad)(data[0][:2])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())


def test_a_layer_called_twice_is_read_at_its_last_call_and_kept_from_in_place_changes(data):
    """A shared activation module (EfficientNet's ``_swish``) runs the whole pass and keeps the last call,
    as the CAM taps do; an in-place ReLU after the layer does not alter what was captured."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem, self.body = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
            self.act = nn.Tanh()

        def forward(self, x):
            x = self.act(self.body(self.act(self.stem(x))))
            return torch.relu_(x.sub_(0.1)).mean((2, 3))

    model = Shared().eval()
    images = data[0][:12]
    dc = DiffCAM(model, layer="act").fit(images[:10])
    last = np.tanh(_activations(model, model.body, images[10:]))
    assert dc.reference_.dim == 5
    assert np.allclose(dc.embed(images[10:]).numpy(), last.mean((2, 3)), atol=1e-6)
    assert dc(images[10:]).shape == (2, 32, 32)


def test_results_are_deterministic(cnn, data):
    first = DiffCAM(cnn, layer="3").fit(data[0][:30])
    second = DiffCAM(cnn, layer="3").fit(data[0][:30])
    assert torch.equal(first.reference_.outer_, second.reference_.outer_)
    assert torch.equal(first(data[0][30:]), second(data[0][30:]))
    assert torch.equal(first(data[0][30:], raw=True), first(data[0][30:], raw=True))


def test_every_form_of_references_gives_the_same_statistics(cnn, data):
    images, labels = data
    expected = DiffCAM(cnn, layer="3").fit(images).reference_
    forms = [images, list(images.split(7)), DataLoader(TensorDataset(images), batch_size=9)]
    for form in forms:
        stats = DiffCAM(cnn, layer="3").fit(form, batch_size=11).reference_
        assert stats.count_ == 40 and torch.allclose(stats.outer_, expected.outer_, rtol=1e-12)
    labelled = [(images, labels), (images, labels.tolist()), DataLoader(TensorDataset(images, labels), batch_size=8)]
    for form in labelled:
        dc = DiffCAM(cnn, layer="3").fit(form)
        assert dc.bank_.labels == [0, 1, 2, 3] and dc.reference_.count_ == 40
        assert torch.allclose(dc.bank_[2].sum_, DiffCAM(cnn, layer="3").fit(images[labels == 2]).reference_.sum_)


def test_auto_embedding_follows_the_models_own_pooling(data):
    images = data[0][:6]

    class SpatialMax(nn.Module):
        def forward(self, x):
            return x.amax((2, 3))

    cases = [
        (_cnn(nn.AdaptiveAvgPool2d(1)), "avg"),
        (_cnn(nn.AdaptiveMaxPool2d(1)), "max"),
        (_cnn(SpatialMax()), "max"),
        (_cnn(nn.AdaptiveMaxPool2d(1))[:4], "avg"),
    ]
    for model, expected in cases:
        dc = DiffCAM(model, layer="1").fit(images)
        assert dc.reference_.meta["embedding"] == expected
        z = dc.embed(images[:2])
        pooled = _activations(model, model[1], images[:2])
        assert np.allclose(z.numpy(), pooled.max((2, 3)) if expected == "max" else pooled.mean((2, 3)))
    larger = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for pool in ("max", "avg"):  # timm's SelectAdaptivePool2d (pool + flatten in one module)
        backbone = timm.create_model("resnet18", pretrained=False, num_classes=3, global_pool=pool).eval()
        assert DiffCAM(backbone, layer="layer3").fit(larger).reference_.meta["embedding"] == pool
    normalized = DiffCAM(_cnn(), layer="3", normalize=True, embedding="max").fit(images)
    assert torch.allclose(normalized.embed(images).norm(dim=1), torch.ones(6, dtype=torch.float64))
    assert normalized.reference_.meta["normalize"] == "true"


def test_callable_embedding(cnn, data):
    def upper_half(a):
        return a[:, :, : a.shape[2] // 2].mean((2, 3))

    dc = DiffCAM(cnn, layer="3", embedding=upper_half).fit(data[0][:20])
    assert dc.reference_.meta["embedding"] == "callable:test_callable_embedding.<locals>.upper_half"
    assert dc(data[0][20:22]).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="must return"):
        DiffCAM(cnn, layer="3", embedding=lambda a: a.mean(1)).fit(data[0][:4])


def test_feature_extractor_and_headless_backbone(resnet18, images):
    """An nn.Sequential with no pooling or head, and a self-supervised-style backbone (fc = Identity)."""
    references = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    extractor = nn.Sequential(*list(resnet18.children())[:-2]).eval()
    dc = DiffCAM(extractor).fit(references)
    assert dc.reference_.meta["layer"] == "7" and dc.reference_.meta["embedding"] == "avg"
    assert dc(images).shape == (2, 64, 64)
    backbone = copy.deepcopy(resnet18)
    backbone.fc = nn.Identity()
    dc = DiffCAM(backbone, layer="layer4").fit(references)
    assert dc.reference_.dim == 512 and dc.reference_.shrunk().intensity > 0
    assert dc(images).shape == (2, 64, 64)


def test_vision_transformer_tokens_and_class_token():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3).eval()
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dc = DiffCAM(vit).fit(images[:8])
    assert dc.reference_.meta["embedding"] == "avg" and dc.reference_.meta["layer"] == "blocks.11.norm1"
    raw = dc(images[8:], raw=True)
    assert raw.shape == (2, 4, 4)
    tokens = _activations(vit, vit.blocks[11].norm1, images[8:])
    assert np.allclose(dc.embed(images[8:]).numpy(), tokens[:, 1:].mean(1), atol=1e-6)
    cls = DiffCAM(vit, embedding="cls").fit(images[:8])
    assert np.allclose(cls.embed(images[8:]).numpy(), tokens[:, 0], atol=1e-6)
    assert cls(images[8:]).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="class token"):
        DiffCAM(_cnn(), layer="3", embedding="cls").fit(images[:4])


def test_nearest_references_use_the_statistics_of_the_k_nearest(cnn, data):
    references, images = data[0][:30], data[0][30:33]
    k = 6
    dc = DiffCAM(cnn, layer="3", k=k).fit(references)
    assert dc.reference_.embeddings_.shape == (30, 16) and dc.reference_.meta["k"] == "6"
    raw = dc(images, raw=True)
    embeddings, z = dc.reference_.embeddings_, dc.embed(images)
    for i in range(3):
        nearest = torch.cdist(z[i : i + 1], embeddings)[0].argsort()[:k]
        local = DiffCAM(cnn, layer="3").fit(ReferenceStats.from_embeddings(embeddings[nearest]))
        expected = local(images[i : i + 1], raw=True)[0]
        assert (raw[i] - expected).abs().max() < 1e-5 * expected.abs().max()
    with pytest.raises(ValueError, match="keep none"):
        DiffCAM(cnn, layer="3", k=k).fit(DiffCAM(cnn, layer="3").fit(references).reference_)(images)


def test_questions_use_their_reference_groups(cnn, data):
    images, labels = data
    dc = DiffCAM(cnn, layer="3", shrinkage="ledoit-wolf").fit((images, labels))
    query = images[:3]
    bank = dc.bank_
    assert torch.equal(dc.why(query, 1), dc.clone().fit(bank.all_but(1))(query))
    assert torch.equal(dc.why_not(query, 2, raw=True), dc.clone().fit(bank.group(2))(query, raw=True))
    assert torch.equal(dc.unusual(query, 0), dc.clone().fit(bank[0])(query))
    # raw passes through each question, and its default is the normalised map
    assert torch.equal(dc.why(query, 1, raw=True), dc.clone().fit(bank.all_but(1))(query, raw=True))
    assert torch.equal(dc.why_not(query, 2), dc.clone().fit(bank.group(2))(query))
    assert torch.equal(dc.unusual(query, 0, raw=True), dc.clone().fit(bank[0])(query, raw=True))
    assert dc.reference_ is bank.all()  # a question leaves the fitted group as it was
    contrast = dc.contrast(query, 0, [2, 3], raw=True)
    reference = bank.group([2, 3])
    weights = reference.solve(bank[0].mean_ - reference.mean_)
    activations = torch.from_numpy(_activations(cnn, cnn[3], query))
    assert torch.allclose(
        contrast.double(),
        torch.einsum("k,bkhw->bhw", weights, activations),
        rtol=1e-4,
        atol=1e-6 * float(activations.abs().max() * weights.abs().max()),
    )
    unlabelled = DiffCAM(cnn, layer="3").fit(images)
    with pytest.raises(RuntimeError, match=r"\(images, labels\)"):
        unlabelled.why(query, 1)


def test_a_map_with_no_difference_is_zeros_not_nan(cnn, data):
    dc = DiffCAM(cnn, layer="3").fit((data[0], torch.zeros(40)))
    assert torch.equal(dc.contrast(data[0][:2], 0, 0), torch.zeros(2, 32, 32))
    assert torch.equal(dc.contrast(data[0][:2], 0, 0, raw=True), torch.zeros(2, 16, 16))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_saved_statistics_and_banks_give_the_same_maps(tmp_path, cnn, data, suffix):
    images, labels = data
    dc = DiffCAM(cnn, layer="3", shrinkage="oas").fit(images[:30])
    path = dc.reference_.save(tmp_path / f"s{suffix}")
    loaded = DiffCAM(cnn, shrinkage="oas").fit(ReferenceStats.load(path))
    assert loaded.layers(images)[0][0] == "3"
    assert torch.equal(loaded(images[30:]), dc(images[30:]))
    banked = DiffCAM(cnn, layer="3").fit((images, labels))
    restored = DiffCAM(cnn, layer="3").fit(ReferenceBank.load(banked.bank_.save(tmp_path / f"b{suffix}")))
    assert torch.equal(restored.why(images[:2], 3), banked.why(images[:2], 3))


def test_statistics_of_another_model_layer_or_embedding_are_refused(cnn, data):
    images = data[0][:10]
    stats = DiffCAM(cnn, layer="3").fit(images).reference_
    with pytest.raises(ReferenceMismatchError, match="model .*fit again"):
        DiffCAM(_cnn(seed=1), layer="3").fit(stats)
    with pytest.raises(ReferenceMismatchError, match="layer '3'.*layer '1'.*use layer='3'"):
        DiffCAM(cnn, layer="1").fit(stats)
    with pytest.raises(ReferenceMismatchError, match="embedding 'avg'.*embedding 'max'"):
        DiffCAM(cnn, layer="3", embedding="max").fit(stats)
    max_stats = DiffCAM(cnn, layer="3", embedding="max").fit(images).reference_
    auto = DiffCAM(cnn, layer="3").fit(max_stats)  # "auto" is resolved at the first call: avg here
    with pytest.raises(ReferenceMismatchError, match="embedding 'max'.*embedding 'avg'"):
        auto(images)
    with pytest.raises(ReferenceMismatchError, match="normalize"):
        DiffCAM(cnn, layer="3", normalize=True).fit(stats)


def test_bad_use_is_refused_with_the_fix(cnn, data):
    images = data[0]
    with pytest.raises(RuntimeError, match=r"no reference group yet: call dc.fit"):
        DiffCAM(cnn, layer="3")(images[:2])
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        DiffCAM(cnn, layer="3").fit(images[:1])(images[:2])
    with pytest.raises(ValueError, match="embedding='mean'"):
        DiffCAM(cnn, embedding="mean")
    with pytest.raises(ValueError, match="k=1"):
        DiffCAM(cnn, k=1)
    with pytest.raises(ValueError, match="shrinkage"):
        DiffCAM(cnn, shrinkage="shrunk")
    with pytest.raises(ValueError, match="one layer"):
        DiffCAM(cnn, layer=["1", "3"])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        DiffCAM(cnn, layer="3").fit(images[0])
    with pytest.raises(ValueError, match="held no images"):
        DiffCAM(cnn, layer="3").fit([])
    with pytest.raises(ValueError, match="have no labels and this batch has some"):
        DiffCAM(cnn, layer="3").fit([images[:5], (images[5:10], torch.zeros(5))])
    with pytest.raises(ValueError, match="12 channels"):
        DiffCAM(cnn, layer="3").fit(ReferenceStats.from_embeddings(torch.randn(5, 12)))(images[:1])


def test_registered_as_a_method():
    method = whycam.methods()["diffcam"]
    assert method is DiffCAM and not method.needs_target and not method.uses_gradient


def test_default_shrinkage_is_the_one_chosen_on_the_validation_splits(cnn, data):
    """docs/results.md: a fixed intensity 0.5 beat Ledoit-Wolf on the validation split of all three tasks."""
    dc = DiffCAM(cnn, layer="3").fit(data[0][:30])
    shrunk = dc.reference_.shrunk(dc.shrinkage)
    assert dc.shrinkage == 0.5 and shrunk.intensity == 0.5


# ----------------------------------------------------------------------------- scikit-learn's shape
def test_not_fitted_is_a_clear_error(cnn, data):
    dc = DiffCAM(cnn, layer="3")
    for ask in (lambda: dc(data[0][:2]), lambda: dc.reference_, lambda: dc.bank_, lambda: dc.why(data[0][:2], 1)):
        with pytest.raises(NotFittedError, match=r"no reference group yet: call dc.fit\(references\)"):
            ask()
    assert issubclass(NotFittedError, RuntimeError)
    assert not any(name.endswith("_") for name in vars(dc))  # fitted state appears with fit only
    dc.fit(data[0][:10])
    assert dc.bank_ is None and dc.reference_.count_ == 10


def test_get_and_set_params_round_trip(cnn, data):
    images = data[0]
    dc = DiffCAM(cnn, layer="3", shrinkage="oas", k=None)
    params = dc.get_params()
    assert list(params) == ["model", "layer", "embedding", "normalize", "shrinkage", "k", "reshape", "sign"]
    assert params["model"] is cnn and params["shrinkage"] == "oas"
    assert DiffCAM(**params).get_params() == params
    dc.fit(images[:30])
    assert dc.set_params(shrinkage=0.2) is dc and dc.get_params() == {**params, "shrinkage": 0.2}
    expected = DiffCAM(cnn, layer="3", shrinkage=0.2).fit(images[:30])(images[30:], raw=True)
    assert torch.equal(dc(images[30:], raw=True), expected)  # the fitted statistics were kept
    with pytest.raises(ValueError, match="no parameter alpha; its parameters are model, layer, embedding"):
        dc.set_params(alpha=1)
    with pytest.raises(ValueError, match="k=1"):
        dc.set_params(k=1)
    assert dc.k is None
    dc.set_params(layer="1")  # the statistics were fitted on layer 3: refused at the next call
    with pytest.raises(ReferenceMismatchError, match="layer '3'.*layer '1'"):
        dc(images[:2])


def test_clone_is_unfitted_and_shares_no_cache(cnn, data):
    images, labels = data
    dc = DiffCAM(cnn, layer="3").fit((images, labels))
    before = dc(images[:4], raw=True)
    twin = dc.clone()
    assert twin.get_params() == dc.get_params() and twin.model is dc.model
    with pytest.raises(NotFittedError):
        twin(images[:4])
    params = set(DiffCAM.param_names())
    for name, value in vars(twin).items():
        if name not in params:
            assert value is None, name  # every cache starts empty
    twin.fit(images[20:30])
    assert twin(images[:4], raw=True).shape == before.shape
    mutable = [name for name, value in vars(dc).items() if name not in params and not isinstance(value, (str, int))]
    assert {"_layers", "_bank"} <= set(mutable)
    assert not any(vars(twin)[name] is vars(dc)[name] for name in mutable if vars(dc)[name] is not None)
    assert torch.equal(dc(images[:4], raw=True), before) and dc.reference_.count_ == 40


# ----------------------------------------------------------------------------- saved settings
def test_a_file_saved_with_other_shrinkage_or_k_is_reported_or_refused(tmp_path, cnn, data):
    images = data[0]
    path = DiffCAM(cnn, layer="3").fit(images[:20]).reference_.save(tmp_path / "s.safetensors")
    stats = ReferenceStats.load(path)
    assert stats.meta["shrinkage"] == "0.5" and stats.meta["k"] == "None"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DiffCAM(cnn, layer="3").fit(stats)  # the settings it was saved with: silent
    with pytest.warns(UserWarning, match=r"saved by a DiffCAM with shrinkage=0\.5; this one uses shrinkage='oas'"):
        oas = DiffCAM(cnn, layer="3", shrinkage="oas").fit(stats)
    assert torch.equal(oas(images[20:22]), DiffCAM(cnn, layer="3", shrinkage="oas").fit(images[:20])(images[20:22]))
    with pytest.raises(ValueError, match=r"k=5 needs the reference embeddings.*saved with k=None"):
        DiffCAM(cnn, layer="3", k=5).fit(stats)
    kept = DiffCAM(cnn, layer="3", k=5).fit(images[:20]).reference_.save(tmp_path / "k.npz")
    with pytest.warns(UserWarning, match=r"with k=5; this one uses k=8"):
        DiffCAM(cnn, layer="3", k=8).fit(ReferenceStats.load(kept))


# ----------------------------------------------------------------------------- the cached S^-1
@pytest.mark.parametrize("shrinkage", [0.5, "ledoit-wolf", ("ridge", 0.1)])
def test_the_cached_inverse_gives_the_map_of_the_plain_solve(resnet18, shrinkage):
    """Each call multiplies by S^-1 cached per group and setting; the map equals a fresh solve of
    S w = z - mu (torch.linalg.solve, no cache) to 1e-5, raw and normalised."""
    generator = torch.Generator().manual_seed(3)
    references, images = torch.rand(24, 3, 64, 64, generator=generator), torch.rand(3, 3, 64, 64, generator=generator)
    dc = DiffCAM(resnet18, layer="layer4", shrinkage=shrinkage).fit(references)
    raw, maps = dc(images, raw=True), dc(images)
    stats = dc.reference_
    shrunk = stats.shrunk(shrinkage)
    assert "inverse" in vars(shrunk) and stats.shrunk(shrinkage) is shrunk  # computed once, kept
    activations = torch.from_numpy(_activations(resnet18, resnet18.layer4, images))
    z = activations.mean((2, 3))
    weights = torch.linalg.solve(stats.covariance(shrinkage), (z - stats.mean_).T).T
    plain = torch.einsum("bk,bkhw->bhw", weights, activations)
    assert (raw.double() - plain).abs().max() < 1e-5 * plain.abs().max()
    assert (maps - normalize_maps(plain, (64, 64))).abs().max() < 1e-5
