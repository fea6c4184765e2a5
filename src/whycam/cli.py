"""The ``whycam`` command: demo, explain, reference build/info, evaluate, sanity, methods, benchmark, visualize.

Each command parses its options, calls the run loop (``whycam.runs``, ``whycam.evaluate``,
``whycam.metrics.sanity_check``) and hands the result to ``whycam.writers``.

Exit codes: 0 everything worked; 1 some inputs failed (each reported by name) but every other
result was written; 2 usage error (bad option, unknown method, model or layer, unusable reference,
nothing to process: every ``WhycamError``); 3 whycam crashed (a bug: the traceback is printed).
"""

from __future__ import annotations

import ast
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
import torch

from . import __version__
from .data import load_target_file
from .demo import run as run_demo
from .engines import build_reference
from .engines.cli import engine_options, evaluate_files, explain_files
from .errors import UsageError, WhycamError
from .evaluate import DEFAULT_METRICS
from .evaluate import evaluate as evaluate_methods
from .explorer import Explorer
from .inputs import Failure, read_ground_truth, read_inputs, read_reference
from .methods.base import methods
from .methods.factory import create
from .methods.visualize import visualize_class
from .metrics.sanity import method_factory, sanity_check
from .models import LoadedModel, load_model
from .reference import ReferenceBank
from .runs import QUESTIONS, Runner
from .targets import parse_target
from .writers import write_class_models, write_evaluation, write_explain, write_sanity

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3


class WhycamGroup(click.Group):
    """The command group: a ``WhycamError`` is a usage error (exit 2, its message on stderr); any other
    exception is a crash (exit 3, with the traceback), never confused with exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WhycamError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_USAGE)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:  # noqa: BLE001 (the crash exit code)
            click.echo(traceback.format_exc(), err=True)
            click.echo("whycam crashed: this is a bug; please report it with the traceback above.", err=True)
            ctx.exit(EXIT_CRASH)


def _load_model(spec: str, weights: str | None, download: bool, device: str = "cpu") -> LoadedModel:
    """The model, moved to ``device``; its preprocessing then puts every input there too."""
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
    loaded = load_model(spec, weights, download=download)
    loaded.model.to(where)
    loaded.preprocess = replace(loaded.preprocess, device=str(where))
    return loaded


def _method_names(text: str) -> list[str]:
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


def _applicable(names: list[str], text: str, model) -> list[str]:
    """``--method all`` means every method that applies to the model (attention methods need a transformer)."""
    registry = methods()
    return [n for n in names if registry[n].applies(model)] if text.strip() == "all" else names


def _target(target: str | None, loaded: LoadedModel):
    """``--target``: a class index or name, or a named target ``KIND:VALUE`` (``targets.parse_target``)."""
    if target is None:
        return None
    try:
        kind, _, value = target.partition(":")
        if kind == "versus":  # class names, as --target takes them
            target = "versus:" + ",".join(str(loaded.class_index(v.strip())) for v in value.split(","))
        return parse_target(target, load_target_file) if ":" in target else loaded.class_index(target)
    except (ValueError, OSError) as error:
        raise click.BadParameter(str(error), param_hint="--target") from None


def _parse_value(text: str) -> object:
    """A Python literal (number, bool, None, tuple) where the text is one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _method_options(items: Sequence[str], names: Sequence[str], model) -> dict[str, dict]:
    """``{method: options}`` of every method run, from ``--option METHOD.KEY=VALUE`` items; each method
    with options is built once here, so an unknown key or a bad value stops the command before any work."""
    options: dict[str, dict] = {name: {} for name in names}
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
        options[method][key] = _parse_value(text.strip())
    for method, settings in options.items():
        try:
            if settings:
                create(method, model, **settings)
        except (ValueError, TypeError) as error:
            raise click.BadParameter(f"{method}: {error}", param_hint="--option") from None
    return options


def _exit_with_failures(ctx: click.Context, failures: Sequence[Failure]) -> None:
    """Name every input that failed on stderr, then exit 1 if there was any (the rest was written)."""
    for failure in failures:
        item = failure.as_dict()
        click.echo(f"whycam: skipped {item['input']}: {item['error']}", err=True)
    if failures:
        click.echo(f"whycam: {len(failures)} input(s) failed; the other results were written.", err=True)
        ctx.exit(EXIT_PARTIAL)


def _echo_layers(layers: dict[str, list[str]]) -> None:
    """Say which layer each method read (the automatic choice included)."""
    for method, names in layers.items():
        if names:
            click.echo(f"{method}: layer {', '.join(names)}", err=True)


OPTION_HELP = (
    "A method's option as METHOD.KEY=VALUE, repeatable, e.g. diffcam.shrinkage=ledoit-wolf, "
    "diffcam.k=50, rise.masks=2000, smoothgrad.explainer=gradcam (the keyword arguments of its class)."
)

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


@click.group(cls=WhycamGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="whycam")
def main() -> None:
    """whycam: saliency maps that say why a vision model decides as it does.

    \b
    Start with:  whycam demo --out out/demo
    List methods: whycam methods
    """


@main.command("methods")
def list_methods() -> None:
    """List every registered method with a one-line description and what it declares it needs.

    \b
    Example:
      whycam methods
    """
    for name, cls in methods().items():
        needs = "target" if cls.needs_target else "no target"
        grad = "gradient" if cls.uses_gradient else "no gradient"
        layer = ", layer" if cls.needs_layer else ""
        reference = ", reference group" if cls.needs_reference else ""
        click.echo(f"{name:24s} {cls.summary}  [{needs}, {grad}{layer}{reference}]")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@click.option("--quick", is_flag=True, help="Two photographs and fewer methods (for a smoke test).")
def demo(out: str, quick: bool) -> None:
    """Run the demo: EfficientNet-Lite0 on real photographs and the digits CNN, every main method,
    into a self-contained HTML report.

    \b
    Example:
      whycam demo --out out/demo
    """
    click.echo(str(run_demo(Path(out), quick=quick)))


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
    help="Class index or name (default: the predicted class), or a named target KIND:VALUE: versus:3,5 "
    "(why 3, not 5: y3 - y5; FinerCAM compares 3 with 5 alone) | labels:3,5 | "
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
@engine_options()
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
    engine,
) -> None:
    """Explain IMAGES (files or folders): overlays (PNG), raw maps (.npy) and summary.json; with
    --engine local|ray, shards of maps and rows + manifest.json (read back by whycam.load_run).

    \b
    Examples:
      whycam explain photos/ --model efficientnet-lite0 --method gradcam,diffcam \\
          --reference references/ --out out/explain --report
      whycam explain threes/ --model digits-cnn --method diffcam --reference digits_bank.safetensors \\
          --question why-not --versus 5 --option diffcam.shrinkage=ledoit-wolf --out out/why_not_5
      whycam explain archive/ --model digits-cnn --method gradcam --engine local --workers 4 --out out/archive
    """
    loaded = _load_model(model_spec, weights, download, device)
    names = _applicable(_method_names(method_text), method_text, loaded.model)
    options = _method_options(option_items, names, loaded.model)
    target_index = _target(target, loaded)
    runner = Runner(
        loaded, options, layer=layer, reference=reference, question=question, versus=versus, batch_size=batch_size
    )
    if engine.streams:
        return explain_files(ctx, runner, images, target_index, out, engine)
    result = runner.explain(list(images), target_index, progress=True)
    _echo_layers(result.layers)
    paths = write_explain(result, out, report=report)
    if report:
        click.echo(str(paths["report"]))
    click.echo(f"wrote {paths['summary']}")
    _exit_with_failures(ctx, result.failures)


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
@engine_options(("local", "ray"), "local")
@click.pass_context
def reference_build(ctx, folders, model_spec, weights, download, device, layer, per_class, out, batch_size, engine):
    """Summarise reference images (count, sum, sum of outer products) for DiffCAM, streamed: the images
    are read by --workers processes (or Ray actors) and never held in memory together.

    \b
    Examples:
      whycam reference build healthy/ --model efficientnet-lite0 --out healthy.safetensors
      whycam reference build train/ --per-class --model digits-cnn --out digits_bank.safetensors
      whycam reference build archive/ --model digits-cnn --engine ray --ray-address HEAD:6379 --out bank.safetensors
    """
    loaded = _load_model(model_spec, weights, download, device)
    try:
        stats, unreadable = build_reference(
            loaded, folders, layer=layer or loaded.layer, per_class=per_class, engine=engine.name,
            batch_size=batch_size, workers=engine.workers, address=engine.address, num_actors=engine.num_actors,
            shard_size=engine.shard_size,
        )  # fmt: skip
    except ValueError as error:
        if isinstance(error, WhycamError):
            raise
        raise UsageError(f"cannot build the reference: {error}") from None
    failures = [Failure([path], error) for path, error in unreadable]
    path = stats.save(out)
    click.echo(f"wrote {path}: {stats!r}")
    _exit_with_failures(ctx, failures)


@reference.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def reference_info(file: str) -> None:
    """Describe a reference statistics file (or per-class bank).

    \b
    Example:
      whycam reference info healthy.safetensors
    """
    try:
        stats, _ = read_reference(file, None, [])
    except (ValueError, KeyError, OSError) as error:
        raise click.BadParameter(f"{file} is not a whycam reference file: {error}", param_hint="FILE") from None
    groups = dict(stats.classes) if isinstance(stats, ReferenceBank) else {"(all)": stats}
    click.echo(f"{file}: {stats!r}")
    for key, value in sorted(stats.meta.items()):
        click.echo(f"  {key}: {value}")
    if len(groups) > 1:
        for label, group in groups.items():
            click.echo(f"  class {label}: {group.count_} images")


def _evaluate_command(ctx, dataset, model_spec, weights, download, device, names, metric_text, rest, title) -> None:
    """``whycam evaluate`` and ``whycam benchmark``: read the dataset, evaluate, write."""
    layer, reference, option_items, out, batch_size = rest
    failures: list[Failure] = []
    loaded = _load_model(model_spec, weights, download, device)
    options = _method_options(option_items, names, loaded.model)
    truth = read_ground_truth(dataset, loaded, failures)
    evaluation = evaluate_methods(
        loaded.model,
        truth.inputs,
        truth.targets,
        methods=options,
        metrics=[m.strip() for m in metric_text.split(",") if m.strip()],
        masks=truth.masks,
        boxes=truth.boxes,
        labels=truth.targets,
        names=truth.names,
        layer=layer or loaded.layer,
        preprocess=loaded.preprocess,
        reference=reference,
        batch_size=batch_size,
        skip_failures=True,
        keep_maps=6,
    )
    failures += [Failure([f"method {method}"], error) for method, error in evaluation.failures.items()]
    if truth.targets is None:
        evaluation.notes.append(
            "targets: the predicted class (the dataset's labels are not all class names of the model)"
        )
    about = f"Model {loaded.name}, dataset {dataset}"
    paths = write_evaluation(evaluation, out, title=title, about=about, truth=truth, failures=failures)
    click.echo(evaluation.markdown())
    click.echo(f"wrote {paths['summary']}, {paths['json']} and {paths['report']}")
    _exit_with_failures(ctx, failures)


EVALUATE_OPTIONS = [
    click.argument("dataset", type=click.Path(exists=True)),
    *MODEL_OPTIONS,
    click.option("--layer", default=None),
    click.option(
        "--reference",
        default=None,
        type=click.Path(exists=True),
        help="DiffCAM's reference group: a folder of images or a statistics file (default: the dataset's own images).",
    ),
    click.option("--option", "option_items", multiple=True, metavar="METHOD.KEY=VALUE", help=OPTION_HELP),
    click.option("--out", type=click.Path(file_okay=False), required=True),
    click.option("--batch-size", default=8, show_default=True),
]


def evaluate_options(function):
    for option in reversed(EVALUATE_OPTIONS):
        function = option(function)
    return function


@main.command()
@evaluate_options
@click.option("--method", "method_text", default="gradcam", show_default=True, help="Method name(s), comma-separated.")
@click.option("--metrics", "metric_text", default="road,deletion,insertion,pointing_game,auprc", show_default=True)
@engine_options()
@click.pass_context
def evaluate(
    ctx,
    dataset,
    model_spec,
    weights,
    download,
    device,
    layer,
    reference,
    option_items,
    out,
    batch_size,
    method_text,
    metric_text,
    engine,
):
    """Score methods with metrics on a dataset with ground truth: CSV/JSON tables, curves, report.html.

    \b
    DATASET: a folder of images with VOC .xml boxes, a CSV of boxes, or a folder with images/ + masks/.
    Example:
      whycam evaluate data/boxes.csv --model efficientnet-lite0 --method gradcam,scorecam \\
          --metrics road,deletion,insertion,pointing_game,auprc --out out/eval
    With --engine local|ray every image is scored as it streams past (DiffCAM then needs --reference)
    and the intervals are computed once at the end; the tables are those of the in-memory run.
    """
    rest = (layer, reference, option_items, out, batch_size)
    names = _method_names(method_text)
    if engine.streams:
        loaded = _load_model(model_spec, weights, download, device)
        options = _method_options(option_items, names, loaded.model)
        runner = Runner(loaded, options, layer=layer, reference=reference, batch_size=batch_size)
        metrics = [m.strip() for m in metric_text.split(",") if m.strip()]
        return evaluate_files(ctx, runner, dataset, loaded, metrics, out, engine)
    _evaluate_command(ctx, dataset, model_spec, weights, download, device, names, metric_text, rest, "whycam evaluate")


@main.command()
@evaluate_options
@click.option(
    "--metrics",
    "metric_text",
    default=",".join(DEFAULT_METRICS),
    show_default=True,
    help="Metrics, comma-separated; default: every localisation and faithfulness metric.",
)
@click.pass_context
def benchmark(
    ctx, dataset, model_spec, weights, download, device, layer, reference, option_items, out, batch_size, metric_text
):
    """Run every registered method on a dataset with ground truth; write the table (Markdown, CSV).

    Methods that explain transformers only (LeGrad) are left out: name them with whycam evaluate.

    \b
    Example:
      whycam benchmark data/masks/ --model digits-cnn --out out/benchmark
    """
    rest = (layer, reference, option_items, out, batch_size)
    _evaluate_command(
        ctx,
        dataset,
        model_spec,
        weights,
        download,
        device,
        [name for name, cls in methods().items() if not cls.needs_attention],
        metric_text,
        rest,
        "whycam benchmark",
    )


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@click.option("--method", "method_text", default="gradcam", show_default=True)
@click.option("--layer", default=None)
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True),
    help="DiffCAM's reference group (a folder of images or a statistics file), fitted again on each randomised model.",
)
@click.option("--option", "option_items", multiple=True, metavar="METHOD.KEY=VALUE", help=OPTION_HELP)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def sanity(ctx, images, model_spec, weights, download, device, method_text, layer, reference, option_items, out, seed):
    """Model-randomisation sanity check: do the maps change when the weights do? (Adebayo, 2018)

    \b
    Example:
      whycam sanity photos/ --model efficientnet-lite0 --method gradcam,saliency --out out/sanity
      whycam sanity digits/ --model digits-cnn --method diffcam --reference references/ --out out/sanity
    """
    names = _method_names(method_text)
    loaded = _load_model(model_spec, weights, download, device)
    options = _method_options(option_items, names, loaded.model)
    failures: list[Failure] = []
    inputs = [model_input for _, _, model_input in read_inputs(images, loaded.preprocess, failures)]
    if not inputs:
        raise UsageError("no readable image among the inputs")
    group = None if reference is None else read_reference(reference, loaded.preprocess, failures)[0]
    results = {}
    for method in names:
        factory = method_factory(method, options[method], layer=layer or loaded.layer, reference=group)
        results[method] = sanity_check(factory, loaded.model, torch.stack(inputs), seed=seed)
        cascading = results[method]["cascading"]
        click.echo(f"{method}: {'pass' if cascading.settings['passed'] else 'FAIL'} (Spearman {cascading.value:.3f})")
    paths = write_sanity(results, out)
    click.echo(f"wrote {paths['json']} and {paths['report']}")
    _exit_with_failures(ctx, failures)


@main.command("app")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every interface).")
@click.option("--port", default=7860, show_default=True)
@click.option("--model", "model_spec", default=None, help="A model besides the demo ones (a spec as for explain).")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False), help="Weights of --model.")
@click.option("--device", default="cpu", show_default=True, help="Where --model runs: cpu, cuda, cuda:1, mps.")
@click.option("--images", default=None, type=click.Path(exists=True, file_okay=False), help="A folder of images.")
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True),
    help="DiffCAM's reference group for --model: a folder of images or a statistics file.",
)
@click.option(
    "--bank",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Per-class statistics for --model (whycam reference build --per-class): DiffCAM's why / why-not / unusual.",
)
def app(host, port, model_spec, weights, device, images, reference, bank) -> None:
    """The explorer: an interactive page in the browser (needs: pip install 'whycam[app]')."""
    try:
        from .app import launch  # noqa: PLC0415 (the optional extra whycam[app]: imported by this command only)
    except ImportError as error:
        raise click.UsageError(f"the explorer needs the app extra: pip install 'whycam[app]' ({error})") from None
    loaded = None if model_spec is None else _load_model(model_spec, weights, False, device)
    explorer = Explorer.launched(loaded, images=images, reference=reference, bank=bank)
    click.echo(f"whycam explorer on http://{host}:{port}/ (Ctrl+C to stop)")
    launch(explorer, host=host, port=port)


@main.command()
@model_options
@click.option("--class", "classes", multiple=True, required=True, help="Class index or name (repeat for several).")
@click.option("--size", type=int, default=None, help="Image side in pixels; default: the model's input crop.")
@click.option("--steps", default=200, show_default=True, help="Gradient-ascent steps.")
@click.option("--lr", default=0.3, show_default=True, help="Ascent step size.")
@click.option("--l2", default=0.05, show_default=True, help="lambda of the L2 penalty lambda ||I||^2.")
@click.option("--jitter", default=0, show_default=True, help="Random shift (pixels) before each step.")
@click.option("--blur", "blur_sigma", default=0.0, show_default=True, help="Gaussian blur sigma (0: none).")
@click.option("--blur-every", default=4, show_default=True, help="Blur every N steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
def visualize(
    model_spec, weights, download, device, classes, size, steps, lr, l2, jitter, blur_sigma, blur_every, seed, out
) -> None:
    """Class model visualisation: the image that maximises a class score (Simonyan et al., 2014).

    Writes one PNG per class, named class_<index>_<name>.png: the optimum of S_c(I) - l2 ||I||^2
    found by gradient ascent from the mean image, in the model's input space, shown with the
    model's normalisation undone and stretched to the full grey/colour range.

    \b
    Example:
      whycam visualize --model efficientnet-lite0 --class tabby --class 967 --jitter 8 --blur 1 --out out/vis
    """
    loaded = _load_model(model_spec, weights, download, device)
    try:
        indices = [loaded.class_index(c) for c in classes]
        side = (size, size) if size else tuple(loaded.preprocess.crop or (224, 224))
        settings = {"steps": steps, "lr": lr, "l2": l2, "jitter": jitter, "blur_sigma": blur_sigma}
        images = visualize_class(
            loaded.model,
            indices,
            size=side,
            channels=loaded.preprocess.channels,
            **settings,
            blur_every=blur_every,
            seed=seed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    for path in write_class_models(images, [loaded.class_name(i) for i in indices], indices, loaded.preprocess, out):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
