"""DiffCAM on real data: a small CNN trained here, in seconds, on scikit-learn's handwritten digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from whycam import DiffCAM


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 digits, upsampled to 32x32, in [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    return F.interpolate(images, size=32, mode="bilinear", align_corners=False), torch.tensor(digits.target)


def _train(images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int = 8) -> nn.Module:
    """A five-conv CNN with a global-average-pooling head, Adam, batches of 32 (seeded)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(32):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _top_fraction(maps: torch.Tensor, rows: int = 10) -> torch.Tensor:
    """Share of each map's mass in the top ``rows`` of 32 (the top bar of a 7)."""
    return maps[:, :rows].sum((1, 2)) / maps.sum((1, 2)).clamp(min=1e-12)


@pytest.mark.slow  # trains a CNN for 8 epochs (about 25 s); the shipped digits CNN asks the same question below
def test_why_not_a_one_points_at_the_top_bar_of_a_seven():
    """ "Why is this 7 not a 1?" (reference: the 1s) puts more of the map on the 7's top bar than
    "why is this 7?" (reference: every other digit, among them 2s, 3s and 5s, whose top bars explain
    the bar away).

    Measured here (training seed 0, 8 epochs, test accuracy 0.93, the 46 test 7s, share of the map's
    mass in the top 10 of 32 rows): default Ledoit-Wolf, why-not-1 0.299 against why 0.275 (larger on
    57% of the 7s); without whitening (shrinkage=1) 0.344 against 0.267 (larger on 93%).
    The effect is modest and depends on the trained network: over training seeds 0-3 it held on 0, 2
    and 3 (Ledoit-Wolf: 0.30/0.27, 0.45/0.37, 0.26/0.24) and reversed on seed 1, the least accurate
    model (0.14/0.24; shrinkage=1 a tie, 0.088/0.091).
    """
    images, labels = _digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    model = _train(images[train], labels[train], seed=0)
    accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean()
    assert accuracy > 0.9
    sevens = images[test][labels[test] == 7]
    for shrinkage, share in (("ledoit-wolf", 0.5), (1.0, 0.85)):
        dc = DiffCAM(model, layer="9", shrinkage=shrinkage).fit((images[train], labels[train]))
        assert dc.reference_.meta["embedding"] == "avg" and sorted(dc.bank_.labels) == list(range(10))
        why = _top_fraction(dc.why(sevens, 7))
        why_not_one = _top_fraction(dc.why_not(sevens, 1))
        assert why_not_one.mean() > why.mean()
        assert (why_not_one > why).float().mean() > share


def test_why_not_a_one_on_the_shipped_digits_cnn():
    """The same question on whycam's shipped digits CNN (``load_model("digits-cnn")``, 98.6% on its
    held-out 20%, trained by scripts/train_digits.py): DiffCAM fitted on its training 80%, explained
    on the 42 held-out 7s. Measured: why-not-1 0.260 of the mass on the top bar against why 0.205,
    larger on 88% of the 7s (Ledoit-Wolf; OAS 0.261 against 0.205)."""
    from whycam.models import digits_images, load_model

    loaded = load_model("digits-cnn")
    images, labels = digits_images()
    inputs = torch.stack([loaded.preprocess(image) for image in images])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, held_out = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
    sevens = inputs[held_out][labels[held_out] == 7]
    dc = DiffCAM(loaded.model, loaded.layer, shrinkage="ledoit-wolf").fit((inputs[train], labels[train]))
    why = _top_fraction(dc.why(sevens, 7))
    why_not_one = _top_fraction(dc.why_not(sevens, 1))
    assert why_not_one.mean() > why.mean() + 0.03
    assert (why_not_one > why).float().mean() > 0.8
