"""Compatibility table: every registered method on random-init architectures from torchvision, timm,
transformers and MONAI, as a new user would call it (automatic layer, default options but a few
forward passes; the task's natural target). Writes docs/compatibility.md.

Each (architecture, method) pair gets a status:

- ``ok``: maps of shape (B, *input grid), finite, in [0, 1]; each image's map equal to its map
  computed alone (no mixing across the batch); the model afterwards gives the same output as before,
  with the same hooks and modes (not broken).
- ``n/a``: the method does not apply (attention methods on a model without plain attention, CAM
  without a GAP + linear head, perturbation methods on volumes); it must be refused with a whycam
  error that names the fix, which is checked.
- ``refused`` / ``error``: an applicable pair that raised (a refusal names a fix; an error is anything
  else), ``wrong``: maps of the wrong shape or mixing images, ``broken``: the model changed.

    python benchmarks/compatibility.py                 # the named architectures -> docs/compatibility.md
    python benchmarks/compatibility.py --held-out      # architectures the issue does not name
    python benchmarks/compatibility.py --only resnet18,timm-swin
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import whycam

try:
    from common import machine, write_section
except ImportError:  # imported as benchmarks.compatibility
    from benchmarks.common import machine, write_section

FAST_OPTIONS = {  # a few forward passes per method: the table is about running right, not speed
    "scorecam": {"batch_size": 64},
    "ablationcam": {"batch_size": 64},
    "integratedgradients": {"steps": 4},
    "smoothgrad": {"samples": 2},
    "rise": {"masks": 16},
    "occlusion": {"window": 16, "stride": 16},
    "meaningfulperturbation": {"steps": 3},
}
ONE_IMAGE = ("scorecam", "ablationcam")  # one forward pass per channel: one image keeps the table fast
ATTENTION = ("rollout", "chefer", "legrad")
PERTURBATION = ("occlusion", "rise", "meaningfulperturbation")


@dataclass
class Arch:
    """A random-init architecture, its input and the task it solves."""

    build: Callable[[], nn.Module]
    shape: tuple[int, ...] = (3, 64, 64)
    task: str = "class"  # class | backbone | segmentation | detection
    cam: bool = False  # a global-average-pooling + one linear head: CAM applies
    attention: bool = False  # plain softmax attention: rollout / chefer apply
    output: object = None  # for a backbone: the embedding's key
    options: dict = field(default_factory=dict)
    calibrate: bool = False  # set BatchNorm's running statistics from random inputs (see calibrate_batchnorm)


def calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 4) -> None:
    """BatchNorm running statistics set to the mean and variance of the model's own activations on
    random inputs (train-mode forward passes without gradients; no weight changes), as a trained model's
    are. Hugging Face's MobileViT initialises convolutions with N(0, 0.02) but keeps running statistics
    (0, 1), so each conv + BatchNorm shrinks activations ~10x: its logits are ~1e-41, denormal floats
    whose rounding differs with the batch's size."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model(torch.rand(8, *shape, generator=torch.Generator().manual_seed(100 + seed)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def _tv(name, **kw):
    import torchvision

    def build():
        namespace = torchvision.models
        for part in name.split("."):
            namespace = getattr(namespace, part)
        return namespace(**kw)

    return build


def _timm(name, **kw):
    import timm

    return lambda: timm.create_model(name, pretrained=False, **kw)


def _hf(model, config, **kw):
    def build():
        import transformers

        return getattr(transformers, model)(getattr(transformers, config)(**kw))

    return build


SMALL_VIT = dict(
    image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def _monai(name, **kw):
    def build():
        from monai.networks import nets

        return getattr(nets, name)(**kw)

    return build


def _tv_detector():
    import torchvision

    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
    )


def _tv_segmenter():
    import torchvision

    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)


SWIN_TIMM = dict(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 2), num_heads=(1, 2, 4))
NAMED = {
    "tv-resnet18": Arch(_tv("resnet18", num_classes=5), cam=True),
    "tv-vgg11": Arch(_tv("vgg11", num_classes=5)),
    "tv-densenet121": Arch(_tv("densenet121", num_classes=5)),  # a functional ReLU before the pooling
    "tv-mobilenet_v3_small": Arch(_tv("mobilenet_v3_small", num_classes=5)),
    "tv-efficientnet_b0": Arch(_tv("efficientnet_b0", num_classes=5), cam=True),
    "tv-convnext_tiny": Arch(_tv("convnext_tiny", num_classes=5)),
    "tv-swin_t": Arch(_tv("swin_t", num_classes=5), cam=True),
    "tv-vit": Arch(
        _tv("VisionTransformer", image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
        attention=True,
    ),
    "tv-r3d_18": Arch(_tv("video.r3d_18", num_classes=5), shape=(3, 8, 32, 32), cam=True),
    "tv-fasterrcnn": Arch(_tv_detector, task="detection"),
    "tv-lraspp": Arch(_tv_segmenter, task="segmentation"),
    "timm-resnet18": Arch(_timm("resnet18", num_classes=5), cam=True),
    "timm-vit_tiny": Arch(_timm("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5), attention=True),
    "timm-deit_distilled": Arch(
        _timm("deit_tiny_distilled_patch16_224", img_size=64, depth=2, num_classes=5), attention=True
    ),
    "timm-vit_registers": Arch(
        _timm("vit_tiny_patch16_224", img_size=64, depth=2, reg_tokens=4, num_classes=5), attention=True
    ),
    "timm-swin": Arch(_timm("swin_tiny_patch4_window7_224", num_classes=5, **SWIN_TIMM)),
    "timm-convnext": Arch(_timm("convnext_atto", num_classes=5, conv_mlp=False)),
    "timm-maxvit": Arch(_timm("maxvit_rmlp_pico_rw_256", img_size=64, num_classes=5)),
    "hf-vit": Arch(_hf("ViTForImageClassification", "ViTConfig", num_labels=5, **SMALL_VIT), attention=True),
    "hf-swin": Arch(
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=64,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1, 2],
            num_heads=[1, 2, 4],
            window_size=4,
            num_labels=5,
        )
    ),
    "hf-dinov2": Arch(_hf("Dinov2Model", "Dinov2Config", **SMALL_VIT), task="backbone", attention=True),
    "hf-clip-vision": Arch(_hf("CLIPVisionModel", "CLIPVisionConfig", **SMALL_VIT), task="backbone", attention=True),
    "hf-segformer": Arch(
        _hf(
            "SegformerForSemanticSegmentation",
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[1, 2],
            decoder_hidden_size=32,
            num_labels=3,
        ),
        task="segmentation",
    ),
    "monai-resnet10": Arch(
        _monai("resnet10", spatial_dims=3, n_input_channels=1, num_classes=3), shape=(1, 16, 32, 32), cam=True
    ),
    "monai-densenet121": Arch(
        _monai("DenseNet121", spatial_dims=3, in_channels=1, out_channels=3), shape=(1, 32, 32, 32)
    ),
}

HELD_OUT = {
    "tv-regnet_y_400mf": Arch(_tv("regnet_y_400mf", num_classes=5), cam=True),
    "tv-shufflenet_v2": Arch(_tv("shufflenet_v2_x0_5", num_classes=5), cam=True),
    "tv-mnasnet": Arch(_tv("mnasnet0_5", num_classes=5), cam=True),
    "tv-squeezenet": Arch(_tv("squeezenet1_1", num_classes=5)),
    "tv-googlenet": Arch(_tv("googlenet", num_classes=5, aux_logits=False, init_weights=True), cam=True),
    "tv-swin_v2_t": Arch(_tv("swin_v2_t", num_classes=5), cam=True),
    "tv-mc3_18": Arch(_tv("video.mc3_18", num_classes=5), shape=(3, 8, 32, 32), cam=True),  # time stride 1
    "tv-deeplabv3": Arch(
        lambda: __import__("torchvision").models.segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=3
        ),
        task="segmentation",
    ),
    "tv-retinanet": Arch(
        lambda: __import__("torchvision").models.detection.retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64
        ),
        task="detection",
    ),
    "timm-efficientnet_b0": Arch(_timm("efficientnet_b0", num_classes=5), cam=True),
    "timm-regnetx": Arch(_timm("regnetx_002", num_classes=5), cam=True),
    "timm-poolformer": Arch(_timm("poolformer_s12", num_classes=5)),
    "timm-pvt_v2": Arch(_timm("pvt_v2_b0", num_classes=5)),
    "timm-cait": Arch(_timm("cait_xxs24_224", img_size=64, depth=2, num_classes=5)),
    "timm-beit": Arch(_timm("beit_base_patch16_224", img_size=64, depth=2, embed_dim=48, num_heads=2, num_classes=5)),
    "timm-eva": Arch(_timm("eva02_tiny_patch14_224", img_size=56, depth=2, num_classes=5), shape=(3, 56, 56)),
    "timm-mobilevit": Arch(_timm("mobilevit_xxs", num_classes=5)),
    "timm-convnextv2": Arch(_timm("convnextv2_atto", num_classes=5)),
    "timm-davit": Arch(_timm("davit_tiny", num_classes=5, depths=(1, 1, 1, 1))),
    "timm-flexivit": Arch(_timm("flexivit_small", img_size=64, depth=2, num_classes=5), attention=True),
    "hf-deit": Arch(
        _hf("DeiTForImageClassification", "DeiTConfig", num_labels=5, **SMALL_VIT),
        attention=True,
    ),
    "hf-beit": Arch(_hf("BeitForImageClassification", "BeitConfig", num_labels=5, **SMALL_VIT)),
    "hf-convnext": Arch(
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            num_labels=5,
        )
    ),
    "hf-mobilevit": Arch(
        _hf("MobileViTForImageClassification", "MobileViTConfig", image_size=64, num_labels=5), calibrate=True
    ),
    "hf-poolformer": Arch(_hf("PoolFormerForImageClassification", "PoolFormerConfig", num_labels=5)),
    "hf-resnet": Arch(
        _hf("ResNetForImageClassification", "ResNetConfig", hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    ),
    "monai-segresnet": Arch(
        _monai("SegResNet", spatial_dims=3, in_channels=1, out_channels=2, init_filters=8),
        shape=(1, 16, 32, 32),
        task="segmentation",
    ),
    "monai-efficientnet": Arch(
        _monai(
            "EfficientNetBN",
            model_name="efficientnet-b0",
            pretrained=False,
            spatial_dims=3,
            in_channels=1,
            num_classes=3,
        ),
        shape=(1, 32, 32, 32),  # five stride-2 stages and a 5x5x5 kernel: 16 slices are too few
        calibrate=True,  # as built, its logits are ~2e-15
    ),
}


def _target(arch: Arch, model: nn.Module, images: torch.Tensor):
    """The task's natural target, with whycam's named targets where this version has them."""
    targets = getattr(whycam, "targets", None)
    if arch.task == "class":
        return None
    if arch.task == "backbone":
        with torch.no_grad():
            reference = model(images[:1])[arch.output or "pooler_output"][0]
        return targets.Similarity(reference.flip(0)) if targets else None
    if arch.task == "segmentation":
        if targets:  # the middle half of every side: a region, as users explain (a uniform whole-image
            # mask makes GroupNorm's backward cancel Deconvnet's gradient exactly: a map of rounding noise)
            box = torch.zeros(images.shape[2:])
            box[tuple(slice(n // 4, n - n // 4) for n in box.shape)] = 1
            return targets.Region(1, box)
        return lambda out: (out["out"] if isinstance(out, dict) else out)[:, 1].sum(tuple(range(1, out.dim() - 1)))
    if arch.task == "detection" and targets:
        with torch.no_grad():
            found = targets.detections(model(images))
        return targets.Detection(found[0, 0, :4].tolist())
    return None


def _snapshot(model: nn.Module, probe: torch.Tensor):
    hooks = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), m.training) for m in model.modules()
    ]
    with torch.no_grad():
        output = model(probe)
    return hooks, _flat(output)


def _flat(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return torch.cat([_flat(v).flatten() for v in output.values() if v is not None])
    if isinstance(output, (list, tuple)):
        return torch.cat([_flat(v).flatten() for v in output if v is not None])
    return torch.zeros(0)


def _applies(arch: Arch, method: str, cls) -> bool:
    if method == "legrad":  # each block's prediction goes through the model's classifier head
        return arch.attention and arch.task == "class"
    if method in ATTENTION:
        return arch.attention
    if method == "finercam":  # compares the class with its most similar classes: needs class logits
        return arch.task == "class"
    if method == "cam":
        return arch.cam
    if method in PERTURBATION and len(arch.shape) == 4:
        return False
    return True


def check(arch: Arch, method: str, cls, model: nn.Module, images: torch.Tensor) -> tuple[str, str, str]:
    """``(status, layer, note)`` of one pair."""
    options = dict(FAST_OPTIONS.get(method, {}))
    needs_target = getattr(cls, "needs_target", True)
    if arch.task == "backbone" and needs_target:
        options["output"] = arch.output or "pooler_output"
    if method in ONE_IMAGE:
        images = images[:1]
    target = _target(arch, model, images) if needs_target else None
    before = _snapshot(model, images[:1])
    try:
        explainer = cls(model, **options)
        if method == "diffcam":
            explainer.fit(torch.rand(4, *images.shape[1:], generator=torch.Generator().manual_seed(5)))
        maps = explainer(images, target)
        alone = explainer(images[1:], target) if len(images) > 1 else maps[1:]
    except Exception as error:  # noqa: BLE001 (the table records every failure)
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
        named_fix = any(word in str(error) for word in ("pass ", "use ", "choose ", "give "))
        if not _applies(arch, method, cls):
            return ("n/a" if named_fix else "error"), "", message
        if "--debug" in sys.argv:
            traceback.print_exc()
        return ("refused" if named_fix else "error"), "", message
    layer = explainer.layers(images)[0][0] if hasattr(explainer, "layers") else ""
    after = _snapshot(model, images[:1])
    if after[0] != before[0] or not torch.allclose(after[1], before[1], atol=1e-5, equal_nan=True):
        return "broken", layer, "the model changed"
    if tuple(maps.shape) != (images.shape[0], *images.shape[2:]) or not torch.isfinite(maps).all():
        return "wrong", layer, f"maps {tuple(maps.shape)}"
    if maps.min() < 0 or maps.max() > 1:
        return "wrong", layer, "maps outside [0, 1]"
    if method not in ("diffcam",) and not torch.allclose(maps[1:], alone, atol=2e-3):
        return "wrong", layer, "an image's map depends on the other images of the batch"
    if not _applies(arch, method, cls):
        return "ok*", layer, "ran although marked not applicable"
    return "ok", layer, ""


def run(
    archs: dict[str, Arch], methods: list[str] | None = None, log=print, done=lambda table: None
) -> dict[str, dict[str, tuple]]:
    """The table, row by row; ``done(table)`` after each architecture (to write what is finished)."""
    registry = whycam.methods()
    names = methods or list(registry)
    table: dict[str, dict[str, tuple]] = {}
    for name, arch in archs.items():
        torch.manual_seed(0)
        try:
            model = arch.build().eval()
            if arch.calibrate:
                calibrate_batchnorm(model, arch.shape)
        except Exception as error:  # noqa: BLE001
            log(f"{name}: cannot build ({error})")
            continue
        images = torch.rand(2, *arch.shape, generator=torch.Generator().manual_seed(0))
        try:
            _snapshot(model, images[:1])
        except Exception as error:  # noqa: BLE001 (the table's input, not whycam, is wrong: left out, said)
            log(f"{name}: the model cannot run on its {tuple(arch.shape)} input ({error}); left out")
            continue
        table[name] = {}
        for method in names:
            start = time.perf_counter()
            table[name][method] = check(arch, method, registry[method], model, images)
            status, layer, note = table[name][method]
            log(f"{name:24s} {method:24s} {status:8s} {time.perf_counter() - start:6.1f}s {layer} {note}")
        done(table)
    return table


def summary(table: dict[str, dict[str, tuple]]) -> dict[str, float]:
    statuses = [s for row in table.values() for s, _, _ in row.values()]
    applicable = [s for s in statuses if s not in ("n/a", "ok*")]
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return {"pairs": len(statuses), "applicable": len(applicable), "ok": applicable.count("ok"), **counts}


def markdown(table: dict[str, dict[str, tuple]], title: str, footer: str = "") -> str:
    methods = list(next(iter(table.values())))
    lines = [
        f"### {title}",
        "",
        "| architecture | layer chosen | " + " | ".join(methods) + " |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, row in table.items():
        layer = next((layer for _, layer, _ in row.values() if layer), "")
        lines.append(f"| {name} | `{layer}` | " + " | ".join(row[m][0] for m in methods) + " |")
    stats = summary(table)
    share = 100 * stats["ok"] / max(stats["applicable"], 1)
    lines += [
        "",
        f"{stats['ok']} of {stats['applicable']} applicable pairs work ({share:.1f}%); all statuses: {stats}.",
    ]
    notes = [
        f"- {name} × {m}: {status} — {note}" for name, row in table.items() for m, (status, _, note) in row.items()
    ]
    notes = [n for n in notes if "— " in n and not n.endswith("— ") and " n/a " not in n]
    if notes:
        lines += ["", "Failures and notes:", "", *notes]
    if footer:
        lines += ["", footer]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", action="store_true", help="the architectures the issue does not name")
    parser.add_argument("--only", default=None, help="comma-separated architecture names")
    parser.add_argument("--methods", default=None, help="comma-separated method names")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write docs/compatibility.md")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = HELD_OUT if args.held_out else NAMED
    if args.only:
        archs = {k: archs[k] for k in args.only.split(",")}
    title = "Held-out architectures" if args.held_out else "Named architectures"
    if args.methods:
        title += f" (methods: {args.methods})"

    start, load = time.perf_counter(), os.getloadavg()[0]

    def write(table):
        minutes = (time.perf_counter() - start) / 60
        footer = (
            f"{len(table)} architectures in {minutes:.0f} min on {machine()} (1-minute load average "
            f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores)."
        )
        if not args.no_write:
            section = "held-out" if args.held_out else "named"
            write_section("compatibility.md", section, markdown(table, title, footer))

    table = run(archs, args.methods.split(",") if args.methods else None, done=write)
    print(summary(table))


if __name__ == "__main__":
    main()
