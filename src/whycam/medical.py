"""Medical images: DICOM files and series (pydicom), NIfTI volumes (nibabel), 16-bit intensities.

A DICOM slice's stored values become physical values by its rescale, ``v = slope * stored +
intercept`` (Hounsfield units for CT). A window ``(center c, width w)`` maps them to [0, 1]:
``clip((v - (c - w / 2)) / w, 0, 1)``; by default the file's own WindowCenter/WindowWidth, else the
volume's full range. A series (a folder of slices) is ordered along the patient axis
(ImagePositionPatient, else InstanceNumber). A NIfTI volume's voxel axes (i, j, k) become (D, H, W)
= (k, j, i). Volumes come out as (1, D, H, W) float32: one channel, as 3-D networks take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Window = tuple[float, float] | None


class MedicalReadError(OSError):
    """A DICOM or NIfTI file (or series) that cannot be read, naming it and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(f"cannot read {self.path}: {reason}")


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Physical values to [0, 1] through ``window = (center, width)``; None: the values' full range
    (a constant volume becomes zeros)."""
    values = values.astype(np.float64)
    if window is None:
        low, width = float(values.min()), float(values.max() - values.min())
    else:
        center, width = float(window[0]), float(window[1])
        if width <= 0:
            raise ValueError(f"a window's width must be positive, got {width}")
        low = center - width / 2
    if width == 0:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - low) / width, 0.0, 1.0).astype(np.float32)


def _dataset(path: Path):
    import pydicom  # noqa: PLC0415 (the optional extra whycam[medical])

    try:
        return pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 (pydicom raises many kinds; the file is named either way)
        raise MedicalReadError(path, f"not a readable DICOM file ({error})") from None


def _first(value) -> float:
    """A DICOM window value, which may be multi-valued: the first one."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


def _physical(dataset) -> np.ndarray:
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # noqa: BLE001
        raise MedicalReadError(getattr(dataset, "filename", "?"), f"no readable pixel data ({error})") from None
    return pixels.astype(np.float64) * slope + intercept


def _file_window(dataset) -> Window:
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        return _first(dataset.WindowCenter), _first(dataset.WindowWidth)
    return None


def read_dicom(path: str | Path, window: Window | str = "file") -> np.ndarray:
    """A DICOM file as an (H, W) float32 array in [0, 1], or a folder (a series) as (D, H, W).

    ``window``: ``"file"`` (the file's WindowCenter/WindowWidth, else the full range), ``None`` (the
    full range), or ``(center, width)`` in physical units (e.g. ``(40, 400)`` for CT soft tissue)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_dicom(p))
        if not files:
            raise MedicalReadError(path, f"no DICOM files ({', '.join(DICOM_SUFFIXES)}) in the folder")
        datasets = [_dataset(f) for f in files]
        datasets.sort(key=_slice_position)
        shapes = {d.pixel_array.shape for d in datasets}
        if len(shapes) > 1:
            raise MedicalReadError(path, f"the series' slices have different sizes {sorted(shapes)}")
        values = np.stack([_physical(d) for d in datasets])
        first = datasets[0]
    elif path.is_file():
        first = _dataset(path)
        values = _physical(first)
    else:
        raise MedicalReadError(path, "no such file or folder")
    chosen = _file_window(first) if window == "file" else window
    return apply_window(values, chosen)


def _slice_position(dataset) -> float:
    position = getattr(dataset, "ImagePositionPatient", None)
    if position is not None:
        return float(position[2])
    return float(getattr(dataset, "InstanceNumber", 0) or 0)


def read_nifti(path: str | Path, window: Window = None) -> np.ndarray:
    """A NIfTI volume as a (D, H, W) float32 array in [0, 1] (voxel axes k, j, i), through ``window``."""
    return apply_window(nifti_voxels(path), window)


def nifti_voxels(path: str | Path) -> np.ndarray:
    """A NIfTI volume's stored values as a (D, H, W) float64 array (voxel axes k, j, i), unwindowed."""
    import nibabel  # noqa: PLC0415 (the optional extra whycam[medical])

    path = Path(path)
    if not path.is_file():
        raise MedicalReadError(path, "no such file")
    try:
        values = np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float64))
    except Exception as error:  # noqa: BLE001
        raise MedicalReadError(path, f"not a readable NIfTI file ({error})") from None
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise MedicalReadError(path, f"a volume has 3 axes; this one has shape {values.shape}")
    return values.transpose(2, 1, 0)


def load_volume(sources: str | Path | Sequence[str | Path], window: Window | str = "file") -> Tensor:
    """Volumes (NIfTI files, DICOM series folders) as one (B, 1, D, H, W) float32 batch in [0, 1].

    ``window``: see ``read_dicom``; for NIfTI, ``"file"`` means the full range."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    volumes = []
    for source in sources:
        if is_nifti(source):
            volumes.append(read_nifti(source, None if window == "file" else window))
        elif Path(source).is_dir() or is_dicom(source):
            volume = read_dicom(source, window)
            volumes.append(volume if volume.ndim == 3 else volume[None])
        else:
            raise MedicalReadError(source, "not a NIfTI file (.nii, .nii.gz) nor a DICOM file or series folder")
    shapes = {v.shape for v in volumes}
    if len(shapes) > 1:
        raise ValueError(f"the volumes have different shapes {sorted(shapes)}; resample them to one shape first")
    return torch.from_numpy(np.stack(volumes)[:, None].copy())
