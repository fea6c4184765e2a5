"""Shared fixtures: tiny random-init real architectures and small seeded images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from tiny_model import make

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=generator)


@pytest.fixture(scope="session")
def tiny_loaded():
    """``tiny_model.make()``: the seeded 4-class CNN with its preprocessing (shared, never mutated)."""
    return make()


def write_images(root, count: int, seed: int = 0) -> None:
    """``count`` random 32 px RGB PNGs in two class folders 0/ and 1/, and one corrupt file in 0/."""
    rng = np.random.default_rng(seed)
    for label in ("0", "1"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / str(i % 2) / f"im{i:04d}.png")
    (root / "0" / "corrupt.png").write_bytes(b"these bytes are not a PNG")


@pytest.fixture(scope="session")
def dataset_folder(tmp_path_factory):
    """200 generated PNGs in class folders 0/ and 1/ plus one corrupt file (``write_images``); read only."""
    root = tmp_path_factory.mktemp("images")
    write_images(root, 200)
    return root


@pytest.fixture(scope="session")
def small_dataset_folder(tmp_path_factory):
    """60 generated PNGs (30 per class) plus one corrupt file, for the engines' slower comparisons; read only."""
    root = tmp_path_factory.mktemp("few_images")
    write_images(root, 60)
    return root
