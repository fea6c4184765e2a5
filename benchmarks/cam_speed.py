"""Speed and peak memory of whycam's CAM methods against pytorch-grad-cam and torchcam.

Same random-init torchvision ResNet-18 / ResNet-50, same seeded inputs (Score-CAM and Ablation-CAM
at 112 and 224 px, the gradient methods at 224 px), same layer (layer4) and target classes, CPU.
Every call returns full-size maps (torchcam's feature-size maps are upsampled and normalised inside
its timed call). The maps of each peer are checked against whycam's in the same run (max abs
difference after min-max). Writes the table to docs/benchmarks.md; about 6 minutes on 2 idle cores.

    PYTHONPATH=src python benchmarks/cam_speed.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchcam.methods as torchcam
import torchvision
from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_time, peak_memory, table, write_section  # noqa: E402

import whycam  # noqa: E402

METHODS = {
    # name: (whycam class, pytorch-grad-cam class, torchcam class)
    "gradcam": (whycam.GradCAM, GradCAM, torchcam.GradCAM),
    "gradcam++": (whycam.GradCAMPlusPlus, GradCAMPlusPlus, torchcam.GradCAMpp),
    "layercam": (whycam.LayerCAM, LayerCAM, torchcam.LayerCAM),
    "scorecam": (whycam.ScoreCAM, ScoreCAM, torchcam.ScoreCAM),
    "ablationcam": (whycam.AblationCAM, AblationCAM, None),  # torchcam has no Ablation-CAM
}
MANY_PASS = ("scorecam", "ablationcam")


def minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = torch.as_tensor(maps).float().clamp(min=0)
    low = maps.flatten(1).min(1).values[:, None, None]
    span = maps.flatten(1).max(1).values[:, None, None] - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=1e-30), 0.0)


def runners(method: str, model: torch.nn.Module, images: torch.Tensor, classes: list[int]) -> dict:
    """One callable per library returning (B, H, W) maps in [0, 1]; each peer gets its own model copy."""
    ours, grad_cam_class, torchcam_class = METHODS[method.removesuffix(" nchw")]
    explainer = ours(model, "layer4")
    explainer.channels_last = not method.endswith(" nchw")  # " nchw": the images as given
    peer_model = copy.deepcopy(model)  # pytorch-grad-cam keeps hooks on its model
    grad_cam = grad_cam_class(model=peer_model, target_layers=[peer_model.layer4])
    targets = [ClassifierOutputTarget(c) for c in classes]
    runs = {
        "whycam": lambda: explainer(images, target=classes),
        "pytorch-grad-cam": lambda: minmax(grad_cam(input_tensor=images, targets=targets)),
    }
    if torchcam_class is None:
        return runs
    torchcam_model = copy.deepcopy(model)
    extractor = torchcam_class(torchcam_model, "layer4", input_shape=tuple(images.shape[1:]))

    def run_torchcam():
        with torch.set_grad_enabled(not method.startswith("scorecam")):
            scores = torchcam_model(images)
        (maps,) = extractor(class_idx=classes, scores=scores)
        return minmax(
            F.interpolate(maps.detach()[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        )

    return {**runs, "torchcam": run_torchcam}


def measure(functions: dict, repeats: int) -> dict[str, tuple[float, float, torch.Tensor]]:
    """Per library: (median seconds, peak MiB, maps). The first call of each is its warm-up and memory
    run (and its only timed run when ``repeats`` is 0); the timed runs then take turns, library after
    library, so that a change in the shared machine's load hits every library alike."""
    first, memory, maps = {}, {}, {}
    for name, fn in functions.items():
        start = time.perf_counter()
        memory[name] = peak_memory(lambda fn=fn, name=name: maps.__setitem__(name, fn()))
        first[name] = time.perf_counter() - start
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].append(median_time(fn, repeats=1, warmup=0))
    return {
        name: (statistics.median(times[name]) if repeats else first[name], memory[name], maps[name])
        for name in functions
    }


def forward_floor(model: torch.nn.Module, images: torch.Tensor, classes: list[int]) -> float:
    """Seconds of Score-CAM's forward passes alone: the model on every chunk of masked images whycam
    runs (one row per channel whose map is not constant, ``batch_size`` rows per pass, channels-last,
    inference mode), plus the one pass of the zero image when a channel is constant."""
    explainer = whycam.ScoreCAM(model, "layer4")
    captured = []
    handle = model.layer4.register_forward_hook(lambda _m, _a, out: captured.append(out.detach()))
    with torch.no_grad():
        model(images)
    handle.remove()
    flat = captured[0].flatten(2)
    rows = int((flat.amax(2) != flat.amin(2)).sum())
    chunk = images[:1].expand(explainer.batch_size, *images.shape[1:]).contiguous()
    sizes = [explainer.batch_size] * (rows // explainer.batch_size) + [rows % explainer.batch_size] * bool(
        rows % explainer.batch_size
    )
    sizes += [1] * (rows < captured[0].shape[0] * captured[0].shape[1])

    def passes():
        for size in sizes:
            explainer.forward_rows(chunk[:size])

    return median_time(passes, repeats=1, warmup=1)


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc raises its mmap threshold after a large free, and then keeps freed memory mapped: the
        # resident-set peak of a call would depend on the calls before it. A fixed threshold returns
        # large blocks to the system on free, so every call's peak is its own.
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (gradient methods)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[list[object]] = []
    args.load_start = os.getloadavg()[0]
    # Score-CAM / Ablation-CAM: 512 forward passes per image, batch 1; one timed run at 224 px
    plan = [("resnet18", 1, method, size) for method in MANY_PASS for size in (112, 224)]
    plan += [
        (arch, batch, method, 224)
        for arch in ("resnet18", "resnet50")
        for batch in (1, 8)
        for method in ("gradcam", "gradcam++", "layercam")
    ]
    plan.insert(plan.index(("resnet18", 1, "gradcam", 224)) + 1, ("resnet18", 1, "gradcam nchw", 224))
    for arch, batch, method, size in plan:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)().eval()
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        classes = [(7 * i + 3) % 1000 for i in range(batch)]
        repeats = (1 if size == 224 else args.repeats) if method in MANY_PASS else args.repeats
        results = measure(runners(method, model, images, classes), repeats)
        ours_time, ours_memory, ours_maps = results["whycam"]
        floor = forward_floor(model, images, classes) if method == "scorecam" else None
        cells = [
            arch,
            size,
            batch,
            method,
            f"{ours_time * 1000:.0f} ms",
            "—" if floor is None else f"{floor * 1000:.0f} ms ({ours_time / floor:.2f}x)",
            f"{ours_memory:.0f} MiB",
        ]
        for peer in ("pytorch-grad-cam", "torchcam"):
            if peer not in results:
                cells += ["—"] * 4
                continue
            seconds, memory, maps = results[peer]
            difference = (maps - ours_maps).abs().max().item()
            cells += [
                f"{seconds * 1000:.0f} ms",
                f"{seconds / ours_time:.2f}x",
                f"{memory:.0f} MiB",
                f"{difference:.1e}",
            ]
        rows.append(cells)
        print(" | ".join(str(c) for c in cells), flush=True)

        markdown = report(args, rows)
        if not args.no_write:  # after every row: an interrupted run keeps what it measured
            write_section("benchmarks.md", "cam_speed", markdown)
    print(markdown)


def report(args: argparse.Namespace, rows: list[list[object]]) -> str:
    """The Markdown section: how it was measured, the table, and what differs by design."""
    notes = [
        "torchcam's Grad-CAM++ map differs: its alpha normalisation is a no-op (an in-place division "
        "on a masked copy), so its map is not the paper's; whycam follows the paper.",
        "pytorch-grad-cam's Grad-CAM++ adds 1e-6 to alpha's denominator 2G^2 + sum(A) G^3; the "
        "gradients of a random-init model's logits are ~1e-4, so that epsilon changes its map here. "
        "On a score scaled so that it is negligible, the maps agree within 1e-5 "
        "(tests/test_cam_oracles.py).",
        "torchcam's Score-CAM normalises each channel before upsampling with align_corners=False; "
        'whycam gives torchcam\'s map with `align_corners=False, normalize_at="feature"` '
        "(tests/test_cam_oracles.py) at the same cost.",
        "whycam feeds the model channels-last images (`Explainer.in_layout`): oneDNN's NHWC convolutions "
        "and pooling are faster on the CPU (ResNet's NCHW max pooling alone is over 10x slower). The model "
        "itself is not converted, so every convolution copies its weight to channels-last at every call: "
        "a cost per call that does not grow with the batch (on ResNet-18 about 15% of a batch-1 forward "
        "pass, more than the faster pooling saves). `gradcam nchw` is whycam's Grad-CAM with "
        "`explainer.channels_last = False` (the images as given), the faster choice for ResNet-18 at "
        "batch 1; the map is the same up to a convolution's float rounding order.",
        "Score-CAM cannot be faster than its forward passes: the floor column times the model alone on "
        "the chunks of masked images whycam runs (one row per channel whose map is not constant, "
        "`batch_size` 32 rows a pass, plus one pass of the zero image when a channel is constant); "
        "whycam / floor is what building the masks and reading the scores add. pytorch-grad-cam runs "
        "all 512 rows; torchcam as well.",
    ]
    header = [
        "model",
        "px",
        "batch",
        "method",
        "whycam",
        "forward floor (whycam / floor)",
        "whycam peak",
        "pytorch-grad-cam",
        "speed-up",
        "peak",
        "max diff",
        "torchcam",
        "speed-up",
        "peak",
        "max diff",
    ]
    markdown = "\n".join(
        [
            f"`python benchmarks/cam_speed.py --threads {args.threads} --repeats {args.repeats}`: "
            f"{machine()} (torch.set_num_threads({args.threads})). Random-init torchvision models, layer4, "
            "seeded inputs, CPU. "
            f"Times: median of {args.repeats} runs after a warm-up run, the libraries taking turns "
            "(Score-CAM and Ablation-CAM: batch 1, 512 forward passes per image, one timed run at 224 px; "
            "on ResNet-50, 2048 passes per image, they are not run: tens of minutes on two cores). "
            "Speed-up: the peer's time / whycam's. Peak: resident-memory increase during the warm-up "
            "call. Max diff: max abs difference of the min-max normalised maps with whycam's, in this "
            f"run. 1-minute load average {args.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} when this "
            f"table was written, on {os.cpu_count()} cores; ratios come from interleaved runs on the same inputs.",
            "",
            table(header, rows),
            "",
            *[f"- {note}" for note in notes],
        ]
    )
    return markdown


if __name__ == "__main__":
    main()
