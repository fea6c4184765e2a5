"""Whole datasets on one machine (``whycam.engines.local``): a DataLoader with worker processes over
generated 32 px image files, shards + manifest, resume, ``load_run``; each result is compared with
the in-memory loop (``Runner.explain``, ``whycam.evaluate.evaluate``, ``DiffCAM.fit``) on the same files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import whycam
from whycam import Runner
from whycam.data import load_dataset
from whycam.engines import evaluation_of_run, list_items
from whycam.engines.files import sample_items
from whycam.engines.work import ShardWriter
from whycam.evaluate import evaluate


def _readable(table):
    return table[table["failure"].isna()]


def test_streamed_run_equals_the_in_memory_loop_and_lists_the_corrupt_file(dataset_folder, tiny_loaded, tmp_path):
    out = whycam.run_dataset(
        tiny_loaded, dataset_folder, "gradcam,saliency", tmp_path / "run", workers=2, shard_size=64, progress=False
    )
    table = whycam.load_run(out)
    expected = Runner(tiny_loaded, "gradcam,saliency", batch_size=8).explain([dataset_folder])
    assert len(table) == 2 * 201 and not table.duplicated(["id", "method"]).any()
    failed = table[table["failure"].notna()]
    assert set(failed["id"]) == {"corrupt"} and set(failed["method"]) == {"gradcam", "saliency"}
    assert failed["failure"].str.contains("cannot read image").all() and failed["map"].isna().all()
    for method in ("gradcam", "saliency"):
        rows = _readable(table[table["method"] == method])
        assert list(rows["id"]) == expected.ids
        maps = np.stack(rows["map"].to_list())
        assert maps.dtype == np.float32 and maps.shape == (200, 32, 32)
        # float16 storage: within half a unit in the last place of float16 on [0, 1]
        np.testing.assert_allclose(maps, expected.maps[method].numpy(), atol=2**-11, rtol=0)
        assert rows["prediction"].tolist() == expected.predictions.tolist()
        assert rows["layer"].eq("features").all() if method == "gradcam" else rows["layer"].isna().all()
        assert (rows["seconds"] > 0).all()
    manifest = whycam.shards.read_manifest(out)
    assert manifest["complete"] and manifest["images"] == 201 and manifest["layers"]["gradcam"] == ["features"]
    assert len(list(out.glob("shard-*.parquet"))) == 4  # 201 images, 64 per shard
    assert not list(out.glob("overlays"))  # overlays are off by default


def test_an_interrupted_run_resumes_without_computing_any_image_twice(
    dataset_folder, tiny_loaded, tmp_path, monkeypatch
):
    computed: list[str] = []
    explain_batch = Runner.explain_batch

    def counting(self, images, targets=None, ids=None, **kwargs):
        computed.extend(ids)
        return explain_batch(self, images, targets, ids, **kwargs)

    write, written = ShardWriter.write, []

    def interrupted(self, parts):
        if len(written) == 2:
            raise KeyboardInterrupt("the run is stopped after two shards")
        written.append(write(self, parts))
        return written[-1]

    monkeypatch.setattr(Runner, "explain_batch", counting)
    monkeypatch.setattr(ShardWriter, "write", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        whycam.run_dataset(
            tiny_loaded, dataset_folder, "gradcam", out, workers=2, shard_size=48, batch_size=8, progress=False
        )
    assert not whycam.shards.read_manifest(out)["complete"] and len(written) == 2
    finished = len(whycam.load_run(out))
    assert finished == 96 and len(computed) > finished  # the third shard was lost with the interruption
    with pytest.raises(whycam.UsageError, match="already holds a run; pass --resume"):
        whycam.run_dataset(tiny_loaded, dataset_folder, "gradcam", out, workers=0, progress=False)
    with pytest.raises(whycam.UsageError, match="cannot resume .* methods"):
        whycam.run_dataset(tiny_loaded, dataset_folder, "saliency", out, workers=0, resume=True, progress=False)
    before = list(computed)
    monkeypatch.setattr(ShardWriter, "write", write)
    whycam.run_dataset(
        tiny_loaded, dataset_folder, "gradcam", out, workers=2, shard_size=48, resume=True, progress=False
    )
    resumed = computed[len(before) :]
    table = whycam.load_run(out)
    assert not set(resumed) & set(_readable(table)["id"][:95])  # no finished image computed again
    assert sorted(resumed) == sorted(_readable(table)["id"][95:])  # the 105 others, each once
    assert len(table) == 201 and not table.duplicated(["id", "method"]).any()
    assert whycam.shards.read_manifest(out)["complete"]


@pytest.fixture(scope="module")
def masks_dataset(tmp_path_factory):
    """A mask dataset (images/ + masks/): 40 images, each with a random rectangle as its object."""
    root = tmp_path_factory.mktemp("masks")
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"s{i:03d}.png")
        mask = np.zeros((32, 32), np.uint8)
        top, left = rng.integers(0, 20, 2)
        mask[top : top + 10, left : left + 12] = 255
        Image.fromarray(mask).save(root / "masks" / f"s{i:03d}.png")
    return root


def test_streamed_evaluation_equals_the_in_memory_evaluation(masks_dataset, tiny_loaded, tmp_path):
    dataset = load_dataset(masks_dataset)
    metrics = ["auprc", "deletion", "average_drop"]
    items = sample_items(dataset.samples, [None] * len(dataset))
    out = whycam.run_dataset(
        tiny_loaded, items, "gradcam", tmp_path / "eval", metrics=metrics, workers=2, shard_size=16, progress=False
    )
    streamed = evaluation_of_run(out)
    images = torch.stack([tiny_loaded.preprocess(whycam.load_images(s.path)[0]) for s in dataset])
    geometry = tiny_loaded.preprocess.geometry
    masks = torch.stack([geometry(s.mask((32, 32))[None].float(), "nearest")[0] > 0.5 for s in dataset])
    single = evaluate(
        tiny_loaded.model, images, methods=["gradcam"], metrics=metrics, truth=masks, layer="features", progress=False
    )
    assert [row["image"] for row in streamed.rows] == [s.path.stem for s in dataset]
    # deletion breaks ties between equal map values (Grad-CAM's zeros) in a seeded random order drawn per
    # call, so its scores depend on which images share a call: equal to 1e-4, not to float rounding
    for metric, tolerance in zip(metrics, (1e-6, 1e-4, 1e-6)):
        ours = np.array([row[metric] for row in streamed.rows])
        theirs = np.array([row[metric] for row in single.rows])
        np.testing.assert_allclose(ours, theirs, atol=tolerance, rtol=0)
        np.testing.assert_allclose(streamed.summary[0][metric], single.summary[0][metric], atol=tolerance, rtol=0)
    assert streamed.higher_is_better == single.higher_is_better
    assert streamed.markdown().splitlines()[0] == single.markdown().splitlines()[0]


def test_box_metrics_are_refused_image_by_image(dataset_folder, tiny_loaded, tmp_path):
    with pytest.raises(whycam.UsageError, match="max_box_accuracy compare boxes"):
        whycam.run_dataset(
            tiny_loaded, dataset_folder, "gradcam", tmp_path / "x", metrics=["max_box_accuracy"], progress=False
        )


def test_streamed_reference_statistics_equal_a_fit_in_memory(dataset_folder, tiny_loaded):
    bank, failures = whycam.build_reference(
        tiny_loaded, [dataset_folder], per_class=True, workers=2, batch_size=16, progress=False
    )
    assert [path for path, _ in failures] == [str(dataset_folder / "0" / "corrupt.png")]
    explainer = whycam.create("diffcam", tiny_loaded.model, layer="features")
    for label in ("0", "1"):
        readable = [item for item in list_items([dataset_folder / label]) if item.id != "corrupt"]
        images = torch.stack([tiny_loaded.preprocess(whycam.load_images(item.path)[0]) for item in readable])
        explainer.fit(images, batch_size=7)
        expected, got = explainer.reference_, bank.classes[label]
        assert got.count_ == expected.count_ == 100 and got.meta == expected.meta
        for name in ("sum_", "outer_", "moment3_", "moment4_"):
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-12, atol=1e-12)


def test_the_commands_stream_with_engine_local_and_resume(dataset_folder, masks_dataset, tmp_path):
    from click.testing import CliRunner
    from test_cli import TINY

    from whycam.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    out = tmp_path / "explain"
    command = ["explain", dataset_folder, "--model", TINY, "--method", "gradcam", "--engine", "local", "--workers", "1"]
    result = invoke(*command, "--shard-size", "100", "--out", out)
    assert result.exit_code == 1 and "gradcam failed on" in result.output and "corrupt.png" in result.output
    table = whycam.load_run(out)
    assert len(table) == 201 and table["failure"].notna().sum() == 1 and not list(out.glob("*.png"))
    assert invoke(*command, "--out", out).exit_code == 2  # the dataset_folder holds a run: --resume or another --out
    assert invoke(*command, "--resume", "--out", out).exit_code == 1  # nothing left to do but the corrupt file
    assert len(whycam.load_run(out)) == 201
    assert invoke("explain", dataset_folder, "--model", TINY, "--resume", "--out", tmp_path / "memory").exit_code == 2

    result = invoke(
        "evaluate", masks_dataset, "--model", TINY, "--method", "gradcam", "--metrics", "auprc,average_drop",
        "--engine", "local", "--workers", "0", "--out", tmp_path / "evaluate",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| gradcam | 40 |" in (tmp_path / "evaluate" / "summary.md").read_text()

    bank = tmp_path / "bank.safetensors"
    result = invoke(
        "reference", "build", dataset_folder, "--per-class", "--model", TINY, "--workers", "1", "--out", bank
    )
    assert result.exit_code == 1 and "corrupt.png" in result.output
    assert {label: stats.count_ for label, stats in whycam.ReferenceBank.load(bank).classes.items()} == {
        "0": 100,
        "1": 100,
    }
