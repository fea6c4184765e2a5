"""The command line with named targets and a DICOM slice (pydicom's bundled CT scan)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
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
