"""Results to files: one place for every output format of an explanation.

``write_explain(result, folder)`` writes, for each image i and method m that produced a map,
``{i}_{m}.npy`` (the (H, W) float32 map in [0, 1]), ``{i}_{m}.png`` (the overlay, when the run read
files and so has display images), ``summary.json`` (predictions, targets, the layer each method
actually read, the reference group, the time, the failures) and, with ``report=True``,
``report.html`` (through ``whycam.report``). ``write_evaluation`` and ``write_sanity`` do the same
for ``whycam evaluate``/``benchmark`` and ``whycam sanity``. A new output format is one more
function here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import Tensor

from .evaluate import Evaluation
from .inputs import Failure, GroundTruth
from .methods.visualize import displayable
from .metrics.result import MetricResult
from .models import Preprocess
from .report import Report
from .runs import ExplainResult
from .viz import curve_figure, grid_figure, overlay_figure, save_png


def stem(result: ExplainResult, index: int, method: str) -> str:
    """The file stem of image ``index``'s map by ``method``."""
    return f"{result.ids[index]}_{method}"


def title(result: ExplainResult, index: int, method: str) -> str:
    """The overlay's title: the question asked, or the class explained, or the method alone."""
    if method in result.asked:
        return f"{method}: {result.question} {result.asked[method][index]}"
    if result.needs_target.get(method) and result.targets is not None:
        return f"{method}: {result.class_name(int(result.targets[index]))}"
    return method


def entry(result: ExplainResult, index: int, method: str) -> dict[str, object]:
    """What ``summary.json`` says about image ``index`` explained by ``method``."""
    layers = result.layers.get(method, [])
    explained = result.needs_target.get(method) and result.targets is not None
    target = int(result.targets[index]) if explained else None
    named = result.target_text if result.needs_target.get(method) and result.targets is None else None
    return {
        "method": method,
        "layer": (layers[0] if len(layers) == 1 else layers) or None,
        "target": target if named is None else named,
        "target_name": None if target is None else result.class_name(target),
        "reference": result.references.get(method),
        "question": [result.question, result.asked[method][index]] if method in result.asked else None,
        "time_s": float(result.seconds[method][index]),
        "overlay": f"{stem(result, index, method)}.png" if result.display is not None else None,
        "map": f"{stem(result, index, method)}.npy",
    }


def summary(result: ExplainResult) -> dict[str, object]:
    """The run as JSON-ready data: one record per image, each method's entry where it produced a map."""
    records = []
    for i, image in enumerate(result.ids):
        record: dict[str, object] = {"image": image}
        if result.predictions is not None:
            p = int(result.predictions[i])
            record.update(prediction=p, prediction_name=result.class_name(p))
            record["probability"] = float(result.probabilities[i])
        record["results"] = [entry(result, i, m) for m in result.methods if bool(result.ok(m)[i])]
        records.append(record)
    used = {layer for layers in result.layers.values() for layer in layers}
    return {
        "model": result.name,
        "layer": next(iter(used)) if len(used) == 1 else None,
        "layers": result.layers,
        "methods": result.methods,
        "images": records,
        "failures": [failure.as_dict() for failure in result.failures],
    }


def write_maps(result: ExplainResult, folder: Path) -> None:
    """``{image}_{method}.npy`` for every map, and its overlay ``.png`` where display images exist."""
    for method in result.methods:
        ok = result.ok(method)
        for i in range(len(result.ids)):
            if not ok[i]:
                continue
            saliency = result.maps[method][i]
            np.save(folder / f"{stem(result, i, method)}.npy", saliency.numpy().astype(np.float32))
            if result.display is not None:
                figure = overlay_figure(result.display[i], saliency, title(result, i, method))
                save_png(folder / f"{stem(result, i, method)}.png", figure)


def _stride_note(stride: tuple[float, float] | None) -> str:
    return "" if stride is None else f", {stride[0]:g}×{stride[1]:g} px"


def write_report(result: ExplainResult, path: Path) -> Path:
    """``report.html``: the grid of overlays (methods with a map for every image), predictions, failures."""
    report = Report(f"whycam: {result.name}")
    complete = {m: result.maps[m] for m in result.methods if bool(result.ok(m).all())}
    if complete and result.display is not None:
        rows = list(result.ids)
        if result.predictions is not None:
            rows = [
                f"{image}\n{result.class_name(int(p))} ({float(q):.2f})"
                for image, p, q in zip(result.ids, result.predictions, result.probabilities, strict=True)
            ]
        notes = {
            m: f"{float(result.seconds[m].mean()) * 1000:.0f} ms/img{_stride_note(result.strides.get(m))}"
            for m in complete
        }
        report.figure(
            grid_figure(result.display, complete, row_titles=rows, column_notes=notes),
            "Images down, methods across; under each method its time per image and its stride (input pixels "
            "per map cell: the finest detail the map can place).",
            wide=True,
        )
    for method, reference in result.references.items():
        report.paragraph(f"{method}: reference group = {reference}.")
    for method, layers in result.layers.items():
        if layers:
            report.paragraph(f"{method}: layer {', '.join(layers)}.")
    images = summary(result)["images"]
    report.table(
        [
            {"image": r["image"], "prediction": r.get("prediction_name"), "probability": r.get("probability")}
            for r in images
        ]
    )
    _failure_section(report, result.failures)
    return report.save(path)


def write_explain(result: ExplainResult, folder: str | Path, *, report: bool = False) -> dict[str, Path]:
    """Maps, overlays, ``summary.json`` and (``report=True``) ``report.html`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_maps(result, folder)
    paths = {"summary": folder / "summary.json"}
    paths["summary"].write_text(json.dumps(summary(result), indent=2, default=str))
    if report:
        paths["report"] = write_report(result, folder / "report.html")
    return paths


def _failure_section(report: Report, failures: list[Failure]) -> None:
    if failures:
        report.heading("Inputs that failed")
        report.table([failure.as_dict() for failure in failures])


def write_curves(evaluation: Evaluation, folder: Path, report: Report) -> None:
    """``curve_{metric}_{curve}.png``: each curve metric's mean curve per method, also in ``report``."""
    for metric, by_method in evaluation.curves.items():
        for curve in [name for name in next(iter(by_method.values())) if name != "steps"]:
            figure = curve_figure(
                {method: (c["steps"], c[curve]) for method, c in by_method.items()},
                title=f"{metric}: {curve}",
                xlabel="step",
                ylabel=curve,
            )
            save_png(folder / f"curve_{metric}_{curve}.png", figure)
            report.figure(figure, f"{metric}, mean {curve} curve per method")


def write_evaluation(
    evaluation: Evaluation, folder: str | Path, *, title: str, about: str, truth: GroundTruth, failures: list[Failure]
) -> dict[str, Path]:
    """The tables (``Evaluation.save``), the curves and ``report.html`` of an evaluation."""
    folder = Path(folder)
    paths = evaluation.save(folder)
    report = Report(title)
    accuracy = "" if evaluation.accuracy is None else f", accuracy {evaluation.accuracy:.3f}"
    report.paragraph(f"{about}: {evaluation.n_images} images{accuracy}.")
    report.table(evaluation.table())
    for note in evaluation.notes:
        report.paragraph(note, "note")
    write_curves(evaluation, folder, report)
    shown = min(len(truth.display), 6)
    columns = {"ground truth": truth.masks[:shown].float(), **{m: v[:shown] for m, v in evaluation.maps.items()}}
    report.figure(
        grid_figure(truth.display[:shown], columns, row_titles=truth.names[:shown]),
        "The first images: the ground truth, then each method's map (strides in the table above).",
        wide=True,
    )
    _failure_section(report, failures)
    paths["report"] = report.save(folder / "report.html")
    return paths


def sanity_record(checks: dict[str, MetricResult]) -> dict[str, object]:
    """What ``sanity.json`` says about one method: the verdict, the score, the layers randomised."""
    cascading = checks["cascading"]
    return {
        "passed": cascading.settings.get("passed"),
        "spearman_after_full_randomisation": cascading.value,
        "threshold": cascading.settings.get("threshold"),
        "layers": cascading.settings["layers"],
        "independent_mean_spearman": checks["independent"].value,
    }


def write_sanity(results: dict[str, dict[str, MetricResult]], folder: str | Path) -> dict[str, Path]:
    """``sanity_{method}.png`` (similarity per randomisation step), ``sanity.json`` and ``report.html``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = Report("whycam sanity check")
    for method, checks in results.items():
        cascading, record = checks["cascading"], sanity_record(checks)
        steps = list(range(len(record["layers"])))
        figure = curve_figure(
            {key: (steps, value.nanmean(0).tolist()) for key, value in cascading.curves.items()},
            title=f"{method}: cascading randomisation (top layer first)",
            xlabel="layers randomised",
            ylabel="similarity to the original map",
        )
        save_png(folder / f"sanity_{method}.png", figure)
        report.heading(method)
        report.paragraph(
            f"{'PASS' if record['passed'] else 'FAIL'}: mean Spearman correlation after randomising every "
            f"layer = {cascading.value:.3f} (passes below {record['threshold']})."
        )
        report.figure(figure, f"{method}: similarity per randomisation step")
    paths = {"json": folder / "sanity.json", "report": folder / "report.html"}
    paths["json"].write_text(json.dumps({m: sanity_record(c) for m, c in results.items()}, indent=2))
    report.save(paths["report"])
    return paths


def write_class_models(
    images: Tensor, names: list[str], indices: list[int], preprocess: Preprocess, folder: str | Path
) -> list[Path]:
    """Class model images (``whycam.visualize_class``) as ``class_<index>_<name>.png``, the model's
    normalisation undone and stretched to the full range (``displayable``)."""
    pictures = displayable(images.cpu(), preprocess.mean, preprocess.std)
    paths = []
    for index, name, picture in zip(indices, names, pictures, strict=True):
        array = (picture.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        paths.append(save_png(Path(folder) / f"class_{index}_{safe}.png", array))
    return paths
