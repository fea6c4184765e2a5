"""The explorer's logic without the page: predictions, maps side by side, DiffCAM's questions,
curves, downloads, errors, and the launch options (the digits CNN, real scikit-learn digits)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from whycam import GradCAM
from whycam.cli import main
from whycam.errors import UsageError
from whycam.explorer import Explorer, digits_source
from whycam.methods.diffcam import DiffCAM
from whycam.models import load_model


@pytest.fixture(scope="module")
def explorer() -> Explorer:
    return Explorer({"digits-cnn": digits_source()})


@pytest.fixture(scope="module")
def three(explorer):
    return explorer.sources["digits-cnn"].images["digit 3 #2"]


def test_top5_are_the_models_probabilities(explorer, three):
    loaded = load_model("digits-cnn")
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess(three)[None]).softmax(1)[0]
    top = explorer.top5("digits-cnn", three)
    assert [i for i, _, _ in top] == expected.topk(5).indices.tolist()
    assert np.allclose([p for _, _, p in top], expected.topk(5).values.numpy(), atol=1e-6)
    assert top[0][1] == "3"


def test_maps_side_by_side_equal_the_methods_own(explorer, three):
    explanation = explorer.explain("digits-cnn", three, ["gradcam", "diffcam", "layercam"], target=3)
    assert [s.method for s in explanation.shown] == ["gradcam", "diffcam", "layercam"]
    loaded = load_model("digits-cnn")
    inputs = loaded.preprocess(three)[None]
    expected = GradCAM(loaded.model, "features")(inputs, 3)[0]
    assert torch.allclose(explanation.shown[0].map, expected, atol=1e-6)
    images, labels = explorer.sources["digits-cnn"].bank
    why = DiffCAM(loaded.model, "features").fit((images, labels)).why(inputs, 3)[0]
    assert torch.allclose(explanation.shown[1].map, why, atol=1e-5)
    assert all(s.layers == ["features"] and s.seconds > 0 for s in explanation.shown)
    assert explanation.shown[0].stride == (4.0, 4.0)  # 32 px input, 8x8 map
    assert explanation.target_name == "3" and explanation.failures == {}


def test_why_not_changes_diffcams_map_and_its_reference_group(explorer, three):
    why = explorer.explain("digits-cnn", three, ["diffcam"], question="why")
    why_not = explorer.explain("digits-cnn", three, ["diffcam"], question="why-not", versus=5)
    assert (why.shown[0].map - why_not.shown[0].map).abs().max() > 0.1
    assert "why-not 5" in why_not.reference
    labels = explorer.sources["digits-cnn"].bank[1]
    fives = explorer.sources["digits-cnn"].bank_images[labels == 5]
    shown = explorer.reference_images("digits-cnn", "why-not", 3, 5)
    assert shown and all(any(torch.equal(s, f) for f in fives) for s in shown)


def test_runner_is_built_once_per_setting(explorer):
    first = explorer.runner("digits-cnn", "diffcam", question="unusual")
    assert explorer.runner("digits-cnn", "diffcam", question="unusual") is first
    assert explorer.runner("digits-cnn", "diffcam", question="why") is not first


def test_a_failing_method_is_reported_and_the_others_shown(explorer, three):
    explanation = explorer.explain("digits-cnn", three, ["gradcam", "saliency", "eigencam"], layer="classifier")
    assert [s.method for s in explanation.shown] == ["saliency"]  # reads no layer: unaffected
    assert set(explanation.failures) == {"gradcam", "eigencam"}
    assert all("(1, 10)" in error for error in explanation.failures.values())  # the classifier's output named


def test_bad_requests_name_the_fix(explorer, three):
    with pytest.raises(UsageError, match="at least one method"):
        explorer.explain("digits-cnn", three, [])
    with pytest.raises(UsageError, match="no model 'resnet'"):
        explorer.model("resnet")
    with pytest.raises(UsageError, match="group"):
        explorer.explain("digits-cnn", three, ["diffcam"], question="group")


def test_curves_and_archive(explorer, three):
    explanation = explorer.explain("digits-cnn", three, ["gradcam", "eigencam"])
    figure = explorer.curves(explanation, steps=4)
    assert len(figure.axes[0].lines) == 4  # deletion and insertion per map
    road = explorer.curves(explanation, "ROAD")
    assert len(road.axes[0].lines) == 4  # MoRF and LeRF per map
    archive = zipfile.ZipFile(io.BytesIO(explorer.archive(explanation)))
    assert sorted(archive.namelist()) == [
        "maps/eigencam.npy",
        "maps/gradcam.npy",
        "overlays/eigencam.png",
        "overlays/gradcam.png",
    ]
    saved = np.load(io.BytesIO(archive.read("maps/gradcam.npy")))
    assert saved.dtype == np.float32 and np.array_equal(saved, explanation.shown[0].map.numpy())
    assert Image.open(io.BytesIO(archive.read("overlays/gradcam.png"))).size[0] > 100


def test_launch_options(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="give --model"):
        Explorer.launched(reference=folder)
    result = CliRunner().invoke(main, ["app", "--reference", str(folder)])
    assert result.exit_code != 0 and "--model" in result.output + str(result.exception)
    assert "explorer" in CliRunner().invoke(main, ["app", "--help"]).output

    explorer = Explorer.launched(load_model("digits-cnn"), images=folder, reference=folder)
    assert list(explorer.sources) == ["digits-cnn", "efficientnet-lite0"]  # the launched model replaces the demo's
    source = next(iter(explorer.sources.values()))
    assert sorted(source.images) == ["0.png", "1.png", "2.png"] and len(source.group_images) == 3
    assert explorer.questions("digits-cnn") == ["group"]
    explanation = explorer.explain("digits-cnn", source.images["0.png"], ["diffcam"])
    assert "3 images from" in explanation.reference and explanation.shown[0].map.max() == 1
