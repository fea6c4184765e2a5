"""The ``whycam`` command end to end on a tiny model and a few small images, in-process through click's
runner (``invoke``), which runs the same code and exit codes without paying for a fresh interpreter
each time; one test runs the installed console script in a subprocess (``whycam_cli``) for its exit
code and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import whycam
from whycam.cli import main
from whycam.inputs import read_inputs, unique_names

TINY = f"{Path(__file__).parent / 'tiny_model.py'}:make"
SRC = str(Path(whycam.__file__).resolve().parent.parent)
COMMANDS = [
    ["demo"],
    ["explain"],
    ["reference", "build"],
    ["reference", "info"],
    ["evaluate"],
    ["sanity"],
    ["methods"],
    ["benchmark"],
]


def whycam_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed ``whycam`` console script (next to this interpreter) in a fresh process."""
    env = {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    script = Path(sys.executable).with_name("whycam")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _read(paths, preprocess) -> tuple[list[str], list[torch.Tensor]]:
    """The names and model inputs of the readable images, as the CLI reads them."""
    rows = list(read_inputs(paths, preprocess, []))
    return unique_names([path for path, _, _ in rows]), [inputs for _, _, inputs in rows]


def invoke(*args: object) -> SimpleNamespace:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def _image(path: Path, seed: int, size=(40, 36), mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "one.png", 0)
    _image(folder / "two.jpg", 1)
    _image(folder / "gray.png", 2, mode="L")
    return folder


@pytest.fixture
def bad_inputs(tmp_path) -> list[Path]:
    good = _image(tmp_path / "source.jpg", 3, size=(64, 64))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("this is text, not a PNG")
    empty = tmp_path / "empty"
    empty.mkdir()
    return [corrupt, text, empty]


def test_every_command_has_help_with_an_example():
    for command in COMMANDS:
        result = invoke(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Example" in result.stdout, command


def test_methods_lists_the_registry():
    result = invoke("methods")
    assert result.returncode == 0
    for name, cls in whycam.methods().items():
        assert f"{name} " in result.stdout and cls.summary in result.stdout


def test_explain_writes_maps_overlays_summary_and_report(photos, tmp_path):
    out = tmp_path / "out"
    result = invoke("explain", photos, "--model", TINY, "--method", "gradcam,eigencam", "--out", out, "--report")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"model", "layer", "layers", "methods", "images", "failures"}
    assert summary["layer"] == "features" and summary["failures"] == []
    assert summary["layers"] == {"gradcam": ["features"], "eigencam": ["features"]}
    assert [r["image"] for r in summary["images"]] == ["gray", "one", "two"]
    for record in summary["images"]:
        assert {"prediction", "prediction_name", "probability", "results"} <= set(record)
        assert record["prediction_name"] in ("ant", "bee", "cat", "dog")
        assert [r["method"] for r in record["results"]] == ["gradcam", "eigencam"]
        for item in record["results"]:
            assert {"method", "layer", "target", "time_s", "overlay", "map"} <= set(item)
            saliency = np.load(out / item["map"])
            assert saliency.shape == (32, 32) and saliency.dtype == np.float32
            assert 0 <= saliency.min() and saliency.max() <= 1
            with Image.open(out / item["overlay"]) as overlay:
                overlay.load()
                assert overlay.size[0] > 32 and overlay.mode in ("RGB", "RGBA")
        assert record["results"][0]["target_name"] == record["prediction_name"]
        assert record["results"][1]["target"] is None  # Eigen-CAM has no class
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and 'src="http' not in html


def test_explain_target_by_name(photos, tmp_path):
    result = invoke("explain", photos / "one.png", "--model", TINY, "--target", "bee", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    [record] = json.loads((tmp_path / "o" / "summary.json").read_text())["images"]
    assert record["results"][0]["target"] == 1 and record["results"][0]["target_name"] == "bee"
    result = invoke("explain", photos, "--model", TINY, "--target", "zebra", "--out", tmp_path / "o2")
    assert result.returncode == 2 and "unknown class 'zebra'" in result.stderr


def test_bad_inputs_are_named_skipped_and_the_rest_kept(photos, bad_inputs, tmp_path):
    """Through the installed console script: exit code 1 and the failures on stderr from a real process."""
    out = tmp_path / "out"
    result = whycam_cli("explain", photos, *bad_inputs, "--model", TINY, "--out", out)
    assert result.returncode == 1
    assert "corrupt.jpg" in result.stderr and "damaged or truncated" in result.stderr
    assert "notes.png" in result.stderr and "not an image" in result.stderr
    assert "empty" in result.stderr and "no images in folder" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 3 and len(summary["failures"]) == 3
    assert sorted(p.name for p in out.glob("*.npy")) == [
        "gray_gradcam.npy",
        "one_gradcam.npy",
        "two_gradcam.npy",
    ]


def test_nothing_readable_is_a_usage_error(bad_inputs, tmp_path):
    result = invoke("explain", *bad_inputs, "--model", TINY, "--out", tmp_path / "out")
    assert result.returncode == 2 and "no readable image" in result.stderr


def test_unknown_layer_method_and_model_are_usage_errors(photos, tmp_path):
    result = invoke("explain", photos, "--model", TINY, "--layer", "featurez", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "no layer 'featurez'" in result.stderr and "features" in result.stderr
    result = invoke("explain", photos, "--model", TINY, "--method", "gradcam,nosuchcam", "--out", tmp_path / "o")
    assert result.returncode == 2 and "nosuchcam" in result.stderr and "gradcam" in result.stderr
    result = invoke("explain", photos, "--model", "nosuchmodel", "--out", tmp_path / "o")
    assert result.returncode == 2 and "unknown model spec" in result.stderr
    assert not (tmp_path / "o").exists()


def test_torchscript_model_with_a_layer_method_is_a_usage_error(photos, tmp_path):
    import torch
    from tiny_model import plain

    torch.jit.save(torch.jit.script(plain()), str(tmp_path / "tiny.ts"))
    result = invoke("explain", photos, "--model", tmp_path / "tiny.ts", "--out", tmp_path / "o")
    assert result.returncode == 2 and "TorchScript" in result.stderr


def test_diffcam_needs_a_reference(photos, tmp_path):
    result = invoke("explain", photos, "--model", TINY, "--method", "diffcam", "--out", tmp_path / "o")
    assert result.returncode == 2 and "--reference" in result.stderr


def _reference_folder(tmp_path: Path, count: int = 6) -> Path:
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(count):
        _image(folder / f"r{i}.png", 100 + i)
    return folder


def test_reference_build_info_and_explain_with_it(photos, tmp_path):
    refs = _reference_folder(tmp_path)
    (refs / "broken.png").write_text("broken")
    stats = tmp_path / "refs.safetensors"
    result = invoke("reference", "build", refs, "--model", TINY, "--out", stats)
    assert result.returncode == 1 and "broken.png" in result.stderr  # one reference skipped, file written
    info = invoke("reference", "info", stats)
    assert info.returncode == 0 and "count=6" in info.stdout and "layer: features" in info.stdout
    out = tmp_path / "out"
    result = invoke(
        "explain", photos, "--model", TINY, "--method", "diffcam,gradcam", "--reference", stats, "--out", out
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["results"][0]["reference"].startswith("statistics refs.safetensors")
    assert np.load(out / "one_diffcam.npy").shape == (32, 32)
    result = invoke(
        "explain",
        photos,
        "--model",
        TINY,
        "--method",
        "diffcam",
        "--reference",
        refs,
        "--out",
        tmp_path / "out2",
    )
    assert result.returncode == 1 and "broken.png" in result.stderr  # reference folder: bad file skipped
    assert (tmp_path / "out2" / "one_diffcam.npy").exists()


def test_per_class_bank(tmp_path):
    root = tmp_path / "classes"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            _image(root / label / f"{i}.png", hash(label) % 100 + i)
    bank = tmp_path / "bank.safetensors"
    result = invoke("reference", "build", root, "--per-class", "--model", TINY, "--out", bank)
    assert result.returncode == 0, result.stderr
    info = invoke("reference", "info", bank)
    assert info.returncode == 0 and "class a: 3 images" in info.stdout and "class b: 3 images" in info.stdout


def test_reference_from_another_model_is_refused(photos, tmp_path):
    refs = _reference_folder(tmp_path)
    stats = tmp_path / "digits.safetensors"
    assert invoke("reference", "build", refs, "--model", "digits-cnn", "--out", stats).returncode == 0
    result = invoke(
        "explain",
        photos,
        "--model",
        TINY,
        "--method",
        "diffcam",
        "--reference",
        stats,
        "--out",
        tmp_path / "o",
    )
    assert result.returncode == 2 and "cannot use reference" in result.stderr
    assert "model" in result.stderr.lower()


def _mask_dataset(tmp_path: Path, count: int = 4) -> Path:
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        _image(root / "images" / f"s{i}.png", 10 + i, size=(32, 32))
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i : 20 + i, 6:22] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def test_evaluate_writes_tables_curves_and_report(tmp_path):
    dataset = _mask_dataset(tmp_path)
    (dataset / "images" / "s9.png").write_text("not an image")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(dataset / "masks" / "s9.png")
    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        dataset,
        "--model",
        TINY,
        "--method",
        "gradcam,eigencam",
        "--metrics",
        "auprc,pointing_game,deletion",
        "--out",
        out,
    )
    assert result.returncode == 1 and "s9.png" in result.stderr  # the unreadable image named, the rest scored
    data = json.loads((out / "results.json").read_text())
    assert data["n_images"] == 4 and set(data["higher_is_better"]) == {"auprc", "pointing_game", "deletion"}
    assert data["higher_is_better"]["deletion"] is False
    assert len(data["per_image"]) == 8 and {r["method"] for r in data["summary"]} == {"gradcam", "eigencam"}
    for row in data["summary"]:
        assert row["auprc_low"] <= row["auprc"] <= row["auprc_high"]
    assert (out / "per_image.csv").read_text().startswith("image,method,target,time_s")
    curves = list(out.glob("curve_deletion_*.png"))
    assert curves
    with Image.open(curves[0]) as figure:
        figure.load()
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_a_failing_method_is_reported_and_the_others_kept(tmp_path):
    # CAM needs a global-pooling + linear head; this model has none, so CAM fails and Grad-CAM works.
    out = tmp_path / "eval"
    model = f"{Path(__file__).parent / 'tiny_model.py'}:no_gap"
    result = invoke(
        "evaluate",
        _mask_dataset(tmp_path),
        "--model",
        model,
        "--method",
        "cam,gradcam",
        "--metrics",
        "auprc",
        "--out",
        out,
    )
    assert result.returncode == 1 and "method cam" in result.stderr and "GradCAM" in result.stderr
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in data["summary"]] == ["gradcam"] and "cam" in data["failures"]


def test_evaluate_unknown_metric(tmp_path):
    result = invoke(
        "evaluate",
        _mask_dataset(tmp_path),
        "--model",
        TINY,
        "--metrics",
        "nosuchmetric",
        "--out",
        tmp_path / "o",
    )
    assert result.returncode == 2 and "nosuchmetric" in result.stderr


def test_sanity_writes_verdict_and_figure(photos, tmp_path):
    out = tmp_path / "sanity"
    result = invoke("sanity", photos, "--model", TINY, "--method", "gradcam", "--out", out)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "sanity.json").read_text())
    assert set(data["gradcam"]) >= {"passed", "spearman_after_full_randomisation", "threshold", "layers"}
    with Image.open(out / "sanity_gradcam.png") as figure:
        figure.load()


def test_sanity_of_diffcam_refits_its_reference_on_each_randomised_model(photos, tmp_path):
    """`whycam sanity --method diffcam --reference DIR` runs (it used to crash with exit 1), and gives the
    numbers of sanity_check on a DiffCAM refitted on the reference for each randomised copy."""
    refs = _reference_folder(tmp_path)
    out = tmp_path / "sanity"
    result = invoke("sanity", photos, "--model", TINY, "--method", "diffcam", "--reference", refs, "--out", out)
    assert result.returncode == 0, result.stderr
    loaded = whycam.models.load_model(TINY)
    _, inputs = _read([photos], loaded.preprocess)
    references = torch.stack(_read([refs], loaded.preprocess)[1])
    expected = whycam.metrics.sanity_check(
        lambda model: whycam.DiffCAM(model, "features").fit(references), loaded.model, torch.stack(inputs)
    )
    data = json.loads((out / "sanity.json").read_text())["diffcam"]
    assert data["spearman_after_full_randomisation"] == pytest.approx(expected["cascading"].value, abs=1e-6)
    assert invoke("sanity", photos, "--model", TINY, "--method", "diffcam", "--out", out).returncode == 2


def test_smoothgrad_wraps_a_method_named_by_an_option_and_the_layer_is_reported(photos, tmp_path):
    out = tmp_path / "o"
    options = ["--option", "smoothgrad.explainer=gradcam", "--option", "smoothgrad.samples=2"]
    result = invoke("explain", photos, "--model", TINY, "--method", "smoothgrad", *options, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "smoothgrad: layer features" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["results"][0]["layer"] == "features"
    loaded = whycam.models.load_model(TINY)
    names, inputs = _read([photos], loaded.preprocess)
    x = torch.stack(inputs)
    expected = whycam.SmoothGrad(whycam.GradCAM(loaded.model, "features"), samples=2)(x, loaded.model(x).argmax(1))
    assert np.allclose(np.load(out / f"{names[0]}_smoothgrad.npy"), expected[0].numpy(), atol=1e-6)


def test_the_automatic_layer_is_recorded_and_reported(photos, tmp_path):
    """A model with no layer of its own: the layer chosen automatically is written (not null) and said."""
    spec = f"{Path(__file__).parent / 'tiny_model.py'}:no_layer"
    result = invoke("explain", photos, "--model", spec, "--method", "gradcam,saliency", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["layer"] == "features" and summary["layers"] == {"gradcam": ["features"], "saliency": []}
    assert summary["images"][0]["results"][0]["layer"] == "features"
    assert summary["images"][0]["results"][1]["layer"] is None
    assert "gradcam: layer features" in result.stderr


def test_predictions_go_through_the_output_selector(photos, tmp_path):
    """A model returning a dict (the "logits" key is explained): the predictions read the same output
    as the maps (the old code called .softmax on the dict and crashed)."""
    spec = f"{Path(__file__).parent / 'tiny_model.py'}:dict_output"
    result = invoke("explain", photos, "--model", spec, "--method", "gradcam", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    loaded = whycam.models.load_model(TINY)
    names, inputs = _read([photos], loaded.preprocess)
    predicted = loaded.model(torch.stack(inputs)).argmax(1).tolist()
    records = json.loads((tmp_path / "o" / "summary.json").read_text())["images"]
    assert [r["prediction"] for r in records] == predicted and [r["image"] for r in records] == names


def test_a_crash_has_its_own_exit_code(photos, tmp_path, monkeypatch):
    """A bug (an exception that is not a WhycamError) exits 3 with its traceback: never 1, which means
    "some inputs failed, the rest written"."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(whycam.cli, "write_explain", broken)
    result = invoke("explain", photos, "--model", TINY, "--out", tmp_path / "o")
    assert result.returncode == 3 and "ZeroDivisionError: a bug" in result.stderr and "crashed" in result.stderr


def test_benchmark_runs_every_registered_method(tmp_path):
    out = tmp_path / "bench"
    result = invoke(
        "benchmark",
        _mask_dataset(tmp_path, 4),
        "--model",
        TINY,
        "--metrics",
        "auprc,energy_pointing_game",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    expected = {name for name, cls in whycam.methods().items() if not cls.needs_attention}
    assert {r["method"] for r in data["summary"]} == expected
    assert "| method |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_demo_quick(tmp_path):
    result = invoke("demo", "--quick", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("report.html")
    html = (tmp_path / "demo" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "CC0" in html
    # issue 14: class model images of two digits, and a signed Grad-CAM with evidence for and against
    assert "Class model images of the digits (3, 5)." in html and "argmax_I S_c(I)" in html
    assert "Evidence for and against" in html and "sign=&#x27;negative&#x27; shows that part" in html
    assert "(diverging: red for, blue against)" in html and "Stride 32 px" in html


def _bank(tmp_path: Path) -> Path:
    root = tmp_path / "classes"
    for k, label in enumerate(("ant", "bee", "cat", "dog")):
        (root / label).mkdir(parents=True)
        for i in range(3):
            _image(root / label / f"{i}.png", 200 + 10 * k + i)
    bank = tmp_path / "bank.safetensors"
    assert invoke("reference", "build", root, "--per-class", "--model", TINY, "--out", bank).returncode == 0
    return bank


def test_questions_to_a_bank_are_diffcams_own(photos, tmp_path):
    """--question why / why-not / unusual gives the maps of DiffCAM.why / why_not / unusual, each image
    asked about its own predicted class, the bank's labels matched to the model's class names."""
    from whycam import DiffCAM
    from whycam.reference import ReferenceBank

    bank = _bank(tmp_path)
    loaded = whycam.models.load_model(TINY)
    names, inputs = _read([photos], loaded.preprocess)
    x = torch.stack(inputs)
    predicted = [loaded.class_name(int(p)) for p in loaded.model(x).argmax(1)]
    diffcam = DiffCAM(loaded.model, "features").fit(ReferenceBank.load(bank))
    expected = {
        "why": [diffcam.why(x[i : i + 1], c)[0] for i, c in enumerate(predicted)],
        "unusual": [diffcam.unusual(x[i : i + 1], c)[0] for i, c in enumerate(predicted)],
        "why-not": list(diffcam.why_not(x, "dog")),
    }
    for question, maps in expected.items():
        out = tmp_path / question
        extra = ["--versus", "3"] if question == "why-not" else []  # class 3 is "dog"
        result = invoke(
            "explain",
            photos,
            "--model",
            TINY,
            "--method",
            "diffcam,gradcam",
            "--reference",
            bank,
            "--question",
            question,
            *extra,
            "--out",
            out,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads((out / "summary.json").read_text())
        for i, name in enumerate(names):
            got = torch.from_numpy(np.load(out / f"{name}_diffcam.npy"))
            assert torch.allclose(got, maps[i], atol=1e-5), (question, name)
            record = summary["images"][i]["results"]
            asked = "dog" if question == "why-not" else predicted[i]
            assert record[0]["question"] == [question, asked] and record[1]["question"] is None


def test_question_misuse_is_a_usage_error(photos, tmp_path):
    bank = _bank(tmp_path)
    stats = tmp_path / "one_group.safetensors"
    assert invoke("reference", "build", _reference_folder(tmp_path), "--model", TINY, "--out", stats).returncode == 0
    base = ["explain", photos, "--model", TINY, "--out", tmp_path / "o"]
    cases = {
        "go together": ["--method", "diffcam", "--reference", bank, "--question", "why-not"],
        "--per-class": ["--method", "diffcam", "--reference", stats, "--question", "why"],
        "has no class 'eel'": ["--method", "diffcam", "--reference", bank, "--question", "why-not", "--versus", "eel"],
        "add diffcam": ["--method", "gradcam", "--question", "why"],
    }
    for message, args in cases.items():
        result = invoke(*base, *args)
        assert result.returncode == 2 and message in result.stderr, (message, result.stderr)


def test_method_options_reach_the_method_and_bad_ones_stop_the_command(photos, tmp_path):
    refs = _reference_folder(tmp_path)
    maps = {}
    for shrinkage in ("0.5", "1.0"):
        out = tmp_path / shrinkage
        result = invoke(
            "explain",
            photos,
            "--model",
            TINY,
            "--method",
            "diffcam",
            "--reference",
            refs,
            "--option",
            f"diffcam.shrinkage={shrinkage}",
            "--out",
            out,
        )
        assert result.returncode == 0, result.stderr
        maps[shrinkage] = np.load(out / "one_diffcam.npy")
    from whycam import DiffCAM

    loaded = whycam.models.load_model(TINY)
    names, inputs = _read([photos], loaded.preprocess)
    one = inputs[names.index("one")][None]
    references = torch.stack(_read([refs], loaded.preprocess)[1])
    direct = DiffCAM(loaded.model, "features", shrinkage=1.0).fit(references)(one)[0]
    assert np.allclose(maps["1.0"], direct.numpy(), atol=1e-5) and not np.allclose(maps["0.5"], maps["1.0"])
    base = ["explain", photos, "--model", TINY, "--method", "diffcam", "--reference", refs, "--out", tmp_path / "o"]
    cases = {
        "not METHOD.KEY=VALUE": "diffcam.shrinkage",
        "which is not run here": "rise.masks=10",
        "no option 'nosuch'": "diffcam.nosuch=1",
        "shrinkage": "diffcam.shrinkage=2",
    }
    for message, item in cases.items():
        result = invoke(*base, "--option", item)
        assert result.returncode == 2 and message in result.stderr and "--option" in result.stderr, item
    result = invoke(
        "evaluate",
        _mask_dataset(tmp_path),
        "--model",
        TINY,
        "--method",
        "rise",
        "--metrics",
        "auprc",
        "--option",
        "rise.masks=0",
        "--out",
        tmp_path / "e",
    )
    assert result.returncode == 2 and "rise" in result.stderr


def test_a_voc_dataset_gives_the_box_metrics_every_object_of_the_class(tmp_path):
    """Each image's boxes of the explained class reach the box metrics as (N, M, 4), moved by the
    model's preprocessing and padded with empty boxes; the other metrics read their union as a mask."""
    from whycam.inputs import read_ground_truth

    root = tmp_path / "voc"
    root.mkdir()
    objects = {
        "a": [("cat", (4, 4, 20, 20)), ("dog", (0, 0, 8, 8)), ("cat", (40, 40, 60, 60))],
        "b": [("ant", (10, 10, 30, 30))],
    }
    for stem, items in objects.items():
        _image(root / f"{stem}.png", 7, size=(64, 64))
        (root / f"{stem}.xml").write_text(
            "<annotation>"
            + "".join(
                f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                f"<ymax>{y1}</ymax></bndbox></object>"
                for name, (x0, y0, x1, y1) in items
            )
            + "</annotation>"
        )
    loaded = whycam.models.load_model(TINY)  # 64 px images become 32 px inputs
    truth = read_ground_truth(str(root), loaded, [])
    names, masks, labels, boxes = truth.names, truth.masks, truth.labels, truth.boxes
    assert names == ["a", "b"] and labels == [2, 0]  # cat, ant
    assert boxes.tolist() == [[[2, 2, 10, 10], [20, 20, 30, 30]], [[5, 5, 15, 15], [0, 0, 0, 0]]]
    assert masks[0].sum() == 64 + 100 and masks[1].sum() == 100 and not masks[0, 0, 0]
    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        root,
        "--model",
        TINY,
        "--method",
        "gradcam",
        "--metrics",
        "max_box_accuracy,box_accuracy,auprc",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())["per_image"]
    assert len(rows) == 2 and all(0 <= r["max_box_accuracy"] <= 1 for r in rows)


def test_device_option_moves_the_model_and_refuses_what_is_not_there(photos, tmp_path):
    result = invoke("explain", photos, "--model", TINY, "--device", "cpu", "--out", tmp_path / "cpu")
    assert result.returncode == 0, result.stderr
    assert invoke("explain", photos, "--model", TINY, "--device", "toaster", "--out", tmp_path / "o").returncode == 2
    if not torch.cuda.is_available():
        dataset = _mask_dataset(tmp_path)
        result = invoke("evaluate", dataset, "--model", TINY, "--device", "cuda", "--out", tmp_path / "e")
        assert result.returncode == 2 and "cuda is not available" in result.stderr and "--device cpu" in result.stderr


def test_explain_and_evaluate_write_the_same_files_as_before(photos, tmp_path):
    """The files of `explain` and `evaluate` on the run loop are those the commands wrote before it:
    the same names and keys, each `.npy` the map of the explainer called directly on the batch, each
    per-image score the metric called directly on those maps."""
    refs = _reference_folder(tmp_path)
    out = tmp_path / "explain"
    methods = "gradcam,eigencam,saliency,diffcam"
    result = invoke("explain", photos, "--model", TINY, "--method", methods, "--reference", refs, "--out", out)
    assert result.returncode == 0, result.stderr
    loaded = whycam.models.load_model(TINY)
    names, inputs = _read([photos], loaded.preprocess)
    x, model = torch.stack(inputs), loaded.model
    predicted = model(x).argmax(1)
    expected = {
        "gradcam": whycam.GradCAM(model, "features")(x, predicted),
        "eigencam": whycam.EigenCAM(model, "features")(x),
        "saliency": whycam.Saliency(model)(x, predicted),
        "diffcam": whycam.DiffCAM(model, "features").fit(torch.stack(_read([refs], loaded.preprocess)[1]))(x),
    }
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{n}_{m}.npy" for n in names for m in expected)
    for i, (name, record) in enumerate(zip(names, summary["images"], strict=True)):
        assert set(record) == {"image", "prediction", "prediction_name", "probability", "results"}
        assert record["prediction"] == int(predicted[i])
        for item in record["results"]:
            assert set(item) == {
                "method",
                "layer",
                "target",
                "target_name",
                "reference",
                "question",
                "time_s",
                "overlay",
                "map",
            }
            saliency = np.load(out / f"{name}_{item['method']}.npy")
            assert np.allclose(saliency, expected[item["method"]][i].numpy(), atol=1e-6), (name, item["method"])
    dataset = _mask_dataset(tmp_path)
    out = tmp_path / "evaluate"
    metric_names = ["auprc", "pointing_game", "deletion"]
    result = invoke(
        "evaluate", dataset, "--model", TINY, "--method", "gradcam", "--metrics", ",".join(metric_names), "--out", out
    )
    assert result.returncode == 0, result.stderr
    truth = whycam.inputs.read_ground_truth(dataset, loaded, [])
    targets = model(truth.inputs).argmax(1)
    maps = whycam.GradCAM(model, "features")(truth.inputs, targets)
    rows = json.loads((out / "results.json").read_text())["per_image"]
    assert [row["image"] for row in rows] == truth.names and set(rows[0]) == {
        "image",
        "method",
        "target",
        "time_s",
        *metric_names,
    }
    for name in metric_names:
        function = getattr(whycam.metrics, name)
        direct = function(model, truth.inputs, maps, targets) if name == "deletion" else function(maps, truth.masks)
        assert np.allclose([row[name] for row in rows], direct.scores.double().numpy(), atol=1e-6, equal_nan=True), name
    assert sorted(p.name for p in out.iterdir()) == [
        "curve_deletion_accuracy.png",
        "curve_deletion_score.png",
        "per_image.csv",
        "report.html",
        "results.json",
        "summary.csv",
        "summary.md",
    ]
