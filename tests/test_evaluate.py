"""The evaluation engine behind `whycam evaluate` / `benchmark` and benchmarks/results.py."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import whycam
from whycam.evaluate import evaluate
from whycam.methods.factory import constructor_options


class Fixed(whycam.Explainer):
    """An explainer that answers every batch with the same maps (an oracle, or a blank)."""

    needs_target = False

    def __init__(self, model, maps):
        super().__init__(model)
        self.maps = maps

    def attribute(self, images, target):
        return [self.maps[: len(images)]]


@pytest.fixture
def task():
    torch.manual_seed(0)
    from tiny_model import make

    model = make().model
    images = torch.randn(6, 3, 32, 32)
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    for i in range(6):
        masks[i, 4 + 2 * i : 14 + 2 * i, 8:20] = True
    return model, images, masks


def test_a_perfect_map_scores_the_maximum_and_the_table_marks_it(task, tmp_path):
    from whycam.evaluate import evaluate

    model, images, masks = task
    methods = {"oracle": Fixed(model, masks.float()), "blank": Fixed(model, torch.zeros(6, 32, 32))}
    result = evaluate(
        model,
        images,
        methods=methods,
        metrics=["auprc", "pointing_game"],
        truth=masks,
        names=[f"im{i}" for i in range(6)],
        batch_size=6,
        progress=False,
    )
    oracle, blank = result.summary
    assert oracle["auprc"] == (1.0, 1.0, 1.0) and oracle["pointing_game"][0] == 1.0
    assert blank["auprc"][0] < 0.5  # a constant map ranks no pixel first: AUPRC at chance (the prevalence)
    assert result.higher_is_better == {"auprc": True, "pointing_game": True}
    assert len(result.rows) == 12 and result.rows[0]["image"] == "im0"
    assert "**1.000 ± 0.000**" in result.markdown()
    paths = result.save(tmp_path)
    with open(paths["summary"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["oracle", "blank"] and float(rows[0]["auprc_low"]) == 1.0
    assert set(json.loads(paths["json"].read_text())) >= {
        "summary",
        "per_image",
        "curves",
        "notes",
        "failures",
    }


def test_registered_methods_by_name_with_curves_and_notes(task):
    # eigencam at the common layer, gradcam at the layer its own options name
    from whycam.evaluate import evaluate

    model, images, _ = task
    result = evaluate(
        model,
        images,
        methods=["gradcam", "eigencam"],
        metrics=["deletion", "auprc"],
        options={"gradcam": {"layer": "features.2"}},
        layer="features",
        progress=False,
    )
    assert [s["method"] for s in result.summary] == ["gradcam", "eigencam"]
    assert "auprc skipped: no ground truth" in result.notes
    assert set(result.curves["deletion"]) == {"gradcam", "eigencam"}
    assert all(s["time_s"] > 0 for s in result.summary)


def test_unknown_names_are_refused(task):
    from whycam.evaluate import evaluate

    model, images, masks = task
    with pytest.raises(whycam.UsageError, match="unknown metric 'auprk' \\(closest: auprc\\)"):
        evaluate(model, images, methods=["gradcam"], metrics=["auprk"], truth=masks, progress=False)
    with pytest.raises(whycam.UsageError, match="unknown method 'nosuch'"):
        evaluate(model, images, methods=["nosuch"], metrics=["auprc"], truth=masks, progress=False)


def test_options_reach_only_the_constructors_that_take_them(task):
    model, images, _ = task
    assert {"layer", "output", "reshape", "classifier"} <= constructor_options(whycam.CAM)
    explainer = whycam.create("cam", model, layer="features", classifier="classifier")
    assert explainer.classifier == "classifier" and explainer.layer == "features"
    with pytest.raises(whycam.UsageError, match="cam has no option 'unrelated'; its options: classifier, layer"):
        evaluate(model, images, methods={"cam": {"unrelated": 3}}, metrics=["deletion"], progress=False)


def test_evaluate_leaves_the_model_and_the_random_state_as_they_were(task):
    """The caller's model stays in training mode (explained in eval mode all the same) and the global
    random generator is not reseeded."""
    model, images, masks = task
    model.train()
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    result = evaluate(model, images, methods=["gradcam"], metrics=["auprc"], truth=masks, progress=False, keep_maps=6)
    assert torch.equal(torch.rand(4), expected)
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    assert torch.equal(result.maps["gradcam"], whycam.GradCAM(model)(images))


def test_evaluate_predicts_through_the_output_selector(task):
    model, images, masks = task

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return {"flipped": -self.net(x), "logits": self.net(x)}

    labels = model(images).argmax(1)
    result = evaluate(
        TwoHeads().eval(),
        images,
        methods=["saliency"],
        metrics=["auprc"],
        truth=masks,
        labels=labels,
        output="flipped",
        progress=False,
    )
    assert result.accuracy == (labels == (-model(images)).argmax(1)).double().mean().item() < 1
    assert [row["target"] for row in result.rows] == (-model(images)).argmax(1).tolist()


def test_score_maps_gives_each_metric_its_own_truth_options_and_images(task):
    """A box metric scored against boxes, the rest against masks; metric options reach the metric;
    faithfulness scores only the first ``faithful`` images and leaves the rest NaN."""
    from whycam import metrics
    from whycam.evaluate import score_maps

    model, images, masks = task
    boxes = torch.tensor([[8, 4 + 2 * i, 20, 14 + 2 * i] for i in range(6)])
    maps = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    scored = score_maps(
        model,
        images,
        maps,
        targets,
        ["auprc", "energy_pointing_game", "pointing_game", "average_drop"],
        {"auprc": masks, "energy_pointing_game": boxes, "pointing_game": masks},
        options={"pointing_game": {"tolerance": 40.0}, "average_drop": {"batch_size": 2}},
        faithful=4,
        seed=3,
    )
    expected = {
        "auprc": metrics.auprc(maps, masks),
        "energy_pointing_game": metrics.energy_pointing_game(maps, boxes),
        "pointing_game": metrics.pointing_game(maps, masks, tolerance=40.0),
        "average_drop": metrics.average_drop(model, images[:4], maps[:4], targets[:4]),
    }
    for name, result in expected.items():
        value, low, high = scored.summary[name]
        assert value == pytest.approx(result.value) and (low, high) == pytest.approx(result.interval(seed=3))
        assert torch.allclose(scored.per_image[name][: len(result.scores)], result.scores.double())
    assert scored.summary["pointing_game"][0] == 1.0  # every maximum lies within 40 px
    assert scored.per_image["average_drop"][4:].isnan().all()
    assert scored.higher_is_better == {
        "auprc": True,
        "energy_pointing_game": True,
        "pointing_game": True,
        "average_drop": False,
    }


STEPPED = ("deletion", "insertion")  # curve metrics, kept short here


def test_every_metric_is_registered_with_its_kind_truth_and_direction(task):
    """The registry's declarations agree with what each metric computes, and a new metric is one
    decorated function."""
    model, images, masks = task
    maps = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(6, dtype=torch.long)
    registry = whycam.metrics.registry.metrics()
    assert {"auprc", "road", "deletion", "max_box_accuracy", "energy_pointing_game"} <= set(registry)
    for name, entry in registry.items():
        assert entry.function is getattr(whycam.metrics, name)
        if entry.faithfulness:
            result = entry.function(model, images, maps, targets, **({"steps": 2} if name in STEPPED else {}))
        else:
            result = entry.function(maps, masks)
        assert result.higher_is_better == entry.higher_is_better, name
    assert registry["energy_pointing_game"].truth == "boxes" and registry["auprc"].truth == "mask"
    with pytest.raises(ValueError, match="localisation metric reads one of"):
        whycam.metrics.metric("localisation")


def test_evaluate_routes_each_metric_its_declared_ground_truth(task):
    """Given masks and boxes, the box metrics and the energy pointing game (Score-CAM: energy in the
    box) read the boxes, the others the masks (the CLI used to give the energy pointing game masks,
    the results benchmark boxes)."""
    model, images, masks = task
    boxes = torch.tensor([[[6.0, 2 + 2 * i, 26, 18 + 2 * i]] for i in range(6)])  # larger than the masks
    result = evaluate(
        model,
        images,
        methods=["gradcam"],
        metrics=["auprc", "energy_pointing_game", "max_box_accuracy"],
        masks=masks,
        boxes=boxes,
        progress=False,
        keep_maps=6,
    )
    maps = result.maps["gradcam"]
    expected = {
        "auprc": whycam.metrics.auprc(maps, masks),
        "energy_pointing_game": whycam.metrics.energy_pointing_game(maps, boxes),
        "max_box_accuracy": whycam.metrics.max_box_accuracy(maps, boxes),
    }
    [summary] = result.summary
    for name, value in expected.items():
        assert summary[name][0] == pytest.approx(value.value), name
    assert summary["energy_pointing_game"][0] != pytest.approx(whycam.metrics.energy_pointing_game(maps, masks).value)
