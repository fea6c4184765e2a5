"""Speed of whycam.metrics against the peers, on the same inputs, with agreement checks.

ROAD on 224x224 images (random-init ResNet-18, Grad-CAM maps, percentages 10..90) against
pytorch-grad-cam's ROADCombined; the imputer alone against pytorch-grad-cam's NoisyLinearImputer at
30/60/90% removed (most and least relevant first), with where its time goes; the localisation metrics
against Quantus. Medians of interleaved rounds, torch.set_num_threads(2). Writes the "metrics_speed"
section of docs/benchmarks.md; about 3 minutes on 2 idle cores.

    PYTHONPATH=src python benchmarks/metrics_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_times, machine, median_time, table, write_section  # noqa: E402

import whycam  # noqa: E402
from whycam import metrics  # noqa: E402
from whycam.metrics import imputation  # noqa: E402
from whycam.metrics.ranks import pixel_ranks  # noqa: E402

torch.set_num_threads(2)
PERCENTAGES = list(range(10, 100, 10))


def road_inputs(count: int = 1):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    images = torch.randn(count, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    maps = whycam.GradCAM(model, layer="layer4")(images)
    maps = maps + 1e-6 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))  # no ties
    classes = model(images).argmax(1).tolist()
    return model, images, maps, classes


def peer_road(model, images, maps, classes, noise: float):
    """pytorch-grad-cam's ROAD curves, score change per percentage (their percentile = part kept)."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    curves = {}
    for order, metric in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
        steps = []
        for percentage in PERCENTAGES:
            peer = metric(percentile=100 - percentage)
            peer.perturbation.imputer.noise = noise
            steps.append(torch.from_numpy(peer(images, maps.numpy(), targets, model)))
        curves[order] = torch.stack(steps, 1)
    return curves


def bench_road(repeats: int) -> tuple[str, list[list[object]], list[list[object]]]:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, images, maps, classes = road_inputs()
    ours = metrics.road(model, images, maps, classes, noise=0.0)
    peer = peer_road(model, images, maps, classes, noise=0.0)
    print("ROAD agreement measured", flush=True)
    gap = max(float((ours.curves[o] - ours.curves["original"] - peer[o]).abs().max()) for o in peer)
    combined = ((peer["lerf"] - peer["morf"]) / 2).mean(1)
    combined_gap = float((ours.scores - combined).abs().max())

    targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    ours_time, peer_time = interleaved_times(
        [
            lambda: metrics.road(model, images, maps, classes),
            lambda: ROADCombined(PERCENTAGES)(images, maps.numpy(), targets, model),
        ],
        repeats=repeats,
        warmup=0,
    )
    print(f"ROAD timed: {ours_time:.1f} s vs {peer_time:.1f} s", flush=True)

    count = len(images)
    rows = [
        [
            f"ROAD, {count} image, 9 percentages x MoRF/LeRF",
            f"{ours_time:.2f} s",
            f"{peer_time:.2f} s",
            f"{peer_time / ours_time:.1f}x",
            f"curves {gap:.1e}, combined {combined_gap:.1e}",
        ]
    ]
    imputer = NoisyLinearImputer(noise=0.0)
    parts = []
    for fraction in (0.3, 0.6, 0.9):
        for most_relevant in (True, False):
            removed = pixel_ranks(maps, most_relevant) < round(fraction * maps[0].numel())
            name = f"{fraction:.0%} removed ({'most' if most_relevant else 'least'} relevant)"
            ours_imp, peer_imp = interleaved_times(
                [
                    lambda removed=removed: metrics.noisy_linear_impute(images, removed, noise=0.0),
                    lambda removed=removed: [imputer(images[i], (~removed[i]).float()) for i in range(count)],
                ],
                repeats=repeats,
            )
            filled = metrics.noisy_linear_impute(images, removed, noise=0.0)
            reference = torch.stack([imputer(images[i], (~removed[i]).float()) for i in range(count)])
            rows.append(
                [
                    f"imputation alone, {count} image x 3 channels, {name}",
                    f"{ours_imp:.3f} s",
                    f"{peer_imp:.3f} s",
                    f"{peer_imp / ours_imp:.1f}x",
                    f"{float((filled - reference).abs().max()):.1e}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
            parts.append([name, *where_the_time_goes(images[0], removed[0], repeats), f"{peer_imp / 5 * 1e3:.0f}"])
    return "pytorch-grad-cam 1.5.7", rows, parts


def where_the_time_goes(image: torch.Tensor, removed: torch.Tensor, repeats: int) -> list[str]:
    """Milliseconds of whycam's imputation (all, SuperLU factorisation) and of the peer's (building its
    matrix, its spsolve), and the number of removed pixels."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    factorised = []

    def timed_splu(*args, **kwargs):
        start = time.perf_counter()
        factor = plain_splu(*args, **kwargs)
        factorised.append(time.perf_counter() - start)
        return factor

    plain_splu = imputation.splu
    imputation.splu = timed_splu
    try:
        total = interleaved_times([lambda: metrics.noisy_linear_impute(image[None], removed[None], noise=0.0)], repeats)
    finally:
        imputation.splu = plain_splu
    kept = (~removed).float().numpy()
    build = interleaved_times(
        [lambda: NoisyLinearImputer.setup_sparse_system(kept, image.numpy(), neighbors_weights)], repeats
    )
    system, rhs = NoisyLinearImputer.setup_sparse_system(kept, image.numpy(), neighbors_weights)
    solve = interleaved_times([lambda: spsolve(csc_matrix(system), rhs)], repeats)
    factor = statistics.median(factorised)
    return [
        f"{int(removed.sum())}",
        f"{total[0] * 1e3:.0f}",
        f"{factor * 1e3:.0f} ({factor / total[0]:.0%})",
        f"{build[0] * 1e3:.0f}",
        f"{solve[0] * 1e3:.0f}",
    ]


def bench_localisation() -> list[list[object]]:
    import quantus

    count, size = 64, 224
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(count, size, size, generator=generator)
    corner = torch.randint(0, size // 2, (count, 2), generator=generator)
    boxes = torch.cat([corner, corner + torch.randint(16, size // 2, (count, 2), generator=generator)], 1)
    masks = metrics.localisation.ground_truth_masks(boxes, maps)
    x = np.zeros((count, 1, size, size), np.float32)
    y = np.zeros(count, int)
    a, s = maps[:, None].numpy(), masks[:, None].numpy().astype(np.float32)
    options = {"normalise": False, "abs": False, "disable_warnings": True}
    pairs = [
        (
            "pointing game (tolerance 0)",
            lambda: metrics.pointing_game(maps, masks, tolerance=0),
            quantus.PointingGame(**options),
        ),
        (
            "relevance rank accuracy",
            lambda: metrics.relevance_rank_accuracy(maps, masks),
            quantus.RelevanceRankAccuracy(**options),
        ),
        (
            "energy pointing game",
            lambda: metrics.energy_pointing_game(maps, masks),
            quantus.RelevanceMassAccuracy(**options),
        ),
    ]
    rows = []
    for name, ours, peer in pairs:
        run_peer = lambda peer=peer: peer(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)  # noqa: E731
        gap = float(np.abs(ours().scores.numpy() - np.asarray(run_peer(), dtype=float)).max())
        ours_time, peer_time = median_time(ours), median_time(run_peer)
        rows.append(
            [
                f"{name}, {count} maps {size}x{size}",
                f"{ours_time * 1e3:.1f} ms",
                f"{peer_time * 1e3:.1f} ms",
                f"{peer_time / ours_time:.1f}x",
                f"{gap:.1e}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per comparison (median)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    peer, road_rows, parts = bench_road(args.repeats)
    local_rows = bench_localisation()
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    header = ["task", "whycam", "peer", "speed-up", "max abs difference"]
    text = "\n\n".join(
        [
            f"Machine: {machine()} (torch.set_num_threads(2)), 1-minute load average {load}, on "
            f"{os.cpu_count()} cores (with a load above the core count, absolute times are inflated; "
            f"the ratios come from the same rounds). ROAD and imputation: medians of {args.repeats} rounds "
            "in which whycam and the peer take turns (after an untimed agreement run; imputation after one "
            "warm-up call each); localisation: medians of 5 runs.",
            f"ROAD and noisy linear imputation against {peer} (ResNet-18 random init, 224x224, "
            "Grad-CAM maps with a 1e-6 jitter so that no two pixels tie; agreement measured with the noise "
            "off, timing with the default noise 0.01). whycam removes exactly round(p% x H x W) pixels, the "
            "peer the pixels at or above a numpy percentile: on continuous maps the two differ by at most "
            "one pixel per step, hence the small differences in the curves. The imputation's max abs "
            "difference is against the peer's plain direct solve (SuperLU with partial pivoting, float64, "
            "returned in float32).",
            table(header, road_rows),
            "Where the imputation's time goes (ms, medians, one 224x224 image x 3 channels). whycam solves "
            "the removed pixels' system directly, like the peer, but builds it with array operations in a "
            "nested dissection order and factorises it without pivoting (SuperLU's symmetric mode); the "
            "factorisation is most of what is left. 5x the peer needs the whole of whycam's time under the "
            "last column: where the factorisation alone is above it, 5x is out of reach for any solver "
            "built on scipy's SuperLU (a supernodal Cholesky, e.g. CHOLMOD, would be the next step; a "
            "multigrid-preconditioned CG in torch, whycam's solver for images on an accelerator, was "
            "slower on the CPU).",
            table(
                [
                    "removed",
                    "pixels",
                    "whycam all",
                    "whycam factorisation",
                    "peer: building its matrix",
                    "peer: spsolve",
                    "peer all / 5",
                ],
                parts,
            ),
            "Localisation against Quantus 0.6.0 (normalise=False, abs=False), masks from random boxes:",
            table(header, local_rows),
        ]
    )
    write_section("benchmarks.md", "metrics_speed", text)
    print(text)


if __name__ == "__main__":
    main()
