"""benchmarks/train_ssl.py and results_unlabelled.py: self-supervised training on tiny settings, the
objectives against their formulas written out, DINO's attention map, and the label-free evaluation."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import results_unlabelled  # noqa: E402
import ssl_models  # noqa: E402
import train_ssl  # noqa: E402
import train_tasks  # noqa: E402

TINY = {"epochs": 1, "batch": 8, "probe_train": 40, "probe_val": 20, "prototypes": 32, "local_crops": 2}


@pytest.mark.parametrize("model", list(train_ssl.RECIPES))
def test_training_runs_a_few_steps_caches_and_reloads(tmp_path, model):
    torch.set_num_threads(1)
    overrides = {**TINY, "train": 16}
    trained, record = train_ssl.load_or_train(model, seed=3, cache=tmp_path, log=lambda _: None, **overrides)
    assert record["steps"] == 2 and all(math.isfinite(x) for x in record["losses"])
    assert set(record["probe"]) == {"knn", "linear"} and 0 <= record["probe"]["linear"] <= 1
    loaded, loaded_record = train_ssl.load_or_train(model, seed=3, cache=tmp_path, log=lambda _: None, **overrides)
    assert loaded_record == record and not loaded.training
    for name, value in trained.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    with pytest.raises(ValueError, match="another recipe"):
        train_ssl.load_or_train(model, seed=3, cache=tmp_path, **{**overrides, "epochs": 2})


def test_training_is_reproducible_from_the_seed(tmp_path):
    torch.set_num_threads(1)
    settings = {**TINY, "train": 16}
    first, _ = train_ssl.load_or_train("dino-vit", seed=1, cache=tmp_path / "a", log=lambda _: None, **settings)
    again, _ = train_ssl.load_or_train("dino-vit", seed=1, cache=tmp_path / "b", log=lambda _: None, **settings)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    same = train_ssl.compare("dino-vit", 1, tmp_path / "a", tmp_path / "b")
    assert same["identical"] and same["max_abs_difference"] == 0.0 and same["probes"][0] == same["probes"][1]
    train_ssl.load_or_train("dino-vit", seed=1, cache=tmp_path / "c", log=lambda _: None, **{**settings, "lr": 0.01})
    other = train_ssl.compare("dino-vit", 1, tmp_path / "a", tmp_path / "c")
    assert not other["identical"] and other["max_abs_difference"] > 0


def test_dino_loss_is_the_cross_entropy_of_centred_sharpened_teacher_and_student():
    recipe = train_ssl.RECIPES["dino-vit"]
    torch.manual_seed(0)
    student = [torch.randn(3, 5) for _ in range(4)]  # 2 global views, 2 local
    teacher = [torch.randn(3, 5) for _ in range(2)]
    center = torch.randn(5)
    expected, pairs = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i == j:
                continue
            for b in range(3):
                p = [math.exp((teacher[i][b, k] - center[k]) / recipe.teacher_temperature) for k in range(5)]
                q = [math.exp(student[j][b, k] / recipe.student_temperature) for k in range(5)]
                expected -= sum(p[k] / sum(p) * math.log(q[k] / sum(q)) for k in range(5)) / 3
            pairs += 1
    assert train_ssl.dino_loss(student, teacher, center, recipe).item() == pytest.approx(expected / pairs, rel=1e-5)


def test_nt_xent_against_a_loop_over_anchors():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    views = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    total = 0.0
    for i, anchor in enumerate(views):
        positive = (i + 4) % 8
        others = [math.exp(float(anchor @ views[k]) / 0.2) for k in range(8) if k != i]
        total -= math.log(math.exp(float(anchor @ views[positive]) / 0.2) / sum(others))
    assert train_ssl.nt_xent(z1, z2, 0.2).item() == pytest.approx(total / 8, rel=1e-5)


def test_ema_update_moves_the_teacher_towards_the_student():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = teacher.weight.detach().clone()
    train_ssl.ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)


def test_augment_is_seeded_and_stays_in_range():
    images = torch.rand(5, 3, 64, 64)
    views = [train_ssl.augment(images, 32, (0.1, 0.4), torch.Generator().manual_seed(2), rotate=True) for _ in range(2)]
    assert views[0].shape == (5, 3, 32, 32) and torch.equal(views[0], views[1])
    assert views[0].min() >= 0 and views[0].max() <= 1


def test_cls_attention_is_the_class_row_of_the_last_blocks_softmax():
    torch.manual_seed(0)
    model = ssl_models.SmallViT(dim=32, depth=2, heads=4).eval()
    images = torch.rand(2, 3, 64, 64)
    inputs = []
    model.blocks[-1].norm1.register_forward_hook(lambda _m, _i, out: inputs.append(out))
    maps = ssl_models.cls_attention(model, images)
    x = inputs[0]
    attn = model.blocks[-1].attn
    q, k, _ = (F.linear(x, attn.qkv.weight, attn.qkv.bias)).split(32, dim=-1)
    heads = [
        torch.softmax(q[..., h * 8 : (h + 1) * 8] @ k[..., h * 8 : (h + 1) * 8].transpose(1, 2) / math.sqrt(8), -1)
        for h in range(4)
    ]
    expected = torch.stack(heads, 1)[:, :, 0, 1:].mean(1).reshape(2, 8, 8)
    assert maps.shape == (2, 8, 8) and torch.allclose(maps, expected, atol=1e-6)


@pytest.fixture
def untrained(monkeypatch):
    """results_unlabelled with random-init models instead of the trained ones."""

    def ssl(model, seed=0, **_):
        torch.manual_seed(seed)
        return train_ssl.build(train_ssl.RECIPES[model]).eval(), {"seconds": 0.0, "threads": 1}

    def supervised(task, seed=0, **_):
        torch.manual_seed(seed)
        return train_tasks.build_model(train_tasks.RECIPES[task]).eval(), {"test_accuracy": 0.0}

    monkeypatch.setattr(train_ssl, "load_or_train", ssl)
    monkeypatch.setattr(train_tasks, "load_or_train", supervised)
    return results_unlabelled


@pytest.mark.parametrize("task", ["objects", "anomaly"])
def test_evaluation_runs_on_a_handful_of_images(untrained, tmp_path, task):
    torch.set_num_threads(1)
    markdown, records = untrained.run(task, 6, 24, seed=0, out=tmp_path)
    with (tmp_path / f"unlabelled-{task}.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["method"] for r in rows}) == (17 if task == "objects" else 3)
    assert all(0 <= float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"]) <= 1 for r in rows)
    assert (tmp_path / f"unlabelled-{task}.png").exists() and "random maps" in markdown and records


def test_evaluation_scores_the_ground_truth_at_the_maximum_and_every_item_apart():
    data = results_unlabelled.tasks.objects("val", 8, 0)
    perfect = results_unlabelled.score(data, data.masks.float(), seed=0)
    assert perfect["AUPRC"][0] == pytest.approx(1.0) and perfect["pointing"][0] == pytest.approx(1.0)
    items = data.masks | data.extras["distractors"]
    on_items = results_unlabelled.score(data, items.float(), seed=0)
    assert on_items["AUPRC, any item"][0] == pytest.approx(1.0)
    assert on_items["AUPRC"][0] < 1.0  # the scenes have distractors: the target mask is stricter


@pytest.mark.parametrize("task", ["objects", "anomaly"])
def test_supervised_rows_are_read_from_the_tasks_table_only_for_the_same_images(task):
    with (results_unlabelled.DOCS / "results" / f"{task}.csv").open() as f:
        lines = [r for r in csv.DictReader(f) if r["method"] == "gradcam" and r["metric"] == "AUPRC"]
    rows = results_unlabelled.committed(task, int(lines[0]["n"]))
    assert [r.method.split()[0] for r in rows] == ["Grad-CAM", "DiffCAM"]
    assert rows[0].cells["AUPRC"][0] == pytest.approx(float(lines[0]["mean"]))
    assert results_unlabelled.committed(task, int(lines[0]["n"]) + 1) == []


def test_background_scenes_have_no_item():
    scenes = results_unlabelled.background_scenes(3, seed=0)
    assert scenes.shape == (3, 3, 64, 64) and torch.equal(scenes, results_unlabelled.background_scenes(3, seed=0))
    assert scenes.min() >= 0.1 - 1e-6 and scenes.max() <= 0.7 + 1e-6  # dimmed backgrounds only
