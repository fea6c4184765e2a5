"""The run loop (``whycam.runs``), the strict factory (``whycam.create``), the declared capabilities and
the writers, on a tiny seeded CNN; each expected map is computed by calling the explainer directly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import make, no_gap
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import whycam
from whycam import GradCAM, Runner, Saliency, SmoothGrad, create, explain
from whycam.methods.factory import constructor_options
from whycam.writers import write_explain


@pytest.fixture(scope="module")
def loaded():
    return make()


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_every_method_declares_its_capabilities():
    for name, cls in whycam.methods().items():
        for capability in ("needs_target", "needs_layer", "uses_gradient", "needs_reference"):
            assert isinstance(getattr(cls, capability), bool), (name, capability)
        assert cls.needs_layer == ("layer" in constructor_options(cls)), name
    assert whycam.methods()["diffcam"].needs_reference and not whycam.methods()["gradcam"].needs_reference
    assert whycam.methods()["gradcam"].uses_gradient and not whycam.methods()["rise"].uses_gradient


def test_create_refuses_unknown_methods_and_options_naming_the_valid_ones(loaded):
    with pytest.raises(whycam.UsageError, match=r"closest: gradcam.*registered: ablationcam"):
        create("gradcma", loaded.model)
    with pytest.raises(whycam.UsageError, match=r"gradcam has no option 'nosie'; its options: layer, output, reshape"):
        create("gradcam", loaded.model, nosie=0.1)
    with pytest.raises(whycam.UsageError, match=r"no option 'masks'.*noise.*reshape"):
        create("smoothgrad", loaded.model, explainer="gradcam", masks=3)
    with pytest.raises(ValueError):  # still a ValueError for code written against older versions
        create("cam", loaded.model, unrelated=3)


def test_smoothgrad_wraps_any_method_by_name(loaded, images):
    smoothed = create("smoothgrad", loaded.model, explainer="gradcam", layer="features", samples=3, noise=0.2)
    assert isinstance(smoothed.explainer, GradCAM) and smoothed.needs_layer and smoothed.samples == 3
    direct = SmoothGrad(GradCAM(loaded.model, "features"), samples=3, noise=0.2)
    assert torch.equal(smoothed(images), direct(images))
    default = create("smoothgrad", loaded.model, samples=2)
    assert isinstance(default.explainer, Saliency) and not default.needs_layer


def test_a_batch_gives_each_methods_own_maps_layer_prediction_and_time(loaded, images):
    runner = Runner(loaded.model, ["gradcam", "saliency", "eigencam"])
    batch = runner.explain_batch(images, ids=list("abcde"))
    predictions = loaded.model(images).argmax(1)
    assert torch.equal(batch.predictions, predictions) and torch.equal(batch.targets, predictions)
    assert torch.allclose(batch.probabilities, loaded.model(images).softmax(1).amax(1))
    assert torch.equal(batch.maps["gradcam"], GradCAM(loaded.model)(images, predictions))
    assert torch.equal(batch.maps["saliency"], Saliency(loaded.model)(images, predictions))
    # the automatic layer is recorded: the last spatial module of the tiny CNN
    assert batch.layers == {"gradcam": ["features"], "saliency": [], "eigencam": ["features"]}
    assert set(batch.seconds) == {"gradcam", "saliency", "eigencam"} and batch.failures == []
    assert batch.ids == list("abcde")


def test_one_failing_method_does_not_stop_the_others(images):
    model = no_gap().model  # no GAP + linear head: CAM refuses it, Grad-CAM explains it
    batch = Runner(model, ["cam", "gradcam"], layer="0").explain_batch(images)
    assert set(batch.maps) == {"gradcam"}
    [failure] = batch.failures
    assert failure.method == "cam" and failure.inputs == ["0", "1", "2", "3", "4"]


def test_a_failure_before_the_method_that_runs_first_is_recorded_once(images):
    # Grad-CAM runs first (its pass gives the predictions); the occlusion that fails before it in the
    # list must not be recorded against Grad-CAM too
    model = no_gap().model
    batch = Runner(model, {"occlusion": {"window": 64, "stride": 64}, "gradcam": {}}, layer="0").explain_batch(images)
    assert set(batch.maps) == {"gradcam"}
    [failure] = batch.failures
    assert failure.method == "occlusion" and "window" in failure.error


def test_predictions_and_maps_go_through_the_output_selector(loaded, images):
    class Wrapped(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"aux": -self.net(x), "main": self.net(x)}

    model = Wrapped(loaded.model).eval()
    batch = Runner(model, ["gradcam"], output="main", layer="net.features").explain_batch(images)
    assert torch.equal(batch.predictions, loaded.model(images).argmax(1))
    assert torch.equal(batch.maps["gradcam"], GradCAM(loaded.model, "features")(images))


def test_the_model_and_the_random_state_come_back_as_they_were(loaded, images):
    model = make().model.train()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    batch = Runner(model, ["gradcam", "rise"]).explain_batch(images)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.rand(3), expected_draw)
    # explained in eval mode, as the caller's eval-mode model would be
    assert torch.equal(batch.maps["gradcam"], GradCAM(loaded.model)(images))


def _count_forwards(model: nn.Module) -> list[int]:
    """A forward pre-hook counter on the whole model (counts passes that stop early at a layer too)."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("method", ["gradcam", "diffcam", "saliency"])
def test_a_method_that_runs_the_unaltered_batch_gives_the_predictions_in_its_own_pass(method, images):
    loaded = make()
    references = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    runner = Runner(loaded, [method], reference=references if method == "diffcam" else None)
    calls = _count_forwards(loaded.model)
    batch = runner.explain_batch(images)
    assert calls[0] == 1  # the method's own pass; none for the predictions
    assert runner.explainers[method].output_ is None and not runner.explainers[method].keep_output
    calls[0] = 0
    runner.explain_batch(images, targets=2)
    assert calls[0] == 1
    assert torch.equal(batch.predictions, loaded.model(images).argmax(1))


def test_methods_that_do_not_run_the_unaltered_batch_leave_one_pass_for_the_predictions(images):
    loaded = make()
    calls = _count_forwards(loaded.model)
    runner = Runner(loaded, {"smoothgrad": {"samples": 2}})
    runner.explainers["smoothgrad"](images, 0)
    own, calls[0] = calls[0], 0
    runner.explain_batch(images)
    assert calls[0] == 1 + own  # the predictions, then the noisy copies
    calls[0] = 0
    Runner(loaded, ["gradcam", "saliency"]).explain_batch(images)
    assert calls[0] == 2  # one pass each, the first also giving the predictions


def test_predictions_targets_and_maps_are_those_of_a_separate_prediction_pass(images):
    loaded = make()
    references = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    methods = {"occlusion": {"window": 8, "stride": 8}, "saliency": {}, "gradcam": {}, "diffcam": {}}
    batch = Runner(loaded, methods, reference=references).explain_batch(images)
    with torch.no_grad():
        output = loaded.model(images)
    predicted = output.argmax(1)
    assert torch.equal(batch.predictions, predicted) and torch.equal(batch.targets, predicted)
    expected = output.softmax(1).gather(1, predicted[:, None])[:, 0]
    assert torch.allclose(batch.probabilities, expected, atol=1e-6)  # the CAM's pass is channels-last
    assert list(batch.maps) == list(batch.seconds) == list(methods)  # the first seeing method ran first
    direct = {
        "occlusion": whycam.create("occlusion", loaded.model, window=8, stride=8)(images, predicted),
        "saliency": Saliency(loaded.model)(images, predicted),
        "gradcam": GradCAM(loaded.model, "features")(images, predicted),
        "diffcam": whycam.DiffCAM(loaded.model, "features").fit(references)(images),
    }
    for name, expected_map in direct.items():
        assert torch.equal(batch.maps[name], expected_map), name


def test_explain_streams_tensors_dataloaders_and_files_alike(loaded, images, tmp_path):
    whole = explain(loaded, images, ["gradcam"], batch_size=2)
    loader = DataLoader(TensorDataset(images, torch.zeros(5)), batch_size=3)
    streamed = explain(loaded, loader, ["gradcam"], batch_size=2)
    # the same maps whatever the batching (up to float rounding across batch sizes)
    assert torch.allclose(whole.maps["gradcam"], streamed.maps["gradcam"], atol=1e-6)
    assert whole.ids == streamed.ids == [str(i) for i in range(5)]
    assert torch.allclose(whole.maps["gradcam"], GradCAM(loaded.model, "features")(images), atol=1e-6)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"p{i}.png")
    (tmp_path / "broken.png").write_text("not an image")
    from_files = explain(loaded, [tmp_path], ["gradcam"], batch_size=2)
    assert from_files.ids == ["p0", "p1", "p2"] and len(from_files.display) == 3
    [failure] = from_files.failures
    assert "broken.png" in failure.inputs[0] and failure.method is None
    inputs = whycam.load_images([tmp_path / f"p{i}.png" for i in range(3)], loaded.preprocess)
    assert torch.allclose(from_files.maps["gradcam"], GradCAM(loaded.model, "features")(inputs), atol=1e-6)


def test_a_reference_group_is_fitted_once_and_a_runner_pickles(loaded, images):
    references = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    runner = Runner(loaded, ["diffcam"], reference=references, batch_size=2)
    direct = whycam.DiffCAM(loaded.model, "features").fit(references)(images)
    # batches of 2, 2 and 1 against one of 5: equal up to float rounding across batch sizes
    assert torch.allclose(runner.explain(images).maps["diffcam"], direct, atol=1e-5)
    assert runner.references == {"diffcam": "6 images"}
    copy = pickle.loads(pickle.dumps(runner))
    assert torch.allclose(copy.explain_batch(images).maps["diffcam"], direct, atol=1e-6)
    with pytest.raises(whycam.ReferenceGroupError, match="reference"):
        Runner(loaded, ["diffcam"])


def test_writers_write_the_maps_and_the_layer_actually_used(images, tmp_path):
    model = make().model
    result = explain(model, images[:2], ["gradcam", "eigencam"], targets=1, keep_raw=True)
    assert result.raw["gradcam"].shape == (2, 32, 32)
    paths = write_explain(result, tmp_path, report=True)
    summary = json.loads(paths["summary"].read_text())
    assert summary["layer"] == "features" and summary["layers"]["gradcam"] == ["features"]
    first = summary["images"][0]["results"]
    assert [r["method"] for r in first] == ["gradcam", "eigencam"] and first[0]["layer"] == "features"
    assert first[0]["target"] == 1 and first[1]["target"] is None
    expected = GradCAM(model)(images[:2], 1)
    assert np.array_equal(np.load(tmp_path / "1_gradcam.npy"), expected[1].numpy())
    assert (tmp_path / "report.html").exists() and not list(tmp_path.glob("*.png"))  # no display images
