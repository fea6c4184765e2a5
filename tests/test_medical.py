"""Medical images: pydicom's bundled CT and MR slices (real scans, installed with pydicom, read from
its package folder: nothing is downloaded), a DICOM series, and a NIfTI volume written here."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

import whycam
from whycam.data import ImageReadError
from whycam.medical import MedicalReadError, apply_window, load_volume, read_dicom


def bundled(name: str) -> Path:
    path = Path(get_testdata_file(name))
    assert Path(pydicom.__file__).parent in path.parents  # the installed copy, not a download
    return path


def test_ct_slice_keeps_16_bit_hounsfield_values_through_the_window():
    path = bundled("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    hounsfield = dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    windowed = read_dicom(path, window=(40, 400))  # soft tissue: [-160, 240] HU -> [0, 1]
    assert windowed.shape == (128, 128) and windowed.dtype == np.float32
    assert np.allclose(windowed, np.clip((hounsfield + 160) / 400, 0, 1), atol=1e-6)
    full = read_dicom(path, window=None)
    assert np.allclose(full, (hounsfield - hounsfield.min()) / np.ptp(hounsfield), atol=1e-6)
    assert len(np.unique(full)) > 256  # not squeezed through 8 bits
    image = whycam.load_images(path)
    assert image.shape == (1, 3, 128, 128) and torch.equal(image[0, 0], image[0, 2])
    assert np.allclose(image[0, 0].numpy(), full, atol=1e-6)  # CT_small has no window: its full range


def test_mr_slice_uses_the_files_own_window():
    path = bundled("MR_small.dcm")
    dataset = pydicom.dcmread(path)
    center, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    values = dataset.pixel_array.astype(np.float64)
    assert np.allclose(read_dicom(path), np.clip((values - (center - width / 2)) / width, 0, 1), atol=1e-6)


def test_a_dicom_series_is_ordered_along_the_patient_axis(tmp_path):
    source = bundled("CT_small.dcm")
    for name, z, offset in (("b.dcm", 10.0, 200), ("a.dcm", 30.0, 400), ("c.dcm", 20.0, 300)):
        dataset = pydicom.dcmread(source)
        dataset.ImagePositionPatient = [0.0, 0.0, z]
        dataset.PixelData = (dataset.pixel_array + offset).astype(dataset.pixel_array.dtype).tobytes()
        dataset.save_as(tmp_path / name)
    volume = load_volume(tmp_path, window=None)
    assert volume.shape == (1, 1, 3, 128, 128)
    means = volume[0, 0].mean((1, 2))
    assert means[0] < means[1] < means[2]  # z = 10, 20, 30 carry offsets 200, 300, 400


def test_nifti_volume_axes_and_window(tmp_path):
    values = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 100 - 3000  # (i, j, k), 16-bit
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), path)
    volume = load_volume(path, window=(0, 2000))
    assert volume.shape == (1, 1, 6, 5, 4) and volume.dtype == torch.float32
    expected = np.clip((values.transpose(2, 1, 0) + 1000) / 2000, 0, 1)
    assert np.allclose(volume[0, 0].numpy(), expected, atol=1e-6)
    assert load_volume([path, path]).shape == (2, 1, 6, 5, 4)


def test_unreadable_files_are_named(tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file")
    with pytest.raises(ImageReadError, match="broken.dcm"):
        whycam.load_images(broken)
    with pytest.raises(MedicalReadError, match="scan.nii"):
        load_volume(tmp_path / "scan.nii")
    shutil.copy(bundled("CT_small.dcm"), tmp_path / "slice.dcm")
    with pytest.raises(MedicalReadError, match="neither|not a NIfTI"):
        load_volume(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="width must be positive"):
        apply_window(np.zeros(3), (0, 0))
    assert not apply_window(np.full((2, 2), 7.0), None).any()  # a constant volume is zeros
