"""Image loading and ground-truth datasets: formats, conversions, EXIF, bad files, the three layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from whycam.data import (
    ImageReadError,
    NoImagesError,
    find_images,
    iter_images,
    load_dataset,
    load_images,
    read_image,
    to_tensor,
)


def _rgb(width: int = 12, height: int = 8, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif", ".bmp"])
def test_every_format_reads_as_rgb_in_unit_range(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    _rgb().save(path)
    image = to_tensor(read_image(path))
    assert image.shape == (3, 8, 12) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    if suffix in (".png", ".tif", ".bmp"):  # lossless: the exact pixels
        expected = torch.from_numpy(np.asarray(_rgb(), np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(image, expected)


def test_grayscale_and_rgba_are_converted(tmp_path):
    gray = Image.fromarray(np.full((5, 6), 128, np.uint8), "L")
    gray.save(tmp_path / "gray.png")
    image = to_tensor(read_image(tmp_path / "gray.png"))
    assert image.shape == (3, 5, 6) and torch.allclose(image, torch.full_like(image, 128 / 255))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = to_tensor(read_image(tmp_path / "rgba.png"))
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[:, 3, 0], torch.ones(3))  # transparent composited onto white


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    loaded = to_tensor(read_image(tmp_path / "rotated.jpg"))
    assert loaded.shape == (3, 20, 10)
    assert loaded[2, 2, 5] > 0.8 and loaded[0, 17, 5] > 0.8  # blue now on top, red below


def test_numpy_pil_and_tensor_inputs():
    array = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    from_numpy = to_tensor(array)
    assert torch.allclose(from_numpy, to_tensor(Image.fromarray(array)))
    assert torch.allclose(to_tensor(array.astype(np.float32) / 255), from_numpy)
    assert to_tensor(np.zeros((6, 7))).shape == (3, 6, 7)
    assert to_tensor(torch.rand(1, 6, 7)).shape == (3, 6, 7)
    with pytest.raises(ValueError, match="divide by 255"):
        to_tensor(np.full((3, 3), 300.0))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        to_tensor(np.zeros((2, 3, 4, 5)))


def test_load_images_batches_and_asks_for_preprocessing_when_sizes_differ(tmp_path):
    _rgb(12, 8).save(tmp_path / "a.png")
    _rgb(12, 8, seed=1).save(tmp_path / "b.png")
    batch = load_images(tmp_path)
    assert batch.shape == (2, 3, 8, 12)
    _rgb(10, 10).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="preprocess="):
        load_images(tmp_path)
    from whycam.models import Preprocess

    batch = load_images(tmp_path, Preprocess(resize=6, crop=(6, 6)))
    assert batch.shape == (3, 3, 6, 6)


def test_bad_files_name_themselves(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    buffer = tmp_path / "good.jpg"
    _rgb(64, 64).save(buffer)
    (tmp_path / "corrupt.jpg").write_bytes(buffer.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="text.png.*not an image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageReadError, match="corrupt.jpg.*damaged or truncated"):
        read_image(tmp_path / "corrupt.jpg")
    with pytest.raises(ImageReadError, match="missing.png.*no such file"):
        read_image(tmp_path / "missing.png")
    results = dict(iter_images([tmp_path]))
    assert isinstance(results[tmp_path / "good.jpg"], torch.Tensor)
    assert isinstance(results[tmp_path / "corrupt.jpg"], ImageReadError)
    assert isinstance(results[tmp_path / "text.png"], ImageReadError)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(NoImagesError, match="no images in folder"):
        find_images(tmp_path / "empty")
    [(path, error)] = list(iter_images([tmp_path / "empty"]))
    assert isinstance(error, NoImagesError)


def test_voc_dataset(tmp_path):
    _rgb(40, 30).save(tmp_path / "cat.jpg")
    (tmp_path / "cat.xml").write_text(
        "<annotation><filename>cat.jpg</filename><object><name>tabby</name><bndbox><xmin>4</xmin>"
        "<ymin>5</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>30</xmin><ymin>0</ymin><xmax>40</xmax><ymax>10</ymax>"
        "</bndbox></object></annotation>"
    )
    dataset = load_dataset(tmp_path)
    assert dataset.kind == "voc" and len(dataset) == 1
    sample = dataset.samples[0]
    assert sample.boxes == [(4, 5, 20, 15), (30, 0, 40, 10)] and sample.label == "tabby"
    mask = sample.mask((30, 40))  # the explained class's boxes only: the dog is not where the tabby is
    assert sample.explained_boxes == [(4, 5, 20, 15)]
    assert mask.sum() == 16 * 10 and mask[5, 4] and not mask[4, 4] and not mask[0, 35]


def test_several_objects_of_the_explained_class_are_all_ground_truth(tmp_path):
    _rgb(40, 30).save(tmp_path / "cats.jpg")
    boxes = [("tabby", (2, 2, 10, 8)), ("dog", (12, 2, 20, 8)), ("tabby", (30, 20, 38, 28))]
    (tmp_path / "cats.xml").write_text(
        "<annotation>"
        + "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object>"
            for name, (x0, y0, x1, y1) in boxes
        )
        + "</annotation>"
    )
    sample = load_dataset(tmp_path).samples[0]
    assert sample.explained_boxes == [(2, 2, 10, 8), (30, 20, 38, 28)]
    mask = sample.mask((30, 40))
    assert mask.sum() == 8 * 6 + 8 * 8 and mask[2, 2] and mask[27, 37] and not mask[2, 12]


def test_csv_dataset(tmp_path):
    (tmp_path / "img").mkdir()
    _rgb(20, 20).save(tmp_path / "img" / "a.png")
    (tmp_path / "boxes.csv").write_text(
        "image,xmin,ymin,xmax,ymax,label\nimg/a.png,0,0,10,5,3\nimg/a.png,15,15,20,20,3\n"
    )
    dataset = load_dataset(tmp_path / "boxes.csv")
    assert dataset.kind == "csv" and len(dataset) == 1
    assert dataset.samples[0].mask((20, 20)).sum() == 50 + 25
    (tmp_path / "bad.csv").write_text("file,x\n")
    with pytest.raises(ValueError, match="missing column"):
        load_dataset(tmp_path / "bad.csv")


def test_csv_labels_stay_with_their_boxes_when_some_rows_have_none(tmp_path):
    """An unlabelled first row must not take the label of the next row: the class explained is the
    first label given, and its boxes are the rows that carry it (not the rows that came first)."""
    (tmp_path / "img").mkdir()
    _rgb(20, 20).save(tmp_path / "img" / "a.png")
    rows = ["img/a.png,0,0,4,4,", "img/a.png,5,5,10,10,cat", "img/a.png,12,12,20,20,cat", "img/a.png,0,10,3,20,dog"]
    (tmp_path / "boxes.csv").write_text("image,xmin,ymin,xmax,ymax,label\n" + "\n".join(rows) + "\n")
    [sample] = load_dataset(tmp_path / "boxes.csv").samples
    assert sample.labels == [None, "cat", "cat", "dog"] and sample.label == "cat"
    assert sample.explained_boxes == [(5.0, 5.0, 10.0, 10.0), (12.0, 12.0, 20.0, 20.0)]
    assert sample.mask((20, 20)).sum() == 25 + 64


def test_mask_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _rgb(8, 6).save(tmp_path / "images" / "x.png")
    truth = np.zeros((6, 8), np.uint8)
    truth[1:3, 2:6] = 255
    Image.fromarray(truth).save(tmp_path / "masks" / "x.png")
    (tmp_path / "labels.csv").write_text("image,label\nx.png,7\n")
    dataset = load_dataset(tmp_path)
    assert dataset.kind == "masks" and dataset.samples[0].label == "7"
    assert torch.equal(dataset.samples[0].mask((6, 8)), torch.from_numpy(truth > 0))
    with pytest.raises(ValueError, match="must have its image's size"):
        dataset.samples[0].mask((7, 8))


def test_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a dataset"):
        load_dataset(tmp_path)
