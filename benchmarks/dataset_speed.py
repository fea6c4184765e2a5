"""Whole datasets: images per second of the in-memory loop, the streaming local engine and Ray, against
the model's own forward pass; peak memory of the streaming engine for 2,000 and 20,000 images.

The model is ``digits-cnn`` (32 px, weights shipped with whycam), the method Grad-CAM (one forward and
one backward pass: its ceiling is the forward throughput), the images seeded random 32 px PNGs written
once into ``benchmarks/cache/dataset_speed/``. Writes the ``dataset_speed`` section of docs/benchmarks.md.

    python benchmarks/dataset_speed.py [--images 2000] [--large 20000] [--workers 2] [--actors 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from common import machine, table, write_section
from PIL import Image

import whycam
from whycam import Runner

CACHE = Path(__file__).resolve().parent / "cache" / "dataset_speed"
METHOD = "gradcam"
BATCH = 64


def image_folder(count: int) -> Path:
    """``count`` seeded random 32 px PNGs (written once, then reused)."""
    folder = CACHE / f"images_{count}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"d{i:06d}.png")
    return folder


class PeakMemory:
    """Peak memory of this process and its children (DataLoader workers) above the level at the start,
    in MiB, sampled every 20 ms: the proportional set size (PSS), which counts the pages a forked
    worker shares with its parent once, not once per process."""

    def __enter__(self):
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.base = self._rss()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.mib = (max(self.peak, self._rss()) - self.base) / 2**20


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    loaded = whycam.load_model("digits-cnn")
    folder = image_folder(args.images)
    scratch = Path(tempfile.mkdtemp(prefix="dataset_speed_"))
    rows = []

    forward = forward_rate(loaded, folder)
    rows.append(["model forward pass only (in-memory tensors, batches of 64)", f"{forward:.0f}", "1.00", "—"])

    def in_memory(count: int):
        return Runner(loaded, METHOD, batch_size=BATCH).explain([image_folder(count)])

    with PeakMemory() as memory:
        seconds, _ = timed(lambda: in_memory(args.images))
    memory_loop = {args.images: memory.mib}
    rows.append(
        [f"in-memory loop (`Runner.explain`, files read in-process), {METHOD}", f"{args.images / seconds:.0f}",
         f"{args.images / seconds / forward:.2f}", f"{memory.mib:.0f}"]
    )  # fmt: skip
    with PeakMemory() as memory:
        in_memory(args.large)
    memory_loop[args.large] = memory.mib

    def local(count: int, out: Path):
        images = image_folder(count)
        return whycam.run_dataset(
            loaded, images, METHOD, out, workers=args.workers, batch_size=BATCH, shard_size=1024, progress=False
        )

    with PeakMemory() as memory:
        seconds, _ = timed(lambda: local(args.images, scratch / "local"))
    local_memory = {args.images: memory.mib}
    rows.append(
        [f"streaming local engine, {args.workers} DataLoader workers, shards written", f"{args.images / seconds:.0f}",
         f"{args.images / seconds / forward:.2f}", f"{memory.mib:.0f}"]
    )  # fmt: skip

    rows.append(ray_row(loaded, folder, args, scratch, forward))

    with PeakMemory() as memory:
        seconds, _ = timed(lambda: local(args.large, scratch / "large"))
    local_memory[args.large] = memory.mib
    large_rate = args.large / seconds
    load_end = os.getloadavg()[0]
    shutil.rmtree(scratch)

    text = section(args, rows, local_memory, memory_loop, large_rate, (load_start, load_end))
    print(text)
    write_section("benchmarks.md", "dataset_speed", "## Whole datasets\n\n" + text)


def forward_rate(loaded, folder: Path) -> float:
    """Images/s of the model's forward pass alone, on 512 of the images already in memory."""
    inputs = torch.stack([loaded.preprocess(whycam.load_images(p)[0]) for p in sorted(folder.glob("*.png"))[:512]])
    with torch.no_grad():
        loaded.model(inputs[:BATCH])
        seconds, _ = timed(lambda: [loaded.model(chunk) for chunk in inputs.split(BATCH) for _ in range(4)])
    return 4 * len(inputs) / seconds


def ray_row(loaded, folder: Path, args, scratch: Path, forward: float) -> list[str]:
    """The Ray engine's row: a local Ray started (its time stated apart), the run timed, Ray shut down."""
    import ray

    from whycam.engines.ray import start_ray

    ray_start, _ = timed(lambda: start_ray(None, num_cpus=max(args.actors, 2), progress=False))
    seconds, _ = timed(
        lambda: whycam.run_on_ray(
            loaded, folder, METHOD, scratch / "ray", num_actors=args.actors, batch_size=BATCH, shard_size=250,
            progress=False,
        )
    )  # fmt: skip
    ray.shutdown()
    return [f"Ray engine, {args.actors} actors (actor start included; `ray.init` {ray_start:.0f} s not)",
            f"{args.images / seconds:.0f}", f"{args.images / seconds / forward:.2f}", "—"]  # fmt: skip


def section(args, rows, local_memory, memory_loop, large_rate: float, loads: tuple[float, float]) -> str:
    """The Markdown of the benchmarks.md section."""
    load_start, load_end = loads
    text = (
        f"`python benchmarks/dataset_speed.py --images {args.images} --large {args.large} --workers {args.workers} "
        f"--actors {args.actors}`: {machine()}; digits-cnn (32 px), {METHOD}, batches of {BATCH}, the same "
        f"{args.images} seeded random 32 px PNG files for every row; images/s over the whole call (reading, "
        "decoding, explaining, writing); peak: proportional set size (PSS) of the process and its DataLoader "
        f"workers above the level before the call. 1-minute load average {load_start:.1f} at the start and "
        f"{load_end:.1f} at the end on {os.cpu_count()} cores (a shared machine: absolute rates are several "
        "times an idle machine's).\n\n"
    )
    text += table(["run", "images/s", "/ forward", "peak MiB"], rows)
    text += (
        f"\n\nPeak memory (PSS of the process and its workers) for {args.images} and {args.large} images: the "
        f"streaming engine {local_memory[args.images]:.0f} and {local_memory[args.large]:.0f} MiB ({large_rate:.0f} "
        "images/s on the large set; it holds one shard of maps and the batches in flight, whatever the size of the "
        f"dataset); the in-memory loop {memory_loop[args.images]:.0f} and {memory_loop[args.large]:.0f} MiB (it "
        "keeps every input, display image and map until the end).\n"
    )
    return text


if __name__ == "__main__":
    main()
