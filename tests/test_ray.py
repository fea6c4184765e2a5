"""The Ray engine (``whycam.engines.ray``) in Ray's local mode (2 CPUs, one Ray start per test session):
the same maps, scores and reference statistics as the local engine on the same generated files, a
resumed run and a killed actor that leave a complete, duplicate-free result, corrupt files as failures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

import whycam
from whycam import Runner
from whycam.engines.work import ShardWriter


@pytest.fixture(scope="session")
def cluster():
    from whycam.engines.ray import start_ray

    started = not ray.is_initialized()
    start_ray(None, num_cpus=2, progress=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_run_equals_the_local_run(cluster, small_dataset_folder, tiny_loaded, tmp_path):
    folder = small_dataset_folder  # 61 files in 4 blocks of at most 16
    options = dict(metrics=["deletion", "average_drop"], shard_size=16, batch_size=8, progress=False)
    local = whycam.load_run(whycam.run_dataset(tiny_loaded, folder, "gradcam,saliency", tmp_path / "local", **options))
    out = whycam.run_on_ray(tiny_loaded, folder, "gradcam,saliency", tmp_path / "ray", num_actors=2, **options)
    remote = whycam.load_run(out)
    assert whycam.shards.read_manifest(out)["complete"] and whycam.shards.read_manifest(out)["engine"] == "ray"
    assert len(remote) == 122 and not remote.duplicated(["id", "method"]).any()
    columns = ["id", "method", "prediction", "target", "layer"]
    assert remote[columns].equals(local[columns])
    failed = remote[remote["failure"].notna()]
    assert set(failed["id"]) == {"corrupt"} and failed["failure"].str.contains("cannot read image").all()
    ok = remote["failure"].isna()
    # the same float16 maps, but for a rare last-bit rounding where a batch held other images
    maps, expected = np.stack(remote["map"][ok].to_list()), np.stack(local["map"][ok].to_list())
    np.testing.assert_allclose(maps, expected, atol=2**-10, rtol=0)
    assert (maps == expected).mean() > 0.999
    np.testing.assert_allclose(remote["average_drop"][ok], local["average_drop"][ok], atol=1e-6, rtol=0)
    np.testing.assert_allclose(remote["deletion"][ok], local["deletion"][ok], atol=1e-4, rtol=0)  # see test_engines
    ours, theirs = whycam.engines.evaluation_of_run(out), whycam.engines.evaluation_of_run(tmp_path / "local")
    assert [row["image"] for row in ours.rows] == [row["image"] for row in theirs.rows]
    for a, b in zip(ours.summary, theirs.summary):
        np.testing.assert_allclose(a["average_drop"], b["average_drop"], atol=1e-6, rtol=0)


def test_ray_reference_statistics_equal_the_local_ones(cluster, small_dataset_folder, tiny_loaded):
    folder = small_dataset_folder
    local, _ = whycam.build_reference(tiny_loaded, [folder], per_class=True, workers=0, progress=False)
    remote, failures = whycam.build_reference(
        tiny_loaded, [folder], per_class=True, engine="ray", num_actors=2, shard_size=16, progress=False
    )
    assert [path for path, _ in failures] == [str(folder / "0" / "corrupt.png")]
    assert remote.labels == local.labels == ["0", "1"]
    for label in local.labels:
        got, expected = remote.classes[label], local.classes[label]
        assert got.count_ == expected.count_ == 30 and got.meta == expected.meta
        for name in ("sum_", "outer_", "moment3_", "moment4_"):  # per-block sums merged: equal to float64 rounding
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-12, atol=1e-12)


class Logged(Runner):
    """A Runner that appends every image id it explains to a log file and, the first time it runs in a
    process where ``marker`` does not exist yet, creates it and kills its own process (a dead actor)."""

    def __init__(self, *args, log: Path, marker: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.marker = log, marker

    def explain_batch(self, images, targets=None, ids=None, **kwargs):
        if self.marker is not None and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        with self.log.open("a") as handle:
            handle.write("".join(f"{i}\n" for i in ids))
        return super().explain_batch(images, targets, ids, **kwargs)


@pytest.mark.slow
def test_an_interrupted_run_resumed_on_ray_with_a_killed_actor_is_complete_and_duplicate_free(
    cluster, dataset_folder, tiny_loaded, tmp_path, monkeypatch
):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    log, marker, out = tmp_path / "computed.txt", tmp_path / "died", tmp_path / "run"
    write, shards = ShardWriter.write, []

    def interrupted(self, parts):
        if len(shards) == 1:
            raise KeyboardInterrupt("stopped after one shard")
        shards.append(write(self, parts))
        return shards[-1]

    monkeypatch.setattr(ShardWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        whycam.run_dataset(
            Logged(tiny_loaded, "gradcam", log=log), dataset_folder, None, out, shard_size=48, progress=False
        )
    monkeypatch.setattr(ShardWriter, "write", write)
    first = log.read_text().split()
    assert len(whycam.load_run(out)) == 48
    log.write_text("")  # from here on every image is counted once: the actor that dies computes nothing
    runner = Logged(tiny_loaded, "gradcam", log=log, marker=marker)
    whycam.run_on_ray(runner, dataset_folder, None, out, resume=True, num_actors=2, shard_size=30, progress=False)
    assert marker.exists()  # an actor died, and its task was retried
    computed = log.read_text().split()
    table = whycam.load_run(out)
    assert len(table) == 201 and not table.duplicated(["id"]).any() and table["index"].tolist() == list(range(201))
    assert len(computed) == len(set(computed)) == 153  # each image after the first shard, once
    assert not set(computed) & set(table["id"][:48]) and set(first) >= set(table["id"][1:48])
