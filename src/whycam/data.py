"""Images in, tensors out: files, folders, PIL images and numpy arrays; datasets with boxes or masks.

Every image becomes a (3, H, W) float32 tensor in [0, 1]: grayscale is repeated over three
channels, an alpha channel is composited onto white, palette images are expanded, and the EXIF
orientation of a photograph is applied. A DICOM file (``.dcm``) is read with its 16-bit values,
rescale and window (``whycam.medical``; volumes: ``load_volume``). A file that cannot be read raises
``ImageReadError`` naming it, so that a caller reading many files (the CLI) can report it, skip it and go on.

Datasets with ground truth (``load_dataset``) come in three layouts:

- Pascal VOC: a folder of images with one ``.xml`` annotation per image (same stem, beside the
  image or in a sibling ``Annotations/`` folder); every ``<object>`` gives a box and a label.
- CSV: a file with the header ``image,xmin,ymin,xmax,ymax[,label]``, one row per box, image paths
  relative to the CSV file.
- Masks: a folder with ``images/`` and ``masks/`` subfolders; each image has a PNG mask of the same
  stem (non-zero pixels are the object), and optionally a ``labels.csv`` (``image,label``).
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import InputError
from .medical import MedicalReadError, is_dicom, is_nifti, nifti_voxels, read_dicom

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".dcm")

ImageSource = str | Path | Image.Image | np.ndarray | Tensor


class ImageReadError(InputError, OSError):
    """An image file that does not exist, is not an image, or is damaged."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class NoImagesError(InputError, ValueError):
    """A folder (or a list of paths) that holds no image file."""


def find_images(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Image files named by ``paths``: files as given, folders searched recursively (sorted).

    A folder without any image file raises ``NoImagesError``; a path that does not exist raises
    ``ImageReadError``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise NoImagesError(f"no images in folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif path.exists():
            found.append(path)
        else:
            raise ImageReadError(path, "no such file or folder")
    return found


def read_image(path: str | Path) -> Image.Image:
    """Read one file as an RGB PIL image, EXIF orientation applied; ``ImageReadError`` if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (or a format Pillow cannot decode)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"damaged or truncated image ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of a PIL image: alpha composited onto white, grayscale and palettes expanded."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).round().astype(np.uint8))
    return image.convert("RGB")


def _read_file(path: str | Path) -> Image.Image | Tensor:
    """A file as a PIL image, or a DICOM slice as an (H, W) tensor in [0, 1]."""
    if not is_dicom(path):
        return read_image(path)
    try:
        slice_ = read_dicom(path)
    except MedicalReadError as error:
        raise ImageReadError(path, str(error)) from None
    if slice_.ndim != 2:
        raise ImageReadError(path, f"a DICOM image of shape {slice_.shape}, not one slice; use load_volume")
    return torch.from_numpy(slice_)


def _from_numpy(image: np.ndarray) -> Tensor:
    """An (H, W) or (H, W, 1|3|4) array, uint8 or floats in [0, 1], as a channels-first float tensor."""
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = np.moveaxis(image, -1, 0)
    elif image.ndim != 2:
        raise ValueError(f"a numpy image must be (H, W) or (H, W, 1|3|4); got shape {image.shape}")
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.ascontiguousarray(image).astype(np.float32) / scale)


def to_tensor(image: ImageSource) -> Tensor:
    """One image as a (3, H, W) float32 tensor in [0, 1].

    Accepts a path, a PIL image, a numpy array (H, W), (H, W, 1|3|4) of uint8 or floats in [0, 1],
    or a tensor (H, W), (1|3|4, H, W).
    """
    if isinstance(image, (str, Path)):
        image = _read_file(image)
    if isinstance(image, Image.Image):
        array = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        image = _from_numpy(image)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"cannot read an image from {type(image).__name__}; pass a path, a PIL image, a numpy array or a tensor"
        )
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"an image tensor must be (H, W) or (1|3|4, H, W); got {tuple(image.shape)}")
    image = image.float()
    if image.shape[0] == 4:
        alpha = image[3:].clamp(0, 1)
        image = image[:3] * alpha + (1 - alpha)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(
            f"image values lie in [{image.min():.3g}, {image.max():.3g}]; whycam reads images in "
            "[0, 1] (floats) or 0..255 (uint8): divide by 255 or undo the normalisation"
        )
    return image.contiguous()


def load_images(sources: ImageSource | Sequence[ImageSource], preprocess=None) -> Tensor:
    """Load images into one (B, C, H, W) batch.

    ``sources``: paths (files or folders), PIL images, numpy arrays or tensors, or one of them.
    ``preprocess``: a callable on one (3, H, W) image in [0, 1] (e.g. ``load_model(...).preprocess``);
    without it the images are returned in [0, 1] and must all have the same size.
    An unreadable file raises ``ImageReadError`` naming it.
    """
    if isinstance(sources, (str, Path, Image.Image, np.ndarray, Tensor)):
        sources = [sources]
    items: list[ImageSource] = []
    for source in sources:
        items.extend(find_images(source) if isinstance(source, (str, Path)) else [source])
    if not items:
        raise NoImagesError("no images given")
    tensors = [to_tensor(item) for item in items]
    if preprocess is not None:
        tensors = [preprocess(t) for t in tensors]
    sizes = {tuple(t.shape) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(
            f"the images have different sizes {sorted(sizes)}; pass preprocess= (for example "
            "load_model(...).preprocess) to resize them to the model's input"
        )
    return torch.stack(tensors)


def iter_images(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Tensor | Exception]]:
    """``(path, image)`` for every image named by ``paths``, with the error in place of an image
    (``ImageReadError``, ``NoImagesError``) where a file or folder cannot be read. Never raises."""
    for path in paths:
        try:
            files = find_images(path)
        except (ImageReadError, NoImagesError) as error:
            yield Path(path), error
            continue
        for file in files:
            try:
                yield file, to_tensor(file)
            except ImageReadError as error:
                yield file, error


def load_target_file(path: str | Path) -> Tensor:
    """A tensor a named target reads from a file: an embedding or mask as ``.npy`` / ``.pt``
    (``weights_only``), a mask image or a NIfTI mask volume (D, H, W) (non-zero voxels are the region)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if is_nifti(path):
        try:
            return torch.from_numpy((nifti_voxels(path) != 0).astype(np.float32))
        except MedicalReadError as error:
            raise ImageReadError(path, str(error)) from None
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if path.suffix == ".pt":
        return torch.as_tensor(torch.load(path, weights_only=True)).float()
    with Image.open(path) as image:
        return torch.from_numpy((np.asarray(image.convert("L")) > 0).astype(np.float32))


# --- datasets with ground truth -------------------------------------------------------------------

Box = tuple[float, float, float, float]


@dataclass
class Sample:
    """One image of a ground-truth dataset: boxes ``(xmin, ymin, xmax, ymax)`` in pixels and/or a mask."""

    path: Path
    boxes: list[Box] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # one per box (None: unlabelled), or the image's
    mask_path: Path | None = None

    @property
    def label(self) -> str | None:
        """The label of the first labelled object (the one explained), if any."""
        return next((label for label in self.labels if label), None)

    @property
    def explained_boxes(self) -> list[Box]:
        """The boxes of the explained object's class: every box labelled like the first labelled object
        (all boxes when none carries a label). The ground truth of "where is the class?"."""
        if self.label is None or not self.boxes:
            return list(self.boxes)
        return [box for box, label in zip(self.boxes, self.labels, strict=True) if label == self.label]

    def mask(self, size: tuple[int, int]) -> Tensor:
        """The ground truth as a (H, W) boolean mask at the image's ``size`` (H, W): the PNG mask, or
        the union of ``explained_boxes``."""
        height, width = size
        if self.mask_path is not None:
            try:
                with Image.open(self.mask_path) as image:
                    array = np.asarray(image.convert("L"))
            except (OSError, SyntaxError, ValueError) as error:
                raise ImageReadError(self.mask_path, f"unreadable mask ({error})") from None
            if array.shape != (height, width):
                raise ValueError(
                    f"mask {self.mask_path} is {array.shape[1]}x{array.shape[0]}, its image "
                    f"{self.path} is {width}x{height}; a mask must have its image's size"
                )
            return torch.from_numpy(array > 0)
        mask = torch.zeros(height, width, dtype=torch.bool)
        for xmin, ymin, xmax, ymax in self.explained_boxes:
            mask[max(int(ymin), 0) : max(int(round(ymax)), 0), max(int(xmin), 0) : max(int(round(xmax)), 0)] = True
        return mask


@dataclass
class GroundTruthDataset:
    """A list of ``Sample`` read from one of the three layouts; ``kind`` is "voc", "csv" or "masks"."""

    samples: list[Sample]
    kind: str
    root: Path

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)


def load_dataset(path: str | Path) -> GroundTruthDataset:
    """Read a dataset with ground truth: a VOC folder, a CSV of boxes, or a folder with images/ + masks/."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(
                f"{path} is a file but not a .csv; a dataset is a CSV of boxes, a folder of images "
                "with VOC .xml files, or a folder with images/ and masks/"
            )
        return _read_csv(path)
    if (path / "masks").is_dir():
        return _read_masks(path)
    if any(path.rglob("*.xml")):
        return _read_voc(path)
    raise ValueError(
        f"{path} is not a dataset: it has no masks/ folder and no VOC .xml annotations "
        "(see docs/cli.md, 'Dataset formats')"
    )


def _read_csv(path: Path) -> GroundTruthDataset:
    samples: dict[Path, Sample] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "xmin", "ymin", "xmax", "ymax"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; the header must be "
                "image,xmin,ymin,xmax,ymax[,label]"
            )
        for line, row in enumerate(reader, start=2):
            image = (path.parent / row["image"]).resolve()
            try:
                box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise ValueError(f"{path}, line {line}: box coordinates must be numbers") from None
            sample = samples.setdefault(image, Sample(image))
            sample.boxes.append(box)  # type: ignore[arg-type]
            sample.labels.append(row.get("label") or None)  # one label per box, so that they stay paired
    if not samples:
        raise NoImagesError(f"{path} lists no boxes")
    return GroundTruthDataset(list(samples.values()), "csv", path.parent)


def _read_voc(root: Path) -> GroundTruthDataset:
    images = {p.stem: p for p in find_images(root) if "Annotations" not in p.parts}
    samples = []
    for xml in sorted(root.rglob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as error:
            raise ValueError(f"{xml}: not a valid VOC annotation ({error})") from None
        image = images.get(xml.stem)
        if image is None:
            filename = tree.findtext("filename")
            image = images.get(Path(filename).stem) if filename else None
        if image is None:
            raise ValueError(f"{xml}: no image with stem {xml.stem!r} under {root}")
        sample = Sample(image)
        for obj in tree.iter("object"):
            bndbox = obj.find("bndbox")
            if bndbox is None:
                continue
            sample.boxes.append(tuple(float(bndbox.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")))
            sample.labels.append((obj.findtext("name") or "").strip())
        if sample.boxes:
            samples.append(sample)
    if not samples:
        raise NoImagesError(f"no annotated boxes in {root}")
    return GroundTruthDataset(samples, "voc", root)


def _read_masks(root: Path) -> GroundTruthDataset:
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
    labels: dict[str, str] = {}
    if (root / "labels.csv").is_file():
        with open(root / "labels.csv", newline="") as handle:
            labels = {Path(row["image"]).stem: row["label"] for row in csv.DictReader(handle)}
    samples = []
    for image in find_images(root / "images"):
        if image.stem not in masks:
            raise ValueError(f"image {image} has no mask {root / 'masks' / (image.stem + '.png')}")
        samples.append(
            Sample(
                image,
                labels=[labels[image.stem]] if image.stem in labels else [],
                mask_path=masks[image.stem],
            )
        )
    return GroundTruthDataset(samples, "masks", root)
