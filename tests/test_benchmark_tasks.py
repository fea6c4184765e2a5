"""The benchmark tasks of docs/results.md: exact ground truth, no leaks, determinism, oracle maps."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import tasks  # noqa: E402
import train_tasks  # noqa: E402

import whycam  # noqa: E402

SOURCES = [
    "digits",
    pytest.param(
        "fashion",
        marks=pytest.mark.skipif(
            tasks.default_source() != "fashion", reason="Debian's dataset-fashion-mnist is not installed"
        ),
    ),
]


def _same(a: tasks.TaskData, b: tasks.TaskData) -> bool:
    keys = ("images", "labels", "masks", "boxes", "contrast")
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in keys)


@pytest.mark.parametrize("source", SOURCES)
def test_object_masks_are_exactly_the_pasted_pixels(source):
    items, labels = tasks.load_items("val", source)
    pools = {c: (labels == c).nonzero().flatten() for c in range(10)}
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = tasks.object_scene(rng, items, pools, source)
        changed = (scene.image != scene.background).any(0)
        assert torch.equal(changed, scene.target_mask | scene.distractor_mask)
        assert not (scene.target_mask & scene.distractor_mask).any()
        assert scene.target_mask.any()


@pytest.mark.parametrize("source", SOURCES)
def test_objects_distractors_never_share_the_label(source):
    data = tasks.objects("val", 40, seed=3, source=source)
    targets = torch.tensor(tasks.TARGET_CLASSES[source])
    present = data.extras["distractor_labels"][data.extras["distractor_labels"] >= 0]
    assert len(present) > 10  # the clutter is there
    assert not torch.isin(present, targets).any()  # and never of a label class
    assert not (data.masks & data.extras["distractors"]).any()
    assert data.images.shape == (40, 3, tasks.SIZE, tasks.SIZE)
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert set(data.labels.tolist()) <= set(range(len(targets)))


def test_generators_are_deterministic_per_seed():
    for make in (
        lambda s: tasks.objects("test", 6, s, "digits"),
        lambda s: tasks.anomaly("test", 6, s),
        lambda s: tasks.whynot("test", 20, s, "digits"),
    ):
        assert _same(make(0), make(0))
        assert not _same(make(0), make(1))


def test_splits_differ():
    assert not torch.equal(tasks.anomaly("train", 4).images, tasks.anomaly("val", 4).images)
    sizes = [len(tasks.load_items(split, "digits")[1]) for split in tasks.SPLITS]
    assert sum(sizes) == 1797


def _assert_tight(masks, boxes):
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist(), strict=True):
        if not mask.any():
            assert (x0, y0, x1, y1) == (-1, -1, -1, -1)
            continue
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # encloses
        inner = mask[y0:y1, x0:x1]
        assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()  # tightly


def test_boxes_enclose_masks_tightly():
    _assert_tight(*(lambda d: (d.masks, d.boxes))(tasks.objects("val", 20, 0, "digits")))
    _assert_tight(*(lambda d: (d.masks, d.boxes))(tasks.anomaly("val", 20, 0)))
    _assert_tight(*(lambda d: (d.masks, d.boxes))(tasks.whynot("val", 20, 0, "digits")))


def test_lesion_changes_exactly_its_mask():
    data = tasks.anomaly("test", 30, seed=2)
    changed = (data.images != data.extras["healthy"]).any(1)
    assert torch.equal(changed, data.masks)
    assert torch.equal(data.masks.flatten(1).any(1), data.labels == 1)
    area = data.masks[data.labels == 1].flatten(1).float().mean(1)
    assert (area > 0).all() and (area < 0.05).all()  # small
    depth = (data.extras["healthy"] - data.images)[:, 0].amax((1, 2))
    assert depth.max() <= tasks.LESION_DARKENING[1] + 1e-6  # subtle


@pytest.mark.parametrize("source", SOURCES)
def test_whynot_mask_is_the_top_fraction_of_the_mean_difference(source):
    items, labels = tasks.load_items("train", source)
    for a, b in tasks.WHYNOT_PAIRS[source]:
        mask = tasks.whynot_mask(a, b, source)
        difference = (items[labels == a].mean(0) - items[labels == b].mean(0)).abs()
        difference = torch.nn.functional.pad(difference, (2, 2, 2, 2))
        assert mask.sum() == round(tasks.WHYNOT_TOP * mask.numel())
        assert difference[mask].min() >= difference[~mask].max()
        assert torch.equal(mask, tasks.whynot_mask(b, a, source))
    data = tasks.whynot("test", 60, 0, source)
    pairs = {frozenset(p) for p in tasks.WHYNOT_PAIRS[source]}
    asked = zip(data.labels.tolist(), data.contrast.tolist(), strict=True)
    assert all(frozenset((a, b)) in pairs for a, b in asked)


def _localisation(maps: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor) -> dict[str, float]:
    """Per-image AUPRC (scikit-learn), pointing game (the map's maximum inside the mask) and energy
    pointing game (the map's mass inside the box), averaged."""
    auprc = [
        average_precision_score(m.flatten().numpy(), s.flatten().numpy()) for s, m in zip(maps, masks, strict=True)
    ]
    peaks = maps.flatten(1).argmax(1)
    pointing = masks.flatten(1).gather(1, peaks[:, None]).float().mean()
    inside = torch.zeros_like(masks, dtype=torch.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside[i, y0:y1, x0:x1] = 1
    energy = ((maps * inside).flatten(1).sum(1) / maps.flatten(1).sum(1)).mean()
    return {"auprc": float(np.mean(auprc)), "pointing": float(pointing), "energy": float(energy)}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: tasks.objects("test", 30, 0, "digits"), id="objects"),
        pytest.param(lambda: (lambda d: d.subset(d.labels == 1))(tasks.anomaly("test", 30, 0)), id="anomaly"),
        pytest.param(lambda: tasks.whynot("test", 30, 0, "digits"), id="whynot"),
    ],
)
def test_the_oracle_map_scores_the_maximum(data):
    data = data()
    oracle = _localisation(data.masks.float(), data.masks, data.boxes)
    assert oracle == {"auprc": 1.0, "pointing": 1.0, "energy": 1.0}
    noise = torch.rand(data.masks.shape, generator=torch.Generator().manual_seed(0))
    chance = _localisation(noise, data.masks, data.boxes)
    assert chance["auprc"] < 0.5 and chance["energy"] < 0.9


def test_training_is_reproducible_and_cached_as_safetensors(tmp_path, monkeypatch):
    tiny = replace(train_tasks.RECIPES["anomaly"], train=64, val=16, test=16, epochs=1, batch=32)
    monkeypatch.setitem(train_tasks.RECIPES, "anomaly", tiny)
    monkeypatch.setattr(train_tasks, "CACHE", tmp_path)
    first, record = train_tasks.load_or_train("anomaly", seed=5, log=lambda _: None)
    assert (tmp_path / "anomaly-retina-seed5.safetensors").exists()
    again, _ = train_tasks.train("anomaly", seed=5, log=lambda _: None)
    loaded, loaded_record = train_tasks.load_or_train("anomaly", seed=5, log=lambda _: None)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
        assert torch.equal(value, loaded.state_dict()[name])
    assert loaded_record == record and record["sizes"] == {"train": 64, "val": 16, "test": 16}
    assert not loaded.training


@pytest.fixture
def untrained(monkeypatch):
    """results.make_job with a random-init task model instead of the trained one."""
    import results

    def load(task, seed=0, **_):
        torch.manual_seed(seed)
        record = {"test_accuracy": 0.0, "val_accuracy": 0.0, "sizes": {"test": 0}}
        return train_tasks.build_model(train_tasks.RECIPES[task]).eval(), record

    monkeypatch.setattr(train_tasks, "load_or_train", load)
    return results


@pytest.mark.parametrize("task", ["objects", "anomaly", "whynot"])
def test_results_groups_partition_the_images_by_question(untrained, task):
    job = untrained.make_job(task, "val", 12, 6, seed=0)
    index = torch.cat([g.index for g in job.groups]).sort().values
    assert torch.equal(index, torch.arange(len(job.data)))
    for group in job.groups:
        assert len(group.references) == 6
        labels, contrast = job.data.labels[group.index], job.data.contrast[group.index]
        if task == "whynot":
            output = torch.randn(7, 10)  # any batch size: methods expand batches
            a, b = int(labels[0]), int(contrast[0])
            assert (labels == a).all() and (contrast == b).all()
            assert torch.equal(group.target(output), output[:, a] - output[:, b])
        else:
            assert (labels == group.target).all()
    maps, seconds, _ = untrained.explain("gradcam", job, seed=0)
    assert maps.shape == job.data.masks.shape and seconds > 0
    for group in job.groups:  # each image got its own group's map
        explained = whycam.GradCAM(job.model, layer=train_tasks.LAYER)
        assert torch.allclose(
            maps[group.index], explained(job.data.images[group.index], target=group.target), atol=1e-6
        )
    if task == "whynot":  # FinerCAM answers "why a, not b" with the comparison set {b}: y_a - y_b again
        finer, _, _ = untrained.explain("finercam", job, seed=0)
        assert torch.allclose(finer, maps, atol=1e-5)


@pytest.mark.parametrize("task", ["objects", "anomaly", "whynot"])
def test_results_score_the_oracle_map_at_the_maximum(untrained, task):
    job = untrained.make_job(task, "val", 12, 6, seed=0)
    scores = untrained.score(job, job.data.masks.float(), faithful=0, seed=0)
    for column in ("AUPRC", "top-k IoU", "pointing", "energy pointing"):
        assert scores[column][0] == pytest.approx(1.0), column
    chance = untrained.score(job, untrained.random_maps(job, 0), faithful=0, seed=0)
    assert chance["AUPRC"][0] < 0.5


def test_results_check_passes_overlapping_intervals_and_names_the_cells_that_miss(tmp_path, capsys):
    import results

    def write(path, cells):
        path.write_text(
            "task,method,metric,mean,ci_low,ci_high,n\n"
            + "".join(f"objects,{m},{k},{v},{lo},{hi},40\n" for (m, k), (v, lo, hi) in cells.items())
            + "objects,gradcam,seconds per image,0.01,,,40\n"
        )

    committed = {("gradcam", "AUPRC"): (0.43, 0.40, 0.46), ("diffcam", "AUPRC"): (0.42, 0.39, 0.45)}
    write(tmp_path / "committed.csv", committed)
    write(tmp_path / "close.csv", {("gradcam", "AUPRC"): (0.47, 0.38, 0.55), ("diffcam", "AUPRC"): (0.41, 0.33, 0.49)})
    write(tmp_path / "apart.csv", {("gradcam", "AUPRC"): (0.60, 0.50, 0.70), ("diffcam", "AUPRC"): (0.41, 0.33, 0.49)})
    assert results.check("objects", tmp_path / "close.csv", tmp_path / "committed.csv")
    assert "2 of 2 cells overlap" in capsys.readouterr().out
    assert not results.check("objects", tmp_path / "apart.csv", tmp_path / "committed.csv")
    out = capsys.readouterr().out
    assert "1 of 2 cells overlap" in out and "gradcam / AUPRC" in out and "diffcam / AUPRC" not in out


def test_results_ablation_varies_each_factor_then_tries_the_winners_together(untrained):
    markdown, chosen = untrained.ablation("whynot", 12, 60, seed=0)  # k up to 50 needs 50 references
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "factor" not in line]
    settings = sum(len(v) for v in untrained.ABLATION.values())
    assert len(rows) == 1 + settings + 1 and rows[0].startswith("| defaults")
    together = rows[-1]
    assert together.startswith("| every winner together")
    for factor in untrained.ABLATION:  # one bold winner per factor
        assert sum("**" in r for r in rows if r.startswith(f"| {factor} |")) == 1, factor
    cells = [r.split(" | ") for r in rows]
    winners = [json.loads(c[1]) for c in cells[1:-1] if "**" in c[2]]
    assert chosen == {} or chosen in [*winners, json.loads(cells[-1][1])]  # the best candidate, if not the defaults


def test_results_update_puts_new_rows_into_the_committed_table(untrained, tmp_path, monkeypatch):
    """--update runs only the given methods; the committed rows, "not run" line and footer stay."""
    monkeypatch.setattr(untrained, "DOCS", tmp_path)
    out = tmp_path / "results"
    section = untrained.run_task("whynot", ["gradcam", "cam"], 12, 6, seed=0, faithful=0, out=out)
    (tmp_path / "results.md").write_text(
        f"<!-- results-whynot:start -->\n{section}\n\n_the full run_\n<!-- results-whynot:end -->\n"
    )
    committed = (out / "whynot.csv").read_text()
    updated = untrained.run_task("whynot", ["finercam"], 12, 6, seed=0, faithful=0, out=out, update=True)
    lines = updated.splitlines()
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| finercam", "| gradcam", "| random (baseline)"]
    gradcam = next(line for line in section.splitlines() if line.startswith("| gradcam"))
    assert gradcam.replace("**", "") in updated.replace("**", "")  # a tie: the bold goes to the first row
    assert "Not run: cam" in updated and updated.endswith("_the full run_")
    cells = (out / "whynot.csv").read_text()
    assert all(line in cells for line in committed.splitlines())
    finer = [line.split(",", 2)[2] for line in cells.splitlines() if ",finercam," in line]
    same = [line.split(",", 2)[2] for line in committed.splitlines() if ",gradcam," in line]
    assert [f.rsplit(",", 4)[0] for f in finer if "seconds" not in f] == [
        g.rsplit(",", 4)[0] for g in same if "seconds" not in g
    ]  # one compared class: FinerCAM's why-not is Grad-CAM's y_a - y_b, metric by metric
    with pytest.raises(SystemExit, match="scored 12 images"):
        untrained.run_task("whynot", ["finercam"], 10, 6, seed=0, faithful=0, out=out, update=True)
