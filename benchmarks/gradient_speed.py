"""Speed and peak memory of whycam's Integrated Gradients, SmoothGrad, occlusion and RISE against Captum.

One 224 px image, a random-init torchvision ResNet-18 in eval mode, CPU, 2 threads, the same settings
for both libraries; median wall time over several runs and the peak resident-memory increase of one
call (benchmarks/common.py). Captum has no RISE: whycam's RISE (masks made chunk by chunk) is
compared with the same algorithm written the direct way, all N masks built first and then scored in
batches, the structure of the authors' reference code. Writes the table into docs/benchmarks.md.

    PYTHONPATH=src python benchmarks/gradient_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: spinning ones stall a shared CPU
try:  # glibc: large blocks always mmapped and returned on free, so the RSS peak of one call is its own
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD (fixed: no dynamic raise after a free)
    _libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
except OSError:
    pass
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_memory, table, write_section  # noqa: E402

import whycam  # noqa: E402

warnings.filterwarnings("ignore")


def naive_rise(model, image, target, masks, grid, p, batch_size, seed):
    """RISE the direct way: every mask first (N x H x W), then batched scoring."""
    height, width = image.shape[-2:]
    cell = (math.ceil(height / grid), math.ceil(width / grid))
    generator = torch.Generator().manual_seed(seed)
    cells = (torch.rand((masks, 1, grid, grid), generator=generator) < p).float()
    up = F.interpolate(cells, size=((grid + 1) * cell[0], (grid + 1) * cell[1]), mode="bilinear", align_corners=False)[
        :, 0
    ]
    shift = (torch.rand((masks, 2), generator=generator) * torch.tensor(cell)).long()
    all_masks = torch.stack([up[i, s[0] : s[0] + height, s[1] : s[1] + width] for i, s in enumerate(shift)])
    with torch.no_grad():
        scores = torch.cat(
            [
                model(all_masks[i : i + batch_size, None] * image).softmax(1)[:, target]
                for i in range(0, masks, batch_size)
            ]
        )
    return (scores[:, None, None] * all_masks).sum(0) / (masks * p)


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().reshape(theirs.shape), theirs.detach()
    return float((ours - theirs).abs().max() / theirs.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from captum import attr as ca

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    target = 1
    repeats = 2 if args.quick else 3
    steps, samples, masks = (8, 4, 64) if args.quick else (50, 25, 200)
    sigma = 0.15 * float(image.max() - image.min())

    cases = [
        (
            f"Integrated Gradients, {steps} steps, batch 32",
            lambda: whycam.IntegratedGradients(model, steps=steps, batch_size=32).per_channel(image, target),
            [
                (
                    "Captum, internal_batch_size=32",
                    lambda: ca.IntegratedGradients(model).attribute(
                        image, target=target, n_steps=steps, internal_batch_size=32
                    ),
                ),
                (
                    "Captum, default (all steps in one pass)",
                    lambda: ca.IntegratedGradients(model).attribute(image, target=target, n_steps=steps),
                ),
            ],
        ),
        (
            f"SmoothGrad (saliency), {samples} samples, batch 32",
            lambda: whycam.SmoothGrad(whycam.Saliency(model), samples=samples, batch_size=32).per_channel(
                image, target
            ),
            [
                (
                    "Captum NoiseTunnel",
                    lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
                        image,
                        nt_type="smoothgrad",
                        nt_samples=samples,
                        nt_samples_batch_size=32,
                        stdevs=sigma,
                        target=target,
                    ),
                )
            ],
        ),
        (
            "Occlusion, window 48, stride 24, batch 32",
            lambda: whycam.Occlusion(model, window=48, stride=24, batch_size=32)(image, target, raw=True),
            [
                (
                    "Captum",
                    lambda: ca.Occlusion(model).attribute(
                        image,
                        sliding_window_shapes=(3, 48, 48),
                        strides=(3, 24, 24),
                        baselines=0.0,
                        target=target,
                        perturbations_per_eval=32,
                    )[:, 0],
                )
            ],
        ),
        (
            f"RISE, {masks} masks, grid 8, batch 32",
            lambda: whycam.RISE(model, masks=masks, grid=8, batch_size=32)(image, target, raw=True),
            [("all masks first (no Captum RISE)", lambda: naive_rise(model, image, target, masks, 8, 0.5, 32, 0))],
        ),
    ]

    def paired(ours, peer):
        """Median times of ours and the peer, run alternately (ours first, then the peer first) after a
        warm-up of each, so that the load of a shared machine falls on both; then each one's peak memory
        and result from one more call."""
        for fn in (ours, peer):
            fn()
        times = {ours: [], peer: []}
        for round_ in range(repeats):
            for fn in (ours, peer) if round_ % 2 == 0 else (peer, ours):
                start = time.perf_counter()
                fn()
                times[fn].append(time.perf_counter() - start)
        measured = []
        for fn in (ours, peer):
            result: list = []
            memory = peak_memory(lambda fn=fn, result=result: result.append(fn()))
            measured.append((statistics.median(times[fn]), memory, result[0]))
        return measured

    rows = []
    load_start = os.getloadavg()[0]
    for label, ours, peers in cases:
        for peer_label, peer in peers:
            (ours_time, ours_memory, ours_result), (peer_time, peer_memory, peer_result) = paired(ours, peer)
            agreement = "—" if "RISE" in label else f"{relative_difference(ours_result, peer_result):.1e}"
            rows.append(
                [
                    label,
                    peer_label,
                    f"{ours_time:.2f}",
                    f"{peer_time:.2f}",
                    f"{peer_time / ours_time:.2f}x",
                    f"{ours_memory:.0f}",
                    f"{peer_memory:.0f}",
                    agreement,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)

    markdown = "\n\n".join(
        [
            f"`benchmarks/gradient_speed.py`{' --quick' if args.quick else ''}: one {args.size} px image, random-init "
            f"ResNet-18 (1000 classes), CPU ({machine()}: torch.set_num_threads({args.threads}), "
            "OMP_WAIT_POLICY=PASSIVE; "
            f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
            f"{os.cpu_count()} cores), medians of {repeats} runs "
            "after a warm-up, whycam and the peer alternating so that the load of the shared machine falls on "
            "both; peak memory is the resident-set increase during one call (glibc set to return large "
            "blocks on free, so cached memory does not hide it). "
            "Speed-up > 1 means whycam is faster. "
            '"max rel. diff" is max |whycam - peer| / max |peer| of the raw attributions (SmoothGrad: the same '
            "seed is not the same noise for Captum, which draws from the global generator, so the maps differ "
            "by the Monte Carlo noise; the oracle tests feed both the same noise and agree to 1e-7). "
            "Both libraries batch the interpolation steps (or samples) of all images into passes of 32 "
            "rows and take gradients with respect to the input only; whycam feeds the model channels-last "
            "images (`Explainer.in_layout`), the one difference in the work done.",
            table(
                ["method", "peer", "whycam s", "peer s", "speed-up", "whycam MiB", "peer MiB", "max rel. diff"], rows
            ),
        ]
    )
    path = write_section("benchmarks.md", "gradient_speed", markdown)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
