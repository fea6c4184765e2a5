"""Every many-pass method and metric keeps to the caller's ``batch_size``: no forward pass of the model,
and no layer after a replayed activation, ever sees more rows than that; and the budget changes the
speed, never the result.

The measure is deterministic: a forward pre-hook records the rows of every call of the model and of
its classifier (Ablation-CAM's replay expands one image's activation into many rows after the layer).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import whycam
from whycam import metrics

BUDGET = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    maps = torch.rand(2, 32, 32, generator=generator)
    return images, maps


CASES = {
    "scorecam": lambda m, x, s, b: whycam.ScoreCAM(m, "layer1", batch_size=b)(x, target=[1, 3]),
    "ablationcam": lambda m, x, s, b: whycam.AblationCAM(m, "layer1", batch_size=b)(x, target=[1, 3]),
    "integratedgradients": lambda m, x, s, b: whycam.IntegratedGradients(m, steps=8, batch_size=b)(x, target=[1, 3]),
    "smoothgrad": lambda m, x, s, b: whycam.SmoothGrad(m, samples=5, batch_size=b)(x, target=[1, 3]),
    "occlusion": lambda m, x, s, b: whycam.Occlusion(m, window=16, stride=8, batch_size=b)(x, target=[1, 3]),
    "rise": lambda m, x, s, b: whycam.RISE(m, masks=12, grid=4, batch_size=b)(x, target=[1, 3]),
    "road": lambda m, x, s, b: metrics.road(m, x, s, [1, 3], percentages=(20, 50, 80), batch_size=b).curves["morf"],
    "deletion": lambda m, x, s, b: metrics.deletion(m, x, s, [1, 3], steps=4, batch_size=b).curves["score"],
    "insertion": lambda m, x, s, b: metrics.insertion(m, x, s, [1, 3], steps=4, batch_size=b).curves["score"],
    "average_drop": lambda m, x, s, b: metrics.average_drop(m, x, s, [1, 3], batch_size=b).scores,
    "sanity_check": lambda m, x, s, b: metrics.sanity_check(
        lambda copy: whycam.RISE(copy, masks=12, grid=4, batch_size=b),
        m,
        x,
        [1, 3],
        layers=["fc"],
        modes=["cascading"],
        batch_size=b,
    )["cascading"].curves["spearman"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_forward_pass_exceeds_the_batch_size_and_the_result_does_not_depend_on_it(name, model, inputs):
    images, maps = inputs
    rows: list[int] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0])) for module in (model, model.fc)
    ]
    try:
        budgeted = CASES[name](model, images, maps, BUDGET)
    finally:
        for handle in handles:
            handle.remove()
    assert rows, "the hook saw no forward pass"
    assert max(rows) <= BUDGET, f"{name}: a forward pass of {max(rows)} rows, over the budget of {BUDGET}"
    unbudgeted = CASES[name](model, images, maps, 256)
    assert torch.allclose(budgeted, unbudgeted, atol=1e-5, rtol=1e-4)
