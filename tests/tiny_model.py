"""Tiny seeded CNNs: ``make`` for the CLI tests (the spec ``tests/tiny_model.py:make``), ``small_cnn``
for the oracle tests (an in-place ReLU, max pooling, GAP and a linear head); ``SMALL_VIT``, the sizes
of the Hugging Face ViT-style configs the tests build (64 px, 16 px patches: a 4 x 4 token grid)."""

from __future__ import annotations

import torch
from torch import nn

from whycam.models import LoadedModel, Preprocess

SMALL_VIT = dict(
    image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def make() -> LoadedModel:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module(
        "features",
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
    )
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(8, 4))
    preprocess = Preprocess(resize=32, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return LoadedModel(model.eval(), preprocess, ["ant", "bee", "cat", "dog"], "features", "tiny")


def no_layer() -> LoadedModel:
    """The same model without a layer of its own: the layer methods choose one automatically."""
    loaded = make()
    loaded.layer = None
    return loaded


class DictOutput(nn.Module):
    """The tiny network with a Hugging Face-style output: ``{"logits": ..., "features": ...}``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"features": self.net.features(x), "logits": self.net(x)}


def dict_output() -> LoadedModel:
    """The same model returning a dict; the predictions must go through the output selector."""
    loaded = make()
    loaded.model = DictOutput(loaded.model).eval()
    loaded.layer = "net.features"
    return loaded


def plain() -> nn.Module:
    """The same network as a bare module (default preprocessing)."""
    return make().model


def no_gap() -> LoadedModel:
    """The same features, pooled to 2x2 and flattened into the classifier: no GAP + linear head, so
    CAM cannot explain it (Grad-CAM can)."""
    torch.manual_seed(0)
    loaded = make()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    loaded.model = nn.Sequential(loaded.model.features, head).eval()
    loaded.layer = "0"
    return loaded


def small_cnn() -> nn.Module:
    """A seeded (3 -> 8 -> 16 channels) CNN with an in-place ReLU, max pooling and a 10-class head."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
