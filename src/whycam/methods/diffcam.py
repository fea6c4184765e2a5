"""DiffCAM (Li et al., "DiffCAM: Data-Driven Saliency Maps by Capturing Feature Differences", CVPR 2025).

With A (K, h, w) a layer's activations for an image, z = pool(A) its embedding, and mu, S the mean
and (shrunk) covariance of the same embedding over a reference group, DiffCAM takes the Fisher
direction that best separates the image from the group,

    w* = argmax_w (w^T (z - mu))^2 / (w^T S w) = S^-1 (z - mu),     M = sum_k w*_k A_k,

then ReLU, upsampling and min-max like every CAM. One forward pass (stopped at the layer), no
gradient, no class score, no label: the reference group is the question. With a ``ReferenceBank``
the paper's questions are plain calls: ``why`` (reference: every other class), ``why_not``
(reference: that class), ``unusual`` (reference: the same class), and ``contrast`` between two groups.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import LayerSpec, resolve_layer, token_layout
from ..params import Params
from ..reference import (
    Label,
    NotFittedError,
    ReferenceBank,
    ReferenceStats,
    Shrinkage,
    check_compatible,
    model_fingerprint,
    nearest_solve,
    parse_shrinkage,
)
from ..taps import Tap, preserved
from ..targets import Target
from .base import CAMExplainer, check_images, grid_dims, register

Embedding = str | Callable[[Tensor], Tensor]
EMBEDDINGS = ("auto", "avg", "max", "cls")
References = Tensor | ReferenceStats | ReferenceBank | Iterable
#: The DiffCAM settings a statistics file records, checked when the file is fitted.
SETTINGS = ("shrinkage", "k")


class _Question(NamedTuple):
    """What a bank question passes as the call's target: the reference group, and for ``contrast`` the
    embedding that replaces every image's own."""

    reference: ReferenceStats
    compare: Tensor | None = None


@register
class DiffCAM(Params, CAMExplainer):
    """DiffCAM: ``w = S^-1 (z - mu)`` against a reference group; ``fit`` it, then call it.

    ``embedding``: how the layer's map becomes the vector z: ``"auto"`` (what the model itself pools
    after the layer: the spatial max if its global pooling is a max, else the average; for a ViT the
    mean patch token), ``"avg"``, ``"max"``, ``"cls"`` (a ViT's class token), or a callable
    ``(B, K, h, w) -> (B, K)``. ``normalize``: L2-normalise z. ``shrinkage``: a fixed intensity in
    [0, 1] (default 0.5, chosen on the validation splits of docs/results.md; 1 = no whitening,
    w = z - mu up to scale), ``"ledoit-wolf"``, ``"oas"`` or ``("ridge", value)``. ``k``: use, for
    each image, only its k nearest references (keeps the reference embeddings, memory O(n K)).
    ``sign``: ``"negative"`` shows the cells whose features lie on the reference group's side of
    the Fisher direction (evidence for the reference), ``"both"`` the signed map (see
    ``whycam.methods.base``). The call's ``target`` is ignored: the reference group is the question
    (``why``, ``why_not``, ``unusual``, ``contrast`` pick it from a bank).

    In scikit-learn's shape: the constructor's arguments are the parameters (``get_params``,
    ``set_params``, ``clone``); ``fit`` sets ``bank_`` (the per-class ``ReferenceBank``, or None when
    the references had no labels) and ``reference_`` (the reference group; with a bank, every class
    together). Before ``fit`` they, and every call, raise ``NotFittedError``.
    """

    name = "diffcam"
    summary = "DiffCAM: the Fisher direction from a reference group to the image's embedding; no gradient."
    uses_gradient = False
    needs_target = False
    needs_reference = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        embedding: Embedding = "auto",
        normalize: bool = False,
        shrinkage: Shrinkage = 0.5,
        k: int | None = None,
        reshape: Callable[[Tensor], Tensor] | None = None,
        sign: str = "positive",
    ):
        if layer is not None and not isinstance(layer, (str, nn.Module)):
            raise ValueError(
                "DiffCAM explains one layer (its statistics belong to that layer); "
                "pass one name or module, or fit one DiffCAM per layer"
            )
        super().__init__(model, layer, reshape=reshape, sign=sign)
        if not callable(embedding) and embedding not in EMBEDDINGS:
            raise ValueError(
                f"embedding={embedding!r} is not one of {', '.join(EMBEDDINGS)} or a callable (B, K, h, w) -> (B, K)"
            )
        parse_shrinkage(shrinkage)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
            raise ValueError(f"k={k!r}: the number of nearest references must be an int >= 2, or None for all")
        self.embedding = embedding
        self.normalize = normalize
        self.shrinkage = shrinkage
        self.k = k
        # Caches of what the model and the parameters determine (reset by set_params, never shared by
        # clone). The fitted state, bank_ and _group, is set by fit and absent until then.
        self._fingerprint: str | None = None
        self._pooling: str | None = None
        self._stop_early: bool | None = None

    # ----------------------------------------------------------------------------- the reference
    @property
    def bank_(self) -> ReferenceBank | None:
        """The fitted per-class statistics (None when the references had no labels)."""
        self._require_fitted()
        return self._bank

    @property
    def reference_(self) -> ReferenceStats:
        """The fitted reference group (with a bank: every class together, merged once and cached)."""
        self._require_fitted()
        return self._group if self._bank is None else self._bank.all()

    def _require_fitted(self) -> None:
        if "_group" not in vars(self):
            raise NotFittedError(
                "DiffCAM has no reference group yet: call dc.fit(references) first (reference "
                "images, a DataLoader, batches of (images, labels), ReferenceStats or a ReferenceBank)"
            )

    def fit(self, references: References, *, batch_size: int = 64) -> DiffCAM:
        """Fit the reference group, replacing any previous one, and return ``self``.

        ``references``: images (N, C, H, W) (run in chunks of ``batch_size``), an iterable or
        DataLoader of image batches, an iterable of ``(images, labels)`` batches or one such pair
        (builds a per-class ``bank_``), ``ReferenceStats``, or a ``ReferenceBank``. Statistics are
        refused if they belong to another model, layer, embedding or normalisation, or lack the
        embeddings that ``k`` needs; other ``shrinkage`` or ``k`` than they were saved with is warned of.
        """
        for name in ("_group", "_bank"):
            vars(self).pop(name, None)
        if isinstance(references, (ReferenceStats, ReferenceBank)):
            if isinstance(references, ReferenceBank) and not references.classes:
                raise ValueError("the ReferenceBank is empty; fit it on labelled batches first")
            self._adopt_layer(references.meta)
            self._check(references.meta)
            self._check_settings(references)
            bank = isinstance(references, ReferenceBank)
            self._group, self._bank = (None, references) if bank else (references, None)
        else:
            for batch in _batches(references, batch_size):
                self.partial_fit(batch)
            if "_group" not in vars(self):
                raise ValueError("the references held no images; pass at least 2 reference images")
        return self

    def partial_fit(self, batch: Tensor | tuple[Tensor, Tensor | Iterable[Label]]) -> DiffCAM:
        """Add one batch: images (B, C, H, W), or ``(images, labels)`` for the per-class bank."""
        images, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        images = check_images(images, self.model)
        embeddings = self.embed(images)
        meta = {
            **self._identity(images),
            "input_size": f"{images.shape[-2]}x{images.shape[-1]}",
            **{name: str(getattr(self, name)) for name in SETTINGS},
        }
        keep = self.k is not None
        fitted = "_group" in vars(self)
        if labels is None:
            if fitted and self._bank is not None:
                raise ValueError(
                    "these references have labels and this batch has none; give every batch "
                    "as (images, labels), or none"
                )
            if not fitted:
                self._group, self._bank = ReferenceStats(embeddings.shape[1], meta=meta, keep_embeddings=keep), None
            self._group.update(embeddings)
        else:
            if fitted and self._group is not None:
                raise ValueError(
                    "these references have no labels and this batch has some; give every "
                    "batch as (images, labels), or none"
                )
            if not fitted:
                self._group, self._bank = None, ReferenceBank()
            self._bank.update(embeddings, labels, meta=meta, keep_embeddings=keep)
        return self

    def _check_settings(self, references: ReferenceStats | ReferenceBank) -> None:
        """Saved statistics against this DiffCAM's ``k`` and ``shrinkage``: refuse statistics without
        the embeddings ``k`` needs; warn where a setting differs from the one they were saved with."""
        first = references if isinstance(references, ReferenceStats) else next(iter(references.classes.values()))
        if self.k is not None and first.embeddings_ is None:
            raise ValueError(
                f"k={self.k} needs the reference embeddings, and these statistics keep none "
                f"(saved with k={references.meta.get('k', 'None')}); fit again with k set (the embeddings are "
                "then kept), or use k=None"
            )
        saved = {name: references.meta[name] for name in SETTINGS if name in references.meta}
        differ = [name for name, value in saved.items() if value != str(getattr(self, name))]
        if differ:
            warnings.warn(
                "the statistics were saved by a DiffCAM with "
                + ", ".join(f"{name}={saved[name]}" for name in differ)
                + "; this one uses "
                + ", ".join(f"{name}={getattr(self, name)!r}" for name in differ)
                + ". The statistics serve any setting, but the maps differ from those made with the saved one "
                "(set_params to reproduce them)",
                UserWarning,
                stacklevel=3,
            )

    def _questions_bank(self) -> ReferenceBank:
        if self.bank_ is None:
            raise RuntimeError(
                "the questions need per-class statistics: fit on batches of (images, labels), "
                "or fit(ReferenceBank.load(path))"
            )
        return self.bank_

    # ----------------------------------------------------------------------------- the questions
    def why(self, images: Tensor, label: Label, *, raw: bool = False) -> Tensor:
        """Why is this a ``label``? Reference: every other class."""
        return self(images, _Question(self._questions_bank().all_but(label)), raw=raw)

    def why_not(self, images: Tensor, other: Label | Iterable[Label], *, raw: bool = False) -> Tensor:
        """Why is this not an ``other``? Reference: the class(es) ``other``."""
        return self(images, _Question(self._questions_bank().group(other)), raw=raw)

    def unusual(self, images: Tensor, label: Label, *, raw: bool = False) -> Tensor:
        """What is unusual about this ``label``? Reference: the images of the same class."""
        return self(images, _Question(self._questions_bank().group(label)), raw=raw)

    def contrast(
        self, images: Tensor, group: Label | Iterable[Label], reference: Label | Iterable[Label], *, raw: bool = False
    ) -> Tensor:
        """What distinguishes ``group`` from ``reference``, shown on ``images``.

        w = S_B^-1 (mu_A - mu_B), with S_B the reference group's shrunk covariance (the same role S
        plays in every other question); one w for every image.
        """
        bank = self._questions_bank()
        return self(images, _Question(bank.group(reference), bank.group(group).mean_), raw=raw)

    # ----------------------------------------------------------------------------- the map
    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        reference, compare = target if isinstance(target, _Question) else _Question(self.reference_)
        activation = self._activation(images)
        spatial = self.spatial(activation, images, self.layers(images)[0][1])
        z = self._pool(activation, spatial, images)
        self._check(reference.meta, images)
        if reference.dim != z.shape[1]:
            raise ValueError(f"the statistics have {reference.dim} channels, the layer {z.shape[1]}")
        target_embedding = z if compare is None else compare.to(z).expand_as(z)
        weights = self.direction(target_embedding.to(reference.sum_.device), reference)
        return [torch.einsum("bk,bk...->b...", weights.to(spatial), spatial)]

    def direction(self, z: Tensor, reference: ReferenceStats) -> Tensor:
        """w* = S^-1 (z - mu) for each row of z (B, K), float64 (S^-1 cached per group and shrinkage)."""
        if self.k is None:
            return reference.solve(z - reference.mean_, self.shrinkage)
        if reference.embeddings_ is None:
            raise ValueError(
                f"k={self.k} needs the reference embeddings, and these statistics keep none; "
                "fit with k set (the embeddings are then kept)"
            )
        return nearest_solve(reference.embeddings_, z, self.k, self.shrinkage)

    def embed(self, images: Tensor) -> Tensor:
        """The embeddings z (B, K), float64, of ``images`` at the layer (one forward pass to the layer)."""
        images = check_images(images, self.model)
        with preserved(self.model):
            activation = self._activation(images)
            return self._pool(activation, self.spatial(activation, images, self.layers(images)[0][1]), images)

    def _activation(self, images: Tensor) -> Tensor:
        """The layer's output. The forward pass stops there (the rest of the model never runs), unless
        the layer is a module the model calls several times (a shared activation), or the run loop
        asks for the output (``keep_output``): then the whole pass runs and the last call is kept, as
        every CAM reads it. The first pass counts the calls."""
        module = self.layers(images)[0][1]
        with torch.no_grad(), Tap([module], stop=bool(self._stop_early) and not self.keep_output) as tap:
            self.saw(self.model(images))
        activation = tap.captured()[0]
        if self._stop_early is None:
            self._stop_early = tap.calls[0] == 1
        return activation

    def _pool(self, activation: Tensor, spatial: Tensor, images: Tensor) -> Tensor:
        if self.embedding == "auto" and self._pooling is None:
            self._pooling = (
                "avg"
                if activation.dim() != images.dim()
                else model_pooling(self.model, self.layers(images)[0][1], images[:1])
            )
        kind = self._embedding_name()
        if callable(self.embedding):
            z = self.embedding(spatial)
            if not isinstance(z, Tensor) or tuple(z.shape) != tuple(spatial.shape[:2]):
                raise ValueError(f"the embedding callable must return (B, K) = {tuple(spatial.shape[:2])}")
        elif kind == "cls":
            layout = (
                token_layout(self.model, activation.shape[1], tuple(images.shape[-2:]))
                if activation.dim() == 3
                else None
            )
            if layout is None or layout.prefix < 1:
                raise ValueError(
                    "embedding='cls' needs a layer whose output is ViT tokens (B, N, D) with a "
                    "class token; use 'avg' or 'max'"
                )
            z = activation[:, 0]
        else:
            grid = grid_dims(spatial)
            z = spatial.amax(grid) if kind == "max" else spatial.mean(grid, dtype=torch.float64)
        z = z.double()
        return F.normalize(z, dim=1) if self.normalize else z

    def _embedding_name(self) -> str | None:
        """The embedding as recorded in the statistics: ``avg``, ``max``, ``cls`` or ``callable:<name>``
        (None while ``"auto"`` is not yet resolved)."""
        if callable(self.embedding):
            return f"callable:{getattr(self.embedding, '__qualname__', type(self.embedding).__name__)}"
        return self._pooling if self.embedding == "auto" else self.embedding

    # ----------------------------------------------------------------------------- identity checks
    def _identity(self, images: Tensor | None = None) -> dict[str, str]:
        """What statistics must agree with: model fingerprint, layer, embedding, normalisation."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        identity = {"model": self._fingerprint, "normalize": str(self.normalize).lower()}
        if self._layers is not None or images is not None:
            identity["layer"] = self.layers(images)[0][0]
        if self._embedding_name() is not None:
            identity["embedding"] = self._embedding_name()
        return identity

    def _check(self, meta: dict[str, str], images: Tensor | None = None) -> None:
        check_compatible(meta, self._identity(images))

    def _adopt_layer(self, meta: dict[str, str]) -> None:
        """Resolve the layer without images: the one given, or with ``layer=None`` the statistics' own."""
        if self._layers is None and (self.layer is not None or "layer" in meta):
            self._layers = [resolve_layer(self.model, meta["layer"] if self.layer is None else self.layer)]


def model_pooling(model: nn.Module, layer: nn.Module, images: Tensor) -> str:
    """``"max"`` if the last global pooling the model runs after ``layer`` takes the spatial maximum,
    else ``"avg"``: the model's own embedding of a layer's map.

    A global pooling is found by behaviour, not by type: a module, started after the layer has run,
    that turns a (B, C, h, w) map with h w > 1 into C values per image equal to the map's spatial
    max or mean (``nn.AdaptiveMaxPool2d``, timm's ``SelectAdaptivePool2d``, a pooling head...).
    """
    state = {"after": False}
    started: set[int] = set()
    found: list[str] = []

    def layer_done(module, inputs, output):
        state["after"] = True

    def pre(module, inputs):
        if state["after"]:
            started.add(id(module))

    def post(module, inputs, output):
        x = inputs[0] if isinstance(inputs, tuple) and inputs else None
        if (
            id(module) not in started
            or not isinstance(x, Tensor)
            or not isinstance(output, Tensor)
            or x.dim() not in (4, 5)
            or x.shape[2:].numel() < 2
            or output.numel() != x.shape[0] * x.shape[1]
        ):
            return
        pooled = output.reshape(x.shape[0], x.shape[1])
        for kind, reference in (("max", x.amax(grid_dims(x))), ("avg", x.mean(grid_dims(x)))):
            if torch.allclose(pooled, reference, rtol=1e-4, atol=1e-5):
                found.append(kind)
                return

    handles = [layer.register_forward_hook(layer_done)]
    for module in model.modules():
        if module is not layer:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return found[-1] if found else "avg"


def _batches(references: object, batch_size: int) -> Iterator[Tensor | tuple[Tensor, object]]:
    """Reference images as batches: images, or (images, labels)."""
    if isinstance(references, Tensor):
        if references.dim() not in (4, 5):
            raise ValueError(f"reference images must be (N, C, H, W) or (N, C, D, H, W); got {tuple(references.shape)}")
        yield from references.split(batch_size)
        return
    if _is_labelled(references):
        images, labels = references  # type: ignore[misc]
        labels = labels if isinstance(labels, Tensor) else list(labels)
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]
        return
    if not isinstance(references, Iterable):
        raise TypeError(
            f"references must be images, a DataLoader or iterable of batches, ReferenceStats "
            f"or a ReferenceBank, not {type(references).__name__}"
        )
    for batch in references:
        if isinstance(batch, Tensor):
            yield batch
        elif isinstance(batch, (tuple, list)) and len(batch) == 1 and isinstance(batch[0], Tensor):
            yield batch[0]
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
            yield batch[0], batch[1]
        else:
            raise TypeError(
                f"a reference batch must be images (B, C, H, W) or (images, labels), not {type(batch).__name__}"
            )


def _is_labelled(references: object) -> bool:
    """One (images, labels) pair rather than an iterable of batches."""
    if not (isinstance(references, tuple) and len(references) == 2):
        return False
    images, labels = references
    return (
        isinstance(images, Tensor)
        and images.dim() == 4
        and len(labels) == images.shape[0]
        and (isinstance(labels, (list, tuple)) or isinstance(labels, Tensor) and labels.dim() == 1)
    )
