"""The command line with named targets and a DICOM slice (pydicom's bundled CT scan)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image
from pydicom.data import get_testdata_file

from whycam.cli import main

TINY = f"{Path(__file__).parent / 'tiny_model.py'}:make"


def test_explain_a_dicom_slice_with_a_named_target(tmp_path):
    scan = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), scan)
    out = tmp_path / "out"
    arguments = ["explain", str(scan), "--model", TINY, "--method", "gradcam", "--target", "labels:0,2", "--out", out]
    result = CliRunner().invoke(main, [str(a) for a in arguments], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    record = summary["images"][0]["results"][0]
    assert record["target"] == "labels:0,2" and record["target_name"] is None
    saliency = np.load(out / record["map"])
    assert saliency.ndim == 2 and 0 <= saliency.min() and saliency.max() <= 1


def test_a_bad_target_spec_is_a_usage_error(tmp_path):
    scan = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), scan)
    arguments = ["explain", str(scan), "--model", TINY, "--target", "box:1,2", "--out", tmp_path / "o"]
    result = CliRunner().invoke(main, [str(a) for a in arguments])
    assert result.exit_code == 2 and "box:1,2" in result.output


def test_why_not_by_class_names_for_finercam_and_gradcam(tmp_path):
    """--target versus:bee,ant is "why bee, not ant": FinerCAM compares bee with ant alone, Grad-CAM
    explains y_bee - y_ant; --option finercam.versus=0 with --target bee asks FinerCAM the same."""
    image = tmp_path / "one.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(image)
    runs = {
        "named": ["--method", "finercam,gradcam", "--target", "versus:bee,ant"],
        "option": ["--method", "finercam", "--target", "bee", "--option", "finercam.versus=0"],
    }
    maps = {}
    for name, extra in runs.items():
        out = tmp_path / name
        arguments = ["explain", str(image), "--model", TINY, *extra, "--out", out]
        result = CliRunner().invoke(main, [str(a) for a in arguments], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        for record in json.loads((out / "summary.json").read_text())["images"][0]["results"]:
            maps[name, record["method"]] = np.load(out / record["map"])
            assert record["target"] == ("versus:1,0" if name == "named" else 1)
    assert maps["named", "finercam"].max() == 1
    assert np.abs(maps["option", "finercam"] - maps["named", "finercam"]).max() < 1e-5
    assert np.abs(maps["named", "gradcam"] - maps["named", "finercam"]).max() < 1e-5  # p_ant cancels
