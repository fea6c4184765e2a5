"""The run loop under every command: images in, maps, predictions and timings out.

``Runner(model, methods, ...)`` builds each explainer once (``create``), fits those that declare
``needs_reference`` (DiffCAM) on the reference group once, and ``explain_batch(images)`` runs one
batch through every method. Everything else streams batches through it: ``Runner.iter_batches`` (for an
engine over a dataset), ``explain`` (the whole set, accumulated in an ``ExplainResult``),
``whycam.evaluate.evaluate`` (maps scored against ground truth) and the CLI.

A batch runs with the model in eval mode and under ``preserved``: the caller's model comes back as
it was (mode, flags, hooks, running statistics), and the global random generator is never reseeded
(every method draws from its own seeded generator). An exception in one method is recorded as a
``Failure`` of that method on those inputs; the other methods still run.

::

    result = explain(load_model("digits-cnn"), ["threes/"], ["gradcam", "diffcam"], reference="refs/")
    result.maps["gradcam"]   # (N, H, W) float32 in [0, 1], NaN rows where the method failed
    result.layers            # {"gradcam": ["features.4"], "diffcam": ["features.4"]}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import InputError, ModelError, ReferenceGroupError, UsageError, WhycamError
from .inputs import Failure, Images, batch_targets, input_batches, read_reference
from .layers import resolve_layers
from .methods.base import Explainer, check_images, normalize_sign
from .methods.diffcam import DiffCAM
from .methods.factory import create, option_names
from .models import LoadedModel, Preprocess
from .reference import ReferenceBank, ReferenceStats
from .taps import preserved
from .targets import OutputSelector, Target, describe_target, select_output, target_classes

log = logging.getLogger("whycam")

QUESTIONS = ("why", "why-not", "unusual")
MethodSpec = str | Sequence[str] | Mapping[str, Mapping[str, object]]


@dataclass
class Explained:
    """What a run gives for its rows (one batch, or every batch together).

    ``maps[m]``: (B, H, W) float32 in [0, 1] on the CPU for method m; ``raw[m]``: the signed maps at
    the method's resolution (with ``keep_raw``); ``predictions``, ``probabilities``: the predicted
    class and its softmax probability (None when the selected output is not (B, classes));
    ``targets``: the classes explained (None for a callable target); ``layers[m]``: the layers
    method m read; ``strides[m]``: its map's input pixels per map cell, (rows, columns);
    ``asked[m]``: per image, the bank label DiffCAM's question was asked against;
    ``failures``: unreadable files and failed method batches; ``display``: the images the maps are
    drawn on (files only).
    """

    ids: list[str] = field(default_factory=list)
    maps: dict[str, Tensor] = field(default_factory=dict)
    raw: dict[str, Tensor] = field(default_factory=dict)
    predictions: Tensor | None = None
    probabilities: Tensor | None = None
    targets: Tensor | None = None
    target_text: str | None = None
    layers: dict[str, list[str]] = field(default_factory=dict)
    strides: dict[str, tuple[float, float]] = field(default_factory=dict)
    asked: dict[str, list[object]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    display: list[Tensor] | None = None


@dataclass
class BatchResult(Explained):
    """One batch through every method: a map for each method that succeeded on it, ``seconds[m]``
    its time for the batch, ``labels`` those the batch came with (a DataLoader's)."""

    seconds: dict[str, float] = field(default_factory=dict)
    labels: object = None


@dataclass
class ExplainResult(Explained):
    """Every batch of a run together; rows follow ``ids``.

    ``maps[m]`` (N, H, W), NaN rows where method m failed (``ok(m)`` says which rows hold a map);
    ``seconds[m]`` (N,) the time per image; ``references[m]`` describes the reference group of a
    DiffCAM-like method; ``needs_target[m]`` the method's declared capability.
    """

    methods: list[str] = field(default_factory=list)
    seconds: dict[str, Tensor] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    needs_target: dict[str, bool] = field(default_factory=dict)
    question: str | None = None
    versus: object = None
    classes: list[str] | None = None
    name: str = ""

    def ok(self, method: str) -> Tensor:
        """(N,) bool: the rows where ``method`` produced a map."""
        if method not in self.maps:
            return torch.zeros(len(self.ids), dtype=torch.bool)
        return ~self.maps[method].flatten(1).isnan().any(1)

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index as text."""
        return self.classes[index] if self.classes is not None and 0 <= index < len(self.classes) else str(index)


def describe(reference: object) -> str:
    """A short description of a reference group given in Python."""
    if isinstance(reference, Tensor):
        return f"{reference.shape[0]} images"
    if isinstance(reference, (ReferenceStats, ReferenceBank)):
        return repr(reference)
    return type(reference).__name__


def bank_label(bank: ReferenceBank, target: object, classes: Sequence[str] | None) -> object:
    """The bank's label of a class given by index or name: the labels may be class indices, indices
    as text (folder names such as "5"), or the model's class names."""
    candidates = [target, str(target)]
    index = None
    if isinstance(target, int) or str(target).lstrip("-").isdigit():
        index = int(target)
    elif classes is not None and str(target).lower() in [c.lower() for c in classes]:
        index = [c.lower() for c in classes].index(str(target).lower())
    if index is not None:
        candidates += [index, str(index)] + ([classes[index]] if classes and 0 <= index < len(classes) else [])
    for candidate in candidates:
        if candidate in bank.classes:
            return candidate
    raise UsageError(f"the reference bank has no class {target!r}; its classes: {', '.join(map(str, bank.labels))}")


def ask(explainer: DiffCAM, question: str, images: Tensor, labels: list, versus: object, raw: bool) -> Tensor:
    """DiffCAM's bank question for every image of a batch; images with the same label asked together."""
    if question == "why-not":
        return explainer.why_not(images, versus, raw=raw)
    method = explainer.why if question == "why" else explainer.unusual
    maps = None
    for label in dict.fromkeys(labels):
        rows = [i for i, other in enumerate(labels) if other == label]
        part = method(images[rows], label, raw=raw)
        maps = part.new_zeros((len(images), *part.shape[1:])) if maps is None else maps
        maps[rows] = part
    return maps


# --------------------------------------------------------------------------------------------- the loop
def method_options(methods: MethodSpec) -> dict[str, dict[str, object] | Explainer]:
    """``"gradcam,diffcam"``, ``["gradcam"]`` or ``{"rise": {"masks": 500}}`` as ``{name: options}``
    (a ready ``Explainer`` as a value is used as it is)."""
    if isinstance(methods, str):
        methods = [name.strip() for name in methods.split(",") if name.strip()]
    if isinstance(methods, Mapping):
        return {name: o if isinstance(o, Explainer) else dict(o or {}) for name, o in methods.items()}
    names = list(methods)
    if not names:
        raise UsageError("no method given; see `whycam methods`")
    return {name: {} for name in names}


class Runner:
    """Explainers built once, fitted once, called batch after batch (see the module docstring).

    ``model``: an ``nn.Module`` or a ``LoadedModel`` (which also gives ``preprocess``, the class
    names and the default layer). ``methods``: names or ``{name: options}``. ``layer``: for the
    methods that declare ``needs_layer`` (default: automatic, then recorded in ``layers``).
    ``output``: the output selector, for the predictions and the methods that take one.
    ``reference``: the reference group of the methods that declare ``needs_reference``: images, a
    DataLoader or iterable of batches, ``ReferenceStats``/``ReferenceBank``, a statistics file or a
    folder of images. ``question``/``versus``: DiffCAM's question to a per-class bank.
    ``keep_raw``: keep the signed maps too; ``strict``: a failing method raises instead of being
    recorded as a ``Failure``.
    """

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        methods: MethodSpec,
        *,
        layer: str | nn.Module | None = None,
        output: OutputSelector = None,
        preprocess: Preprocess | None = None,
        reference: object = None,
        question: str | None = None,
        versus: object = None,
        device: str | torch.device | None = None,
        classes: Sequence[str] | None = None,
        batch_size: int = 8,
        keep_raw: bool = False,
        strict: bool = False,
    ):
        if isinstance(model, LoadedModel):
            layer = model.layer if layer is None else layer
            preprocess = model.preprocess if preprocess is None else preprocess
            classes = model.classes if classes is None else classes
            self.name = model.name
            model = model.model
        else:
            self.name = type(model).__name__
        if not isinstance(model, nn.Module):
            raise UsageError(f"model must be a torch.nn.Module or a LoadedModel, not {type(model).__name__}")
        if question is not None and question not in QUESTIONS:
            raise UsageError(f"unknown question {question!r}; ask one of {', '.join(QUESTIONS)}")
        if (question == "why-not") != (versus is not None):
            raise UsageError("the question why-not and versus=CLASS go together")
        self.model, self.output, self.preprocess, self.classes = model, output, preprocess, classes
        self.batch_size, self.keep_raw, self.question, self.strict = batch_size, keep_raw, question, strict
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.failures: list[Failure] = []
        given = method_options(methods)
        self.explainers = {
            name: options if isinstance(options, Explainer) else self._build(name, options, layer)
            for name, options in given.items()
        }
        self.references = {  # ready explainers come fitted
            name: self._fit(name, explainer, reference)
            for name, explainer in self.explainers.items()
            if explainer.needs_reference and not isinstance(given[name], Explainer)
        }
        self.versus = self._check_question(versus)
        self._logged: set[str] = set()

    def _build(self, name: str, options: dict[str, object], layer: object) -> Explainer:
        accepted = option_names(name, options)
        defaults = {"layer": layer, "output": self.output}
        options = {**{k: v for k, v in defaults.items() if k in accepted and v is not None}, **options}
        try:
            explainer = create(name, self.model, **options)
        except (ValueError, TypeError) as error:
            if isinstance(error, WhycamError):
                raise
            raise UsageError(f"{name}: {error}") from error
        if explainer.needs_layer and options.get("layer") is not None:
            resolve_layers(self.model, options["layer"], None)  # an unknown layer stops the run here
        if explainer.needs_layer and isinstance(self.model, torch.jit.ScriptModule):
            raise ModelError(
                f"{name} reads a layer through hooks, which TorchScript models do not support; use a gradient "
                "or perturbation method (see `whycam methods`), or load the model as module:function"
            )
        return explainer

    def _fit(self, name: str, explainer: Explainer, reference: object) -> str:
        if reference is None:
            raise ReferenceGroupError(
                f"{name} answers against a reference group: pass reference= (--reference DIR|STATS: a folder "
                "of images or a statistics file from `whycam reference build`; in Python also images or a DataLoader)"
            )
        try:
            given, description = (
                read_reference(reference, self.preprocess, self.failures)
                if isinstance(reference, (str, Path))
                else (reference, describe(reference))
            )
            if isinstance(given, Tensor):
                given = given.to(self.device)
            explainer.fit(given, batch_size=self.batch_size)
        except (ValueError, KeyError, OSError, TypeError) as error:
            if isinstance(error, (UsageError, ReferenceGroupError)):
                raise
            raise ReferenceGroupError(f"cannot use reference {reference}: {error}") from error
        return description

    def _check_question(self, versus: object) -> object:
        """Check the question against the fitted banks; ``versus`` as the banks' own label."""
        if self.question is None:
            return None
        asked = [name for name, explainer in self.explainers.items() if explainer.needs_reference]
        if not asked:
            raise UsageError("a question is DiffCAM's: add diffcam to the methods")
        for name in asked:
            explainer = self.explainers[name]
            if not isinstance(explainer, DiffCAM) or explainer.bank_ is None:
                raise ReferenceGroupError(
                    f"the question needs {name} fitted on per-class statistics (a bank: `whycam reference build "
                    "--per-class`, or batches of (images, labels))"
                )
            if versus is not None:
                versus = bank_label(explainer.bank_, versus, self.classes)
            self.references[name] += f"; question: {self.question}" + (f" {versus}" if versus is not None else "")
        return versus

    @property
    def layers(self) -> dict[str, list[str]]:
        """The layers each method reads, by name, once resolved (automatic layers: after the first batch)."""
        return {name: explainer.used_layers() for name, explainer in self.explainers.items()}

    def predict(self, images: Tensor) -> Tensor:
        """The selected model output for ``images``, in eval mode, the model left as it was."""
        with preserved(self.model), torch.no_grad():
            self.model.eval()
            return select_output(self.model(images), self.output)

    def explain_batch(
        self, images: Tensor, targets: Target = None, ids: Sequence[str] | None = None, *, display=None, labels=None
    ) -> BatchResult:
        """One batch through every method (see ``BatchResult``); a failing method is recorded, not raised.

        The predictions come from the output of the first method that runs the unaltered images
        through the model (``sees_output``), which then runs first (with ``targets=None`` it explains
        its own predicted class, the rule ``target_classes`` gives every method); only when no
        method does is there a forward pass for the predictions alone."""
        images = check_images(images, self.model).to(self.device)
        ids = [str(i) for i in range(len(images))] if ids is None else list(ids)
        result = BatchResult(ids, display=display, labels=labels)
        given = None if targets is None else self._targets(targets, None, len(images))
        first = self._seeing()
        first_error = None if first is None else self._attempt(first, images, given, result, keep_output=True)
        output = self._seen(first)
        output = self.predict(images) if output is None else output
        if output.dim() == 2:
            probabilities = output.softmax(1)
            result.predictions = target_classes(output, None).cpu()
            result.probabilities = probabilities.gather(1, result.predictions[:, None].to(self.device))[:, 0].cpu()
        explained = given if given is not None else self._targets(None, result.predictions, len(images))
        result.targets = explained.cpu() if isinstance(explained, Tensor) else None
        result.target_text = None if isinstance(explained, Tensor) else describe_target(explained)
        for name in self.explainers:
            error = first_error if name == first else self._attempt(name, images, explained, result)
            if error is not None:
                if self.strict:
                    raise error
                result.failures.append(Failure(ids, f"{type(error).__name__}: {error}", name))
        return _in_order(result, list(self.explainers))

    def _seeing(self) -> str | None:
        """The first method whose call gives the model's output on the unaltered batch, under the
        run's output selector (a bank question asks each label's images apart: not the batch)."""
        for name, explainer in self.explainers.items():
            asks = self.question is not None and explainer.needs_reference
            if explainer.sees_output and explainer.output is self.output and not asks:
                return name
        return None

    def _seen(self, name: str | None) -> Tensor | None:
        """The selected output that method ``name`` saw (None when it never got that far)."""
        if name is None or self.explainers[name].output_ is None:
            return None
        explainer, output = self.explainers[name], self.explainers[name].output_
        explainer.output_ = None
        with torch.no_grad():
            return select_output(output, self.output).detach()

    def _attempt(self, name: str, images: Tensor, targets: Target, result: BatchResult, *, keep_output=False):
        """``_run``; the exception it raised, or None."""
        explainer = self.explainers[name]
        explainer.keep_output, explainer.output_ = keep_output, None
        try:
            self._run(name, explainer, images, targets, result)
        except Exception as error:  # noqa: BLE001 (one failing method must not lose the others)
            return error
        finally:
            explainer.keep_output = False
        return None

    def _targets(self, targets: Target, predictions: Tensor | None, n: int) -> Target:
        if targets is None:
            if predictions is None:
                raise UsageError("the model's output is not (B, classes): give targets (a callable f(output) -> (B,))")
            return predictions.to(self.device)
        if isinstance(targets, int):
            return torch.full((n,), targets, dtype=torch.long, device=self.device)
        if callable(targets):
            return targets
        targets = torch.as_tensor(targets).flatten().long()
        if len(targets) != n:
            raise UsageError(f"{len(targets)} targets for {n} images; give one class per image, or one for all")
        return targets.to(self.device)

    def _run(self, name: str, explainer: Explainer, images: Tensor, targets: Target, result: BatchResult) -> None:
        """Method ``name`` on one batch, into ``result``, with the model in eval mode."""
        with preserved(self.model):
            self.model.eval()
            clock = time.perf_counter()
            if self.question is not None and explainer.needs_reference:
                labels = self._labels(targets)
                maps = ask(explainer, self.question, images, labels, self.versus, self.keep_raw)
                result.asked[name] = [self.versus if self.question == "why-not" else label for label in labels]
            else:
                maps = explainer(images, targets if explainer.needs_target else None, raw=self.keep_raw)
            result.seconds[name] = time.perf_counter() - clock
        if self.keep_raw:
            result.raw[name] = maps.detach().float().cpu()
            maps = normalize_sign(maps, tuple(images.shape[-2:]), explainer.sign)
        result.maps[name] = maps.detach().float().cpu()
        result.layers[name] = explainer.used_layers()
        if explainer.stride_ is not None:
            result.strides[name] = explainer.stride_
        if name not in self._logged and result.layers[name]:
            self._logged.add(name)
            log.info("%s reads layer %s", name, ", ".join(result.layers[name]))

    def _labels(self, targets: Target) -> list[object]:
        if not isinstance(targets, Tensor):
            raise UsageError("DiffCAM's bank questions need class targets, not a callable")
        bank = next(e.bank_ for e in self.explainers.values() if isinstance(e, DiffCAM) and e.bank_ is not None)
        return [bank_label(bank, int(t), self.classes) for t in targets.tolist()]

    def iter_batches(self, images: Images, targets: Target = None, *, progress: bool = False) -> Iterator[BatchResult]:
        """``explain_batch`` over ``images`` (see ``input_batches``); unreadable files land in ``failures``."""
        start, failures = 0, self.failures
        bar = tqdm(desc="explain", unit="image", disable=not progress)
        for batch in input_batches(images, self.batch_size, self.preprocess, failures):
            chunk = batch_targets(targets, start, len(batch.ids))
            yield self.explain_batch(batch.inputs, chunk, batch.ids, display=batch.display, labels=batch.labels)
            start += len(batch.ids)
            bar.update(len(batch.ids))
        bar.close()

    def explain(self, images: Images, targets: Target = None, *, progress: bool = False) -> ExplainResult:
        """Every batch of ``images`` through every method, accumulated."""
        batches = list(self.iter_batches(images, targets, progress=progress))
        if not batches:
            raise InputError("no readable image among the inputs; nothing to explain")
        return self.collect(batches)

    def collect(self, batches: Sequence[BatchResult]) -> ExplainResult:
        """``BatchResult``s as one ``ExplainResult`` (the rows of a failed method are NaN)."""
        names = list(self.explainers)
        result = ExplainResult(
            methods=names,
            ids=[i for batch in batches for i in batch.ids],
            failures=[*self.failures, *(f for batch in batches for f in batch.failures)],
            references=dict(self.references),
            needs_target={name: e.needs_target for name, e in self.explainers.items()},
            question=self.question,
            versus=self.versus,
            classes=None if self.classes is None else list(self.classes),
            name=self.name,
            layers=self.layers,
            strides={k: v for b in batches for k, v in b.strides.items()},
            target_text=batches[0].target_text,
        )
        for key in ("predictions", "probabilities", "targets"):
            parts = [getattr(batch, key) for batch in batches]
            setattr(result, key, torch.cat(parts) if all(p is not None for p in parts) else None)
        displays = [batch.display for batch in batches]
        result.display = [d for ds in displays for d in ds] if all(d is not None for d in displays) else None
        for name in names:
            _stack(result.maps, name, [(b.maps.get(name), len(b.ids)) for b in batches])
            if self.keep_raw:
                _stack(result.raw, name, [(b.raw.get(name), len(b.ids)) for b in batches])
            result.seconds[name] = torch.cat(
                [torch.full((len(b.ids),), b.seconds.get(name, float("nan")) / len(b.ids)) for b in batches]
            )
            if any(name in b.asked for b in batches):
                result.asked[name] = [x for b in batches for x in b.asked.get(name, [None] * len(b.ids))]
        return result


def _in_order(result: BatchResult, names: list[str]) -> BatchResult:
    """``result`` with its per-method entries in the methods' order (the first may have run first)."""
    for key in ("maps", "raw", "seconds", "layers", "strides", "asked"):
        entries = getattr(result, key)
        setattr(result, key, {name: entries[name] for name in names if name in entries})
    return result


def _stack(into: dict[str, Tensor], name: str, parts: list[tuple[Tensor | None, int]]) -> None:
    """Concatenate a method's per-batch maps, NaN for the batches where it failed (none if it never ran)."""
    shape = next((tuple(p.shape[1:]) for p, _ in parts if p is not None), None)
    if shape is not None:
        into[name] = torch.cat([p if p is not None else torch.full((n, *shape), float("nan")) for p, n in parts])


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def explain(
    model: nn.Module | LoadedModel,
    images: Images,
    methods: MethodSpec = ("gradcam",),
    *,
    targets: Target = None,
    progress: bool = False,
    **options: object,
) -> ExplainResult:
    """Explain ``images`` (a tensor, files/folders, or a DataLoader) with every method: an ``ExplainResult``.

    ``options`` are ``Runner``'s (layer, output, preprocess, reference, question, versus, device,
    classes, batch_size, keep_raw, strict). To stream, hold the ``Runner`` and call ``iter_batches``.
    """
    return Runner(model, methods, **options).explain(images, targets, progress=progress)
