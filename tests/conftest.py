"""Shared fixtures: tiny random-init real architectures and small seeded images."""

from __future__ import annotations

import pytest
import torch
import torchvision

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 64, 64, generator=generator)
