"""The ``whycam`` command: demo, explain, reference build/info, evaluate, sanity, methods, benchmark.

Exit codes: 0 everything worked; 1 some inputs failed (each reported by name) but every other
result was written; 2 usage error (bad option, unknown method, model or layer, unusable reference,
nothing to process).
"""

from __future__ import annotations

import ast
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .data import load_target_file
from .targets import parse_target

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class Failures:
    """Inputs that failed: reported on stderr as they happen, counted for the exit code."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, what: object, error: object) -> None:
        self.items.append({"input": str(what), "error": str(error)})
        tqdm.write(f"whycam: skipped {what}: {error}", file=sys.stderr)

    def exit(self, ctx: click.Context) -> None:
        if self.items:
            click.echo(f"whycam: {len(self.items)} input(s) failed; the other results were written.", err=True)
            ctx.exit(EXIT_PARTIAL)


def _load_model(spec: str, weights: str | None, download: bool, device: str = "cpu"):
    """The model, moved to ``device``; its preprocessing then puts every input there too."""
    from dataclasses import replace

    from .models import ModelSpecError, load_model

    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise click.BadParameter(
            f"{device!r} is not a device ({error}); e.g. cpu, cuda, cuda:1, mps", param_hint="--device"
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(where.type, True):
        raise click.BadParameter(
            f"{where.type} is not available on this machine; use --device cpu", param_hint="--device"
        )
    try:
        loaded = load_model(spec, weights, download=download)
    except ModelSpecError as error:
        raise click.BadParameter(str(error), param_hint="--model/--weights") from None
    loaded.model.to(where)
    loaded.preprocess = replace(loaded.preprocess, device=str(where))
    return loaded


def _check_layer(loaded, layer: str | None) -> str | None:
    from .layers import LayerNotFoundError, resolve_layer

    layer = layer or loaded.layer
    if layer is not None:
        try:
            resolve_layer(loaded.model, layer)
        except LayerNotFoundError as error:
            raise click.BadParameter(str(error), param_hint="--layer") from None
    return layer


def _method_names(text: str) -> list[str]:
    from .methods.base import methods

    registry = methods()
    names = list(registry) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(registry)} (see `whycam methods`)",
            param_hint="--method",
        )
    return names


def _applicable(names: list[str], model) -> list[str]:
    """``all`` methods means all that apply to the model (attention methods need a transformer)."""
    from .methods.base import methods

    registry = methods()
    return [n for n in names if registry[n].applies(model)] if set(names) == set(registry) else names


def _read_images(paths: Sequence[str], preprocess, failures: Failures, desc: str = "read"):
    """(names, display images (3, h, w) in [0, 1], model inputs (C, h, w)) of the readable images."""
    from .data import iter_images

    names, shown, inputs, seen = [], [], [], {}
    for path, image in tqdm(iter_images(paths), desc=desc, unit="image", leave=False):
        if isinstance(image, Exception):
            failures.add(path, image)
            continue
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
        display = preprocess.geometry(image)
        shown.append(display)
        inputs.append(preprocess.normalize(display))
    return names, shown, inputs


def _fit_reference(explainer, reference: str, loaded, failures: Failures, batch_size: int) -> str:
    """Fit a reference-group explainer on saved statistics (a file) or a folder of images."""
    path = Path(reference)
    try:
        if path.is_file():
            from .reference import ReferenceBank, ReferenceStats

            try:
                stats = ReferenceStats.load(path)
            except (ValueError, KeyError):
                stats = ReferenceBank.load(path)
            explainer.fit(stats)
            return f"statistics {path.name} ({stats!r})"
        names, _, inputs = _read_images([reference], loaded.preprocess, failures, "reference")
        if len(inputs) < 2:
            raise ValueError(
                f"the reference folder {reference} holds {len(inputs)} readable image(s); "
                "a reference group needs at least 2"
            )
        explainer.fit(torch.stack(inputs), batch_size=batch_size)
        return f"{len(inputs)} images from {reference}"
    except (ValueError, KeyError, OSError) as error:
        raise click.BadParameter(f"cannot use reference {reference}: {error}", param_hint="--reference") from None


def _parse_value(text: str) -> object:
    """A Python literal (number, bool, None, tuple) where the text is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _method_options(items: Sequence[str], names: Sequence[str], model, layer) -> dict[str, dict]:
    """``--option METHOD.KEY=VALUE`` items as ``{method: {key: value}}``; each method is built once
    with its options here, so an unknown key or a bad value stops the command before any work."""
    from .evaluate import constructor_options, make_explainer
    from .methods.base import methods

    registry, options = methods(), {}
    for item in items:
        head, equals, text = item.partition("=")
        method, dot, key = head.strip().partition(".")
        if not equals or not dot or not key:
            raise click.BadParameter(
                f"{item!r} is not METHOD.KEY=VALUE (e.g. diffcam.shrinkage=ledoit-wolf)", param_hint="--option"
            )
        if method not in names:
            raise click.BadParameter(
                f"{item!r} sets an option of {method!r}, which is not run here (methods: {', '.join(names)})",
                param_hint="--option",
            )
        accepted = sorted(constructor_options(registry[method]) - {"layer"})
        if key not in accepted:
            raise click.BadParameter(
                f"{method} has no option {key!r} (the layer is --layer); its options: {', '.join(accepted)}",
                param_hint="--option",
            )
        options.setdefault(method, {})[key] = _parse_value(text.strip())
    for method, settings in options.items():
        try:
            make_explainer(method, model, layer, **settings)
        except (ValueError, TypeError) as error:
            raise click.BadParameter(f"{method}: {error}", param_hint="--option") from None
    return options


OPTION_HELP = (
    "A method's option as METHOD.KEY=VALUE, repeatable, e.g. diffcam.shrinkage=ledoit-wolf, "
    "diffcam.k=50, rise.masks=2000 (the keyword arguments of its class; see docs/)."
)


QUESTIONS = ("why", "why-not", "unusual")


def _bank_label(bank, target: str | int, loaded) -> object:
    """The bank's label of a class given by index or name: the bank's labels may be class indices,
    indices as text (folder names such as "5"), or the model's class names."""
    index = None
    try:
        index = loaded.class_index(target)
    except ValueError:
        pass
    candidates = [target, str(target)]
    if index is not None:
        candidates += [index, str(index), loaded.class_name(index)]
    for candidate in candidates:
        if candidate in bank.classes:
            return candidate
    raise click.BadParameter(
        f"the reference bank has no class {target!r}; its classes: {', '.join(map(str, bank.labels))}",
        param_hint="--versus/--target",
    )


def _ask(explainer, question: str, batch: torch.Tensor, labels: list, versus) -> torch.Tensor:
    """DiffCAM's bank question for every image of a batch; images with the same label asked together."""
    if question == "why-not":
        return explainer.why_not(batch, versus)
    ask = explainer.why if question == "why" else explainer.unusual
    maps = None
    for label in dict.fromkeys(labels):
        rows = [i for i, other in enumerate(labels) if other == label]
        part = ask(batch[rows], label)
        maps = part.new_zeros((len(batch), *part.shape[1:])) if maps is None else maps
        maps[rows] = part
    return maps


MODEL_OPTIONS = [
    click.option(
        "--model",
        "model_spec",
        required=True,
        metavar="SPEC",
        help="efficientnet-lite0, digits-cnn, torchvision:NAME, timm:NAME, a TorchScript file, or module:function.",
    ),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        default=None,
        help="Local weights (safetensors, or a state dict read with weights_only=True).",
    ),
    click.option("--download", is_flag=True, help="Let torchvision/timm download pretrained weights (needs internet)."),
    click.option("--device", default="cpu", show_default=True, help="Where the model runs: cpu, cuda, cuda:1, mps."),
]


def model_options(function):
    for option in reversed(MODEL_OPTIONS):
        function = option(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="whycam")
def main() -> None:
    """whycam: saliency maps that say why a vision model decides as it does.

    \b
    Start with:  whycam demo --out out/demo
    List methods: whycam methods
    """


@main.command("methods")
def list_methods() -> None:
    """List every registered method with a one-line description.

    \b
    Example:
      whycam methods
    """
    from .methods.base import methods

    for name, cls in methods().items():
        needs = "target" if cls.needs_target else "no target"
        grad = "gradient" if getattr(cls, "uses_gradient", False) else "no gradient"
        reference = ", reference group" if callable(getattr(cls, "fit", None)) else ""
        click.echo(f"{name:24s} {cls.summary}  [{needs}, {grad}{reference}]")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@click.option("--quick", is_flag=True, help="Two photographs and fewer methods (for a smoke test).")
@click.pass_context
def demo(ctx: click.Context, out: str, quick: bool) -> None:
    """Run the demo: EfficientNet-Lite0 on real photographs and the digits CNN, every main method,
    into a self-contained HTML report.

    \b
    Example:
      whycam demo --out out/demo
    """
    from .demo import run

    report = run(Path(out), quick=quick)
    click.echo(str(report))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@click.option(
    "--method",
    "method_text",
    default="gradcam",
    show_default=True,
    help="Method name(s), comma-separated, or 'all' (see `whycam methods`).",
)
@click.option("--layer", default=None, help="Layer to explain (dotted name); default: the model's own or automatic.")
@click.option(
    "--target",
    default=None,
    help="Class index or name (default: the predicted class), or a named target KIND:VALUE: labels:3,5 | "
    "output:0 | region:2[@mask.png] | box:x1,y1,x2,y2[@label] | similarity:embedding.npy (see docs/targets.md).",
)
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True),
    help="Reference group for DiffCAM: a folder of images or a statistics file.",
)
@click.option(
    "--question",
    type=click.Choice(QUESTIONS),
    default=None,
    help="DiffCAM's question to a per-class --reference bank (`whycam reference build --per-class`): "
    "why is the image its target class (reference: every other class), why is it not --versus "
    "(reference: that class), what is unusual about it (reference: its own class).",
)
@click.option("--versus", default=None, help="The class of --question why-not: a class of the bank.")
@click.option("--option", "option_items", multiple=True, metavar="METHOD.KEY=VALUE", help=OPTION_HELP)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--report", is_flag=True, help="Also write report.html.")
@click.option("--batch-size", default=8, show_default=True)
@click.pass_context
def explain(
    ctx,
    images,
    model_spec,
    weights,
    download,
    device,
    method_text,
    layer,
    target,
    reference,
    question,
    versus,
    option_items,
    out,
    report,
    batch_size,
) -> None:
    """Explain IMAGES (files or folders): overlays (PNG), raw maps (.npy) and summary.json.

    \b
    Examples:
      whycam explain photos/ --model efficientnet-lite0 --method gradcam,diffcam \\
          --reference references/ --out out/explain --report
      whycam explain threes/ --model digits-cnn --method diffcam --reference digits_bank.safetensors \\
          --question why-not --versus 5 --option diffcam.shrinkage=ledoit-wolf --out out/why_not_5
    """
    from .evaluate import make_explainer, needs_reference
    from .viz import overlay_figure, save_png

    failures = Failures()
    names = _method_names(method_text)
    loaded = _load_model(model_spec, weights, download, device)
    names = _applicable(names, loaded.model)
    layer = _check_layer(loaded, layer)
    options = _method_options(option_items, names, loaded.model, layer)
    if (question == "why-not") != (versus is not None):
        raise click.UsageError("--question why-not and --versus CLASS go together")
    target_index, named = None, None
    if target is not None and ":" in target:
        try:
            named = parse_target(target, load_target_file)
        except (ValueError, OSError) as error:
            raise click.BadParameter(str(error), param_hint="--target") from None
    elif target is not None:
        try:
            target_index = loaded.class_index(target)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--target") from None
    explainers, questions = {}, {}
    for name in names:
        explainer = make_explainer(name, loaded.model, layer, **options.get(name, {}))
        if isinstance(loaded.model, torch.jit.ScriptModule) and hasattr(explainer, "layers"):
            raise click.UsageError(
                f"{name} reads a layer through hooks, which TorchScript models do not support; use a "
                "gradient or perturbation method (see `whycam methods`), or load the model as module:function"
            )
        if needs_reference(explainer):
            if reference is None:
                raise click.UsageError(
                    f"{name} answers against a reference group: pass --reference DIR|STATS "
                    "(build statistics with `whycam reference build`)"
                )
            questions[name] = _fit_reference(explainer, reference, loaded, failures, batch_size)
            if question is not None:
                bank = getattr(explainer, "bank_", None)
                if bank is None:
                    raise click.UsageError(
                        f"--question needs per-class statistics as --reference; {reference} holds one group "
                        "(build a bank with `whycam reference build --per-class`)"
                    )
                if versus is not None:
                    versus = _bank_label(bank, versus, loaded)
                questions[name] += f"; question: {question}" + (f" {versus}" if versus is not None else "")
        explainers[name] = explainer
    if question is not None and not questions:
        raise click.UsageError("--question is DiffCAM's: add diffcam to --method")
    image_names, shown, inputs = _read_images(images, loaded.preprocess, failures)
    if not inputs:
        raise click.UsageError("no readable image among the inputs; nothing to explain")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [{"image": n} for n in image_names]
    with torch.no_grad():
        probabilities = torch.cat(
            [
                loaded.model(torch.stack(inputs[i : i + batch_size])).softmax(1)
                for i in range(0, len(inputs), batch_size)
            ]
        )
    predictions = probabilities.argmax(1)
    for record, p, prob in zip(records, predictions.tolist(), probabilities, strict=True):
        record.update(prediction=p, prediction_name=loaded.class_name(p), probability=float(prob[p]), results=[])
    targets = predictions if target_index is None else torch.full_like(predictions, target_index)
    grid: dict[str, list] = {}
    times: dict[str, float] = {}
    bar = tqdm(total=len(inputs) * len(explainers), desc="explain", unit="map")
    for method, explainer in explainers.items():
        for start in range(0, len(inputs), batch_size):
            batch = torch.stack(inputs[start : start + batch_size])
            chunk = targets[start : start + batch_size]
            try:
                asked = question is not None and method in questions
                labels = [_bank_label(explainer.bank_, int(t), loaded) for t in chunk] if asked else None
                clock = time.perf_counter()
                maps = (
                    _ask(explainer, question, batch, labels, versus)
                    if asked
                    else explainer(batch, (named or chunk) if explainer.needs_target else None)
                )
                seconds = (time.perf_counter() - clock) / len(batch)
            except Exception as error:  # noqa: BLE001 (one failing batch must not lose the others)
                failures.add(f"{method} on {', '.join(image_names[start : start + len(batch)])}", error)
                bar.update(len(batch))
                continue
            times[method] = times.get(method, 0.0) + seconds * len(batch)
            for offset, saliency in enumerate(maps):
                i = start + offset
                stem = f"{image_names[i]}_{method}"
                np.save(out_dir / f"{stem}.npy", saliency.cpu().numpy().astype(np.float32))
                title = (
                    f"{method}: {question} {versus if question == 'why-not' else labels[offset]}"
                    if asked
                    else f"{method}: {target}"
                    if named is not None and explainer.needs_target
                    else f"{method}: {loaded.class_name(int(chunk[offset]))}"
                    if explainer.needs_target
                    else method
                )
                save_png(out_dir / f"{stem}.png", overlay_figure(shown[i], saliency, title))
                records[i]["results"].append(
                    {
                        "method": method,
                        "layer": layer if hasattr(explainer, "layers") else None,
                        "target": (target if named is not None else int(chunk[offset]))
                        if explainer.needs_target
                        else None,
                        "target_name": loaded.class_name(int(chunk[offset]))
                        if explainer.needs_target and named is None
                        else None,
                        "reference": questions.get(method),
                        "question": [question, versus if question == "why-not" else labels[offset]] if asked else None,
                        "time_s": seconds,
                        "overlay": f"{stem}.png",
                        "map": f"{stem}.npy",
                    }
                )
                grid.setdefault(method, [None] * len(inputs))[i] = saliency
            bar.update(len(batch))
    bar.close()
    summary = {
        "model": loaded.name,
        "layer": layer,
        "methods": names,
        "images": records,
        "failures": failures.items,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if report:
        _explain_report(out_dir / "report.html", loaded, image_names, shown, grid, times, records, questions, failures)
        click.echo(str(out_dir / "report.html"))
    click.echo(f"wrote {out_dir / 'summary.json'}")
    failures.exit(ctx)


def _explain_report(path, loaded, image_names, shown, grid, times, records, questions, failures) -> None:
    from .report import Report
    from .viz import grid_figure

    report = Report(f"whycam: {loaded.name}")
    complete = {m: maps for m, maps in grid.items() if all(x is not None for x in maps)}
    rows = [f"{n}\n{r['prediction_name']} ({r['probability']:.2f})" for n, r in zip(image_names, records, strict=True)]
    if complete:
        notes = {m: f"{times[m] / len(shown) * 1000:.0f} ms/img" for m in complete}
        report.figure(
            grid_figure(shown, complete, row_titles=rows, column_notes=notes),
            "Images down, methods across; time per image under each method.",
        )
    for method, question in questions.items():
        report.paragraph(f"{method}: reference group = {question}.")
    report.table(
        [{"image": r["image"], "prediction": r["prediction_name"], "probability": r["probability"]} for r in records]
    )
    if failures.items:
        report.heading("Inputs that failed")
        report.table(failures.items)
    report.save(path)


@main.group()
def reference() -> None:
    """Build and inspect DiffCAM reference statistics (safetensors files)."""


@reference.command("build")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@model_options
@click.option("--layer", default=None, help="Layer whose embeddings are summarised.")
@click.option("--per-class", is_flag=True, help="Each subfolder of FOLDERS is a class: build a per-class bank.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .safetensors (or .npz).")
@click.option("--batch-size", default=32, show_default=True)
@click.pass_context
def reference_build(ctx, folders, model_spec, weights, download, device, layer, per_class, out, batch_size) -> None:
    """Summarise reference images (count, sum, sum of outer products) for DiffCAM.

    \b
    Examples:
      whycam reference build healthy/ --model efficientnet-lite0 --out healthy.safetensors
      whycam reference build train/ --per-class --model digits-cnn --out digits_bank.safetensors
    """
    from .data import find_images

    failures = Failures()
    loaded = _load_model(model_spec, weights, download, device)
    layer = _check_layer(loaded, layer)
    from .evaluate import make_explainer

    explainer = make_explainer("diffcam", loaded.model, layer)
    groups: list[tuple[str | None, list[str]]] = []
    for folder in map(Path, folders):
        if per_class:
            classes = sorted(p for p in folder.iterdir() if p.is_dir())
            if not classes:
                raise click.UsageError(f"--per-class: {folder} has no subfolders (one per class)")
            groups.extend((c.name, [str(c)]) for c in classes)
        else:
            groups.append((None, [str(folder)]))
    total = 0
    for _, paths in groups:
        try:
            count = len(find_images(paths))
        except (OSError, ValueError) as error:
            failures.add(paths[0], error)
            continue
        total += count
    if total < 2:
        raise click.UsageError("fewer than 2 images in the reference folders; nothing to summarise")

    def batches():
        bar = tqdm(total=total, desc="reference", unit="image")
        for label, paths in groups:
            _, _, inputs = _read_images(paths, loaded.preprocess, failures)
            for start in range(0, len(inputs), batch_size):
                chunk = torch.stack(inputs[start : start + batch_size])
                bar.update(len(chunk))
                yield chunk if label is None else (chunk, [label] * len(chunk))
        bar.close()

    try:
        explainer.fit(batches())
    except ValueError as error:
        raise click.UsageError(f"cannot build the reference: {error}") from None
    stats = explainer.bank_ if per_class else explainer.reference_
    path = stats.save(out)
    click.echo(f"wrote {path}: {stats!r}")
    failures.exit(ctx)


@reference.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def reference_info(file: str) -> None:
    """Describe a reference statistics file (or per-class bank).

    \b
    Example:
      whycam reference info healthy.safetensors
    """
    from .reference import ReferenceBank, ReferenceStats

    try:
        stats = ReferenceStats.load(file)
        groups = {"(all)": stats}
    except (ValueError, KeyError):
        try:
            stats = ReferenceBank.load(file)
        except (ValueError, KeyError, OSError) as error:
            raise click.BadParameter(f"{file} is not a whycam reference file: {error}", param_hint="FILE") from None
        groups = dict(stats.classes)
    click.echo(f"{file}: {stats!r}")
    for key, value in sorted(stats.meta.items()):
        click.echo(f"  {key}: {value}")
    if len(groups) > 1:
        for label, group in groups.items():
            click.echo(f"  class {label}: {group.count_} images")


def _dataset_tensors(dataset_path: str, loaded, failures: Failures):
    """Read a ground-truth dataset through the model's preprocessing: names, display images, inputs,
    masks (N, h, w), labels (class indices, or None where a label is not a class of the model), and
    the explained class's boxes (N, M, 4), padded with empty boxes (None for a mask dataset)."""
    from .data import load_dataset, read_image, to_tensor

    try:
        dataset = load_dataset(dataset_path)
    except (OSError, ValueError) as error:
        raise click.BadParameter(str(error), param_hint="DATASET") from None
    names, shown, inputs, masks, labels, boxes = [], [], [], [], [], []
    for sample in tqdm(dataset, desc="read", unit="image", leave=False):
        try:
            image = to_tensor(read_image(sample.path))
            mask = sample.mask(tuple(image.shape[-2:]))
        except (OSError, ValueError) as error:
            failures.add(sample.path, error)
            continue
        moved = loaded.preprocess.boxes(sample.explained_boxes, tuple(image.shape[-2:]))
        boxes.append(torch.tensor(moved, dtype=torch.float32).reshape(-1, 4))
        display = loaded.preprocess.geometry(image)
        names.append(sample.path.stem)
        shown.append(display)
        inputs.append(loaded.preprocess.normalize(display))
        masks.append(loaded.preprocess.geometry(mask[None].float(), mode="nearest")[0] > 0.5)
        try:
            labels.append(None if sample.label is None else loaded.class_index(sample.label))
        except ValueError:
            labels.append(None)
    if not inputs:
        raise click.UsageError(f"no readable image in the dataset {dataset_path}")
    most = max(len(b) for b in boxes)
    padded = torch.stack([torch.cat([b, b.new_zeros(most - len(b), 4)]) for b in boxes]) if most else None
    return names, shown, torch.stack(inputs), torch.stack(masks), labels, padded


def _evaluate_command(
    ctx,
    dataset,
    model_spec,
    weights,
    download,
    device,
    method_names,
    metric_text,
    layer,
    reference,
    option_items,
    out,
    batch_size,
    title,
) -> None:
    from .evaluate import BOX_METRICS, evaluate
    from .report import Report
    from .viz import curve_figure, grid_figure, save_png

    failures = Failures()
    loaded = _load_model(model_spec, weights, download, device)
    method_names = _applicable(method_names, loaded.model)
    layer = _check_layer(loaded, layer)
    options = _method_options(option_items, method_names, loaded.model, layer)
    metric_names = [m.strip() for m in metric_text.split(",") if m.strip()]
    names, shown, inputs, masks, labels, boxes = _dataset_tensors(dataset, loaded, failures)
    # the box metrics match the map's box with each object's box; the rest read the mask (their union)
    truth = masks if boxes is None else {m: boxes if m in BOX_METRICS else masks for m in metric_names}
    known = [label for label in labels if label is not None]
    targets = torch.tensor(labels, device=inputs.device) if len(known) == len(labels) else None
    reference_images = None
    if reference is not None:
        _, _, ref_inputs = _read_images([reference], loaded.preprocess, failures, "reference")
        reference_images = torch.stack(ref_inputs) if ref_inputs else None
    try:
        evaluation = evaluate(
            loaded.model,
            inputs,
            targets,
            methods=method_names,
            metrics=metric_names,
            truth=truth,
            labels=targets,
            names=names,
            layer=layer,
            reference=reference_images,
            options=options,
            batch_size=batch_size,
            skip_failures=True,
            keep_maps=6,
        )
    except KeyError as error:
        raise click.BadParameter(str(error.args[0]), param_hint="--metrics/--method") from None
    for method, error in evaluation.failures.items():
        failures.add(f"method {method}", error)
    if targets is None:
        evaluation.notes.append(
            "targets: the predicted class (the dataset's labels are not all class names of the model)"
        )
    out_dir = Path(out)
    paths = evaluation.save(out_dir)
    report = Report(title)
    report.paragraph(
        f"Model {loaded.name}, dataset {dataset}: {evaluation.n_images} images"
        + ("" if evaluation.accuracy is None else f", accuracy {evaluation.accuracy:.3f}")
        + "."
    )
    report.table(evaluation.table())
    for note in evaluation.notes:
        report.paragraph(note, "note")
    for metric, by_method in evaluation.curves.items():
        for curve_name in next(iter(by_method.values())):
            if curve_name == "steps":
                continue
            figure = curve_figure(
                {m: (c["steps"], c[curve_name]) for m, c in by_method.items()},
                title=f"{metric}: {curve_name}",
                xlabel="step",
                ylabel=curve_name,
            )
            save_png(out_dir / f"curve_{metric}_{curve_name}.png", figure)
            report.figure(figure, f"{metric}, mean {curve_name} curve per method")
    shown_n = min(len(shown), 6)
    columns = {"ground truth": masks[:shown_n].float(), **evaluation.maps}
    report.figure(
        grid_figure(shown[:shown_n], columns, row_titles=names[:shown_n]),
        "The first images: the ground truth, then each method's map.",
    )
    if failures.items:
        report.heading("Inputs that failed")
        report.table(failures.items)
    report.save(out_dir / "report.html")
    click.echo(evaluation.markdown())
    click.echo(f"wrote {paths['summary']}, {paths['json']} and {out_dir / 'report.html'}")
    failures.exit(ctx)


@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@model_options
@click.option("--method", "method_text", default="gradcam", show_default=True, help="Method name(s), comma-separated.")
@click.option("--metrics", "metric_text", default="road,deletion,insertion,pointing_game,auprc", show_default=True)
@click.option("--layer", default=None)
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Reference images for DiffCAM (default: the dataset's own images).",
)
@click.option("--option", "option_items", multiple=True, metavar="METHOD.KEY=VALUE", help=OPTION_HELP)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--batch-size", default=8, show_default=True)
@click.pass_context
def evaluate(
    ctx,
    dataset,
    model_spec,
    weights,
    download,
    device,
    method_text,
    metric_text,
    layer,
    reference,
    option_items,
    out,
    batch_size,
) -> None:
    """Score methods with metrics on a dataset with ground truth: CSV/JSON tables, curves, report.html.

    \b
    DATASET: a folder of images with VOC .xml boxes, a CSV of boxes, or a folder with images/ + masks/.
    Example:
      whycam evaluate data/boxes.csv --model efficientnet-lite0 --method gradcam,scorecam \\
          --metrics road,deletion,insertion,pointing_game,auprc --out out/eval
    """
    _evaluate_command(
        ctx,
        dataset,
        model_spec,
        weights,
        download,
        device,
        _method_names(method_text),
        metric_text,
        layer,
        reference,
        option_items,
        out,
        batch_size,
        "whycam evaluate",
    )


@main.command()
@click.argument("dataset", type=click.Path(exists=True))
@model_options
@click.option("--layer", default=None)
@click.option(
    "--metrics",
    "metric_text",
    default=None,
    help="Metrics, comma-separated; default: every localisation and faithfulness metric.",
)
@click.option("--reference", default=None, type=click.Path(exists=True, file_okay=False))
@click.option("--option", "option_items", multiple=True, metavar="METHOD.KEY=VALUE", help=OPTION_HELP)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--batch-size", default=8, show_default=True)
@click.pass_context
def benchmark(
    ctx, dataset, model_spec, weights, download, device, layer, metric_text, reference, option_items, out, batch_size
) -> None:
    """Run every registered method on a dataset with ground truth; write the table (Markdown, CSV).

    \b
    Example:
      whycam benchmark data/masks/ --model digits-cnn --out out/benchmark
    """
    from .evaluate import DEFAULT_METRICS
    from .methods.base import methods

    _evaluate_command(
        ctx,
        dataset,
        model_spec,
        weights,
        download,
        device,
        list(methods()),
        metric_text or ",".join(DEFAULT_METRICS),
        layer,
        reference,
        option_items,
        out,
        batch_size,
        "whycam benchmark",
    )


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@click.option("--method", "method_text", default="gradcam", show_default=True)
@click.option("--layer", default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def sanity(ctx, images, model_spec, weights, download, device, method_text, layer, out, seed) -> None:
    """Model-randomisation sanity check: do the maps change when the weights do? (Adebayo, 2018)

    \b
    Example:
      whycam sanity photos/ --model efficientnet-lite0 --method gradcam,saliency --out out/sanity
    """
    from .evaluate import make_explainer
    from .metrics import sanity_check
    from .report import Report
    from .viz import curve_figure, save_png

    failures = Failures()
    names = _method_names(method_text)
    loaded = _load_model(model_spec, weights, download, device)
    layer = _check_layer(loaded, layer)
    _, _, inputs = _read_images(images, loaded.preprocess, failures)
    if not inputs:
        raise click.UsageError("no readable image among the inputs")
    batch = torch.stack(inputs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report("whycam sanity check")
    results = {}
    for method in tqdm(names, desc="sanity", unit="method"):

        def factory(model, method=method):
            return make_explainer(method, model, layer)

        checks = sanity_check(factory, loaded.model, batch, seed=seed)
        cascading = checks["cascading"]
        layers = cascading.settings["layers"]
        curves = {key: (list(range(len(layers))), value.nanmean(0).tolist()) for key, value in cascading.curves.items()}
        figure = curve_figure(
            curves,
            title=f"{method}: cascading randomisation (top layer first)",
            xlabel="layers randomised",
            ylabel="similarity to the original map",
        )
        save_png(out_dir / f"sanity_{method}.png", figure)
        passed = cascading.settings.get("passed")
        results[method] = {
            "passed": passed,
            "spearman_after_full_randomisation": cascading.value,
            "threshold": cascading.settings.get("threshold"),
            "layers": layers,
            "independent_mean_spearman": checks["independent"].value,
        }
        report.heading(method)
        report.paragraph(
            f"{'PASS' if passed else 'FAIL'}: mean Spearman correlation after randomising every "
            f"layer = {cascading.value:.3f} (passes below {cascading.settings.get('threshold')})."
        )
        report.figure(figure, f"{method}: similarity per randomisation step")
        click.echo(f"{method}: {'pass' if passed else 'FAIL'} (Spearman {cascading.value:.3f})")
    (out_dir / "sanity.json").write_text(json.dumps(results, indent=2))
    report.save(out_dir / "report.html")
    click.echo(f"wrote {out_dir / 'sanity.json'} and {out_dir / 'report.html'}")
    failures.exit(ctx)


if __name__ == "__main__":
    main()
