"""Reference statistics for DiffCAM: a group's embeddings summarised by additive sufficient statistics.

A group of n embeddings x_i in R^K is kept as float64 sums, never as the embeddings themselves::

    n,   s = sum_i x_i,   Q = sum_i x_i x_i^T,   r = sum_i |x_i|^2 x_i,   q = sum_i |x_i|^4

Every term is a sum over samples, so statistics stream over batches (memory O(K^2), not O(n K)),
merge exactly (``a + b``: the statistics of the concatenated data), and per-class statistics combine
into any group ("every class but 6") without running the model again. The mean is m = s / n and the
empirical covariance C = Q / n - m m^T (maximum likelihood, as scikit-learn). r and q are what the
Ledoit-Wolf intensity needs besides C: the centred fourth moment

    sum_i |x_i - m|^4 = q - 4 r.m + 4 m^T Q m + 2 |m|^2 tr Q - 3 n |m|^4

With K channels and fewer references than K, C is singular, so the covariance is shrunk towards a
scaled identity, ``S = (1 - a) C + a (tr C / K) I``, with the intensity a chosen by Ledoit-Wolf
(Ledoit & Wolf, J. Multivariate Anal. 2004) or OAS (Chen et al., IEEE TSP 2010) exactly as
scikit-learn's ``LedoitWolf`` / ``OAS`` compute it on the raw data, or fixed; or with a ridge,
``S = C + lambda I``. ``S^-1 v`` is solved through a Cholesky factor, cached per shrinkage setting.

Statistics carry string metadata (model fingerprint, layer, embedding, ...) so that they are never
used with another model, layer or embedding, and save to safetensors or npz (never a pickle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

Shrinkage = str | float | tuple[str, float]
Label = Hashable

#: Metadata that must agree between statistics and the explainer (or the statistics) using them.
IDENTITY = ("model", "layer", "embedding", "normalize")
FORMAT_VERSION = "1"


class ReferenceMismatchError(ValueError):
    """Statistics used with a model, layer or embedding other than the ones they were computed with."""


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer of ``model``: names, dtypes, shapes and all bytes.

    The full bytes (BLAKE2b, about 0.1 s for ResNet-50's 100 MB) and not a few summary statistics:
    a fine-tuned model can keep per-tensor means and norms almost unchanged, and a false match
    would silently explain one model with another model's statistics.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def check_compatible(meta: Mapping[str, str], expected: Mapping[str, str], what: str = "the statistics") -> None:
    """Refuse, naming the key and both values, statistics whose identity differs from ``expected``.

    A key missing on either side (statistics built by hand with ``from_embeddings``) is not checked.
    """
    for key in IDENTITY:
        if key in meta and key in expected and meta[key] != expected[key]:
            fix = {
                "model": "compute the statistics with this model (fit again)",
                "layer": f"use layer={meta[key]!r}, or fit again on layer {expected[key]!r}",
                "embedding": f"use embedding={meta[key]!r}, or fit again",
                "normalize": f"use normalize={meta[key] == 'true'}, or fit again",
            }[key]
            raise ReferenceMismatchError(
                f"{what} were computed with {key} {meta[key]!r}, but are used with {key} {expected[key]!r}; {fix}"
            )


def parse_shrinkage(shrinkage: Shrinkage) -> tuple[str, float | None]:
    """``(method, value)``: ("ledoit-wolf", None), ("oas", None), ("fixed", a) or ("ridge", lambda)."""
    if shrinkage in ("ledoit-wolf", "oas"):
        return str(shrinkage), None
    if isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0 <= shrinkage <= 1:
        return "fixed", float(shrinkage)
    if (
        isinstance(shrinkage, tuple)
        and len(shrinkage) == 2
        and shrinkage[0] == "ridge"
        and isinstance(shrinkage[1], (int, float))
        and shrinkage[1] >= 0
    ):
        return "ridge", float(shrinkage[1])
    raise ValueError(
        f"shrinkage={shrinkage!r} is not understood; use 'ledoit-wolf', 'oas', a float in "
        "[0, 1] (fixed intensity; 1 = no whitening) or ('ridge', value >= 0)"
    )


def shrinkage_coefficients(
    shrinkage: Shrinkage, n: int, dim: int, trace: Tensor, frobenius: Tensor, fourth: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(intensity, a, b)`` with the shrunk covariance ``S = a C + b I``, batched over leading dims.

    From n samples of dimension ``dim``: ``trace`` = tr C, ``frobenius`` = |C|_F^2 and ``fourth`` =
    mean_i |x_i - m|^4. Ledoit-Wolf, as scikit-learn: beta = (fourth - |C|_F^2) / (dim n),
    delta = (|C|_F^2 - (tr C)^2 / dim) / dim, intensity = min(beta, delta) / delta. OAS, as
    scikit-learn (which drops the paper's 2/p factors): with alpha = |C|_F^2 / dim^2 and
    mu = tr C / dim, intensity = min((alpha + mu^2) / ((n + 1)(alpha - mu^2 / dim)), 1).
    """
    method, value = parse_shrinkage(shrinkage)
    mu = trace / dim
    if method == "ridge":
        return torch.full_like(trace, value), torch.ones_like(trace), torch.full_like(trace, value)
    if method == "fixed" or dim == 1:
        intensity = torch.full_like(trace, 0.0 if dim == 1 else value)
    elif method == "ledoit-wolf":
        beta = (fourth - frobenius) / (dim * n)
        delta = (frobenius - trace**2 / dim) / dim
        beta = torch.minimum(beta, delta)
        intensity = torch.where(beta == 0, 0.0, beta / torch.where(delta == 0, 1.0, delta))
    else:
        alpha = frobenius / dim**2
        den = (n + 1) * (alpha - mu**2 / dim)
        intensity = torch.where(den == 0, 1.0, torch.clamp((alpha + mu**2) / torch.where(den == 0, 1.0, den), max=1.0))
    return intensity, 1 - intensity, intensity * mu


def _singular_error(n: int, dim: int) -> ValueError:
    return ValueError(
        f"the reference covariance ({n} embeddings, {dim} channels) is not positive definite "
        "after shrinkage (the references do not vary, or shrinkage is 0 with fewer "
        "references than channels); use shrinkage='ledoit-wolf' or 'oas', a fixed value in "
        "(0, 1], or ('ridge', value > 0), and references that differ"
    )


@dataclass(frozen=True)
class Shrunk:
    """A shrunk covariance ``S = a C + b I``, how it was chosen, and its lower Cholesky factor."""

    method: str
    intensity: float
    covariance: Tensor
    factor: Tensor

    def solve(self, rhs: Tensor) -> Tensor:
        """``S^-1 v`` for each row v of ``rhs`` (..., K), by two triangular solves."""
        flat = rhs.reshape(-1, rhs.shape[-1]).to(self.factor).T
        return torch.cholesky_solve(flat, self.factor).T.reshape(rhs.shape)


class ReferenceStats:
    """Sufficient statistics of a group of embeddings: streaming, mergeable, saved without pickles.

    ``keep_embeddings=True`` also keeps the embeddings themselves (memory O(n K)), which DiffCAM's
    nearest-reference option needs.
    """

    def __init__(
        self,
        dim: int,
        *,
        meta: Mapping[str, str] | None = None,
        keep_embeddings: bool = False,
        device: torch.device | str = "cpu",
    ):
        if dim < 1:
            raise ValueError(f"the embedding dimension must be positive, got {dim}")
        self.dim = dim
        self.meta: dict[str, str] = dict(meta or {})
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.moment3 = torch.zeros(dim, dtype=torch.float64, device=device)
        self.moment4 = torch.zeros((), dtype=torch.float64, device=device)
        self.embeddings: Tensor | None = (
            torch.zeros(0, dim, dtype=torch.float64, device=device) if keep_embeddings else None
        )
        self._shrunk: dict[tuple[str, float | None], Shrunk] = {}

    @classmethod
    def from_embeddings(
        cls, embeddings: Tensor, *, meta: Mapping[str, str] | None = None, keep_embeddings: bool = False
    ) -> ReferenceStats:
        """The statistics of an (n, K) tensor of embeddings."""
        embeddings = _as_embeddings(embeddings)
        return cls(embeddings.shape[1], meta=meta, keep_embeddings=keep_embeddings, device=embeddings.device).update(
            embeddings
        )

    def update(self, embeddings: Tensor) -> ReferenceStats:
        """Add a batch of (n, K) embeddings (streaming; the result does not depend on the batching)."""
        x = _as_embeddings(embeddings, self.dim).to(self.sum.device, torch.float64)
        norms = (x * x).sum(1)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x
        self.moment3 += norms @ x
        self.moment4 += (norms * norms).sum()
        if self.embeddings is not None:
            self.embeddings = torch.cat([self.embeddings, x])
        self._shrunk.clear()
        return self

    def merge(self, other: ReferenceStats) -> ReferenceStats:
        """The statistics of both groups together (exact); metadata must agree on the identity keys."""
        if not isinstance(other, ReferenceStats):
            raise TypeError(f"can only merge ReferenceStats, not {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {self.dim} and {other.dim} channels")
        check_compatible(other.meta, self.meta, "the statistics being merged")
        meta = {k: v for k, v in self.meta.items() if other.meta.get(k, v) == v}
        meta.update({k: v for k, v in other.meta.items() if k not in self.meta})
        merged = ReferenceStats(self.dim, meta=meta, device=self.sum.device)
        merged.count = self.count + other.count
        for name in ("sum", "outer", "moment3", "moment4"):
            setattr(merged, name, getattr(self, name) + getattr(other, name).to(self.sum.device))
        if self.embeddings is not None and other.embeddings is not None:
            merged.embeddings = torch.cat([self.embeddings, other.embeddings.to(self.sum.device)])
        return merged

    def __add__(self, other: ReferenceStats) -> ReferenceStats:
        return self.merge(other)

    def __radd__(self, other: object) -> ReferenceStats:
        if isinstance(other, int) and other == 0:  # sum([a, b, c]) starts from 0
            return self
        return NotImplemented

    @property
    def mean(self) -> Tensor:
        """m = s / n."""
        self._require(1)
        return self.sum / self.count

    def empirical_covariance(self) -> Tensor:
        """C = Q / n - m m^T (the maximum-likelihood estimate, divided by n)."""
        self._require(2)
        mean = self.mean
        covariance = self.outer / self.count - torch.outer(mean, mean)
        return (covariance + covariance.T) / 2

    def covariance(self, shrinkage: Shrinkage = "ledoit-wolf") -> Tensor:
        """The shrunk covariance S (K, K) for ``shrinkage`` (see ``shrunk``)."""
        return self.shrunk(shrinkage).covariance

    def shrunk(self, shrinkage: Shrinkage = "ledoit-wolf") -> Shrunk:
        """The shrunk covariance, its method, intensity and Cholesky factor (cached per setting)."""
        key = parse_shrinkage(shrinkage)
        if key not in self._shrunk:
            covariance = self.empirical_covariance()
            n, mean = self.count, self.mean
            trace = covariance.diagonal().sum()
            centred4 = (
                self.moment4
                - 4 * self.moment3 @ mean
                + 4 * mean @ self.outer @ mean
                + 2 * (mean @ mean) * self.outer.diagonal().sum()
                - 3 * n * (mean @ mean) ** 2
            )
            intensity, a, b = shrinkage_coefficients(shrinkage, n, self.dim, trace, (covariance**2).sum(), centred4 / n)
            shrunk = a * covariance + b * torch.eye(self.dim).to(covariance)
            factor, info = torch.linalg.cholesky_ex(shrunk)
            if info.item() != 0:
                raise _singular_error(n, self.dim)
            self._shrunk[key] = Shrunk(key[0], float(intensity), shrunk, factor)
        return self._shrunk[key]

    def solve(self, rhs: Tensor, shrinkage: Shrinkage = "ledoit-wolf") -> Tensor:
        """``S^-1 v`` for each row v of ``rhs`` (..., K), float64."""
        return self.shrunk(shrinkage).solve(rhs.double())

    def _require(self, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(
                f"a reference group needs at least {minimum} embeddings for its "
                f"{'covariance' if minimum > 1 else 'mean'}, this one has {self.count}; "
                "add references (or choose a larger group)"
            )

    def tensors(self) -> dict[str, Tensor]:
        """The statistics as named tensors (what ``save`` writes)."""
        tensors = {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "sum": self.sum,
            "outer": self.outer,
            "moment3": self.moment3,
            "moment4": self.moment4.reshape(1),
        }
        if self.embeddings is not None:
            tensors["embeddings"] = self.embeddings
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> ReferenceStats:
        """Rebuild statistics from ``tensors()`` output."""
        missing = {"count", "sum", "outer", "moment3", "moment4"} - set(tensors)
        if missing:
            raise ValueError(f"not a whycam statistics file: missing {', '.join(sorted(missing))}")
        stats = cls(tensors["sum"].shape[0], meta=meta)
        stats.count = int(tensors["count"].reshape(-1)[0])
        stats.sum, stats.outer = tensors["sum"].double(), tensors["outer"].double()
        stats.moment3, stats.moment4 = tensors["moment3"].double(), tensors["moment4"].double().reshape(())
        stats.embeddings = tensors["embeddings"].double() if "embeddings" in tensors else None
        return stats

    def save(self, path: str | Path) -> Path:
        """Write to ``.safetensors`` or ``.npz`` (tensors + string metadata; no pickle)."""
        return write_tensors(path, self.tensors(), {**self.meta, "kind": "ReferenceStats"})

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        """Read statistics written by ``save``."""
        tensors, meta = read_tensors(path, "ReferenceStats")
        return cls.from_tensors(tensors, meta)

    def __repr__(self) -> str:
        described = ", ".join(f"{k}={self.meta[k]}" for k in ("layer", "embedding") if k in self.meta)
        return f"ReferenceStats(count={self.count}, dim={self.dim}{', ' + described if described else ''})"


class ReferenceBank:
    """Per-class reference statistics, combined on demand into any group of classes.

    Fit once on labelled embeddings (``DiffCAM.fit`` on batches of (images, labels) builds one), then
    ``group([3, 5])``, ``all_but(6)`` or ``all()``: exact merges, no model run. Memory is
    O(classes * K^2): 32 MB per class for K = 2048.
    """

    def __init__(self, classes: Mapping[Label, ReferenceStats] | None = None):
        self.classes: dict[Label, ReferenceStats] = dict(classes or {})
        self._groups: dict[frozenset, ReferenceStats] = {}

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Tensor,
        labels: Tensor | Iterable[Label],
        *,
        meta: Mapping[str, str] | None = None,
        keep_embeddings: bool = False,
    ) -> ReferenceBank:
        """A bank from (n, K) embeddings and their n labels."""
        return cls().update(embeddings, labels, meta=meta, keep_embeddings=keep_embeddings)

    def update(
        self,
        embeddings: Tensor,
        labels: Tensor | Iterable[Label],
        *,
        meta: Mapping[str, str] | None = None,
        keep_embeddings: bool = False,
    ) -> ReferenceBank:
        """Add a batch of (n, K) embeddings with their n labels (ints or strings)."""
        embeddings = _as_embeddings(embeddings)
        labels = labels.tolist() if isinstance(labels, Tensor) else list(labels)
        if len(labels) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} embeddings but {len(labels)} labels; give one label each")
        for label in dict.fromkeys(labels):
            rows = torch.tensor([i for i, lab in enumerate(labels) if lab == label], device=embeddings.device)
            if label not in self.classes:
                self.classes[label] = ReferenceStats(embeddings.shape[1], meta=meta, keep_embeddings=keep_embeddings)
            self.classes[label].update(embeddings[rows])
        self._groups.clear()
        return self

    @property
    def labels(self) -> list[Label]:
        return list(self.classes)

    @property
    def meta(self) -> dict[str, str]:
        return next(iter(self.classes.values())).meta if self.classes else {}

    def __getitem__(self, label: Label) -> ReferenceStats:
        return self.group([label])

    def group(self, labels: Label | Iterable[Label]) -> ReferenceStats:
        """The statistics of the union of ``labels`` (one label or several), merged exactly; cached."""
        chosen = _label_list(labels)
        unknown = [label for label in chosen if label not in self.classes]
        if unknown or not chosen:
            raise KeyError(
                f"the bank has no class {unknown[0]!r}; its classes are {self.labels}"
                if unknown
                else "the group is empty; name at least one class"
            )
        key = frozenset(chosen)
        if key not in self._groups:
            self._groups[key] = sum(self.classes[label] for label in self.classes if label in key)
        return self._groups[key]

    def all_but(self, labels: Label | Iterable[Label]) -> ReferenceStats:
        """Every class except ``labels``: the reference of "why is this a c?"."""
        excluded = _label_list(labels)
        unknown = [label for label in excluded if label not in self.classes]
        if unknown:
            raise KeyError(f"the bank has no class {unknown[0]!r}; its classes are {self.labels}")
        rest = [label for label in self.classes if label not in excluded]
        if not rest:
            raise ValueError("no class is left once these are excluded; the bank needs other classes")
        return self.group(rest)

    def all(self) -> ReferenceStats:
        """Every class together."""
        return self.group(self.labels)

    def save(self, path: str | Path) -> Path:
        """Write every class's statistics to one ``.safetensors`` or ``.npz`` file (no pickle)."""
        if not self.classes:
            raise ValueError("the bank is empty; fit it before saving")
        tensors = {
            f"{i}.{name}": tensor
            for i, stats in enumerate(self.classes.values())
            for name, tensor in stats.tensors().items()
        }
        return write_tensors(path, tensors, {**self.meta, "kind": "ReferenceBank", "labels": json.dumps(self.labels)})

    @classmethod
    def load(cls, path: str | Path) -> ReferenceBank:
        """Read a bank written by ``save``."""
        tensors, meta = read_tensors(path, "ReferenceBank")
        labels = json.loads(meta.pop("labels"))
        per_class: list[dict[str, Tensor]] = [{} for _ in labels]
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            per_class[int(index)][key] = tensor
        return cls(
            {label: ReferenceStats.from_tensors(stats, meta) for label, stats in zip(labels, per_class, strict=True)}
        )

    def __repr__(self) -> str:
        more = "..." if len(self.classes) > 10 else ""
        return f"ReferenceBank({len(self.classes)} classes: {self.labels[:10]}{more})"


def nearest_solve(embeddings: Tensor, targets: Tensor, k: int, shrinkage: Shrinkage) -> Tensor:
    """``S_b^-1 (t_b - m_b)`` for each target t_b, with m_b, S_b the mean and shrunk covariance of its k
    nearest embeddings (Euclidean), batched.

    With X_b the (k, K) centred neighbours, S_b = a X_b^T X_b / k + b I; by the Woodbury identity
    S_b^-1 v = (v - X_b^T (b k I + a X_b X_b^T)^-1 a X_b v) / b, a k x k Cholesky solve per target.
    The shrinkage intensity comes from the Gram matrix X_b X_b^T with the same formulas as
    ``ReferenceStats``, so it equals the full-covariance result exactly.
    """
    n, dim = embeddings.shape
    if not 2 <= k <= n:
        raise ValueError(
            f"k={k} nearest references, but the reference group has {n} embeddings; "
            "use 2 <= k <= the number of references"
        )
    targets = targets.to(embeddings)
    nearest = torch.cdist(targets, embeddings).topk(k, dim=1, largest=False).indices  # (B, k)
    neighbours = embeddings[nearest]  # (B, k, K)
    mean = neighbours.mean(1)
    centred = neighbours - mean[:, None]
    gram = centred @ centred.transpose(1, 2)  # (B, k, k)
    norms = gram.diagonal(dim1=1, dim2=2)
    _, a, b = shrinkage_coefficients(
        shrinkage, k, dim, norms.sum(1) / k, (gram**2).sum((1, 2)) / k**2, (norms**2).mean(1)
    )
    if bool((b <= 0).any()):
        raise ValueError(
            f"with k={k} nearest references the shrinkage must leave a positive ridge "
            f"(the covariance of k points in {dim} dimensions is singular); use "
            "'ledoit-wolf', 'oas', a fixed value in (0, 1] or ('ridge', value > 0)"
        )
    v = targets - mean
    inner = a[:, None, None] * gram + (b * k)[:, None, None] * torch.eye(k).to(gram)
    factor, info = torch.linalg.cholesky_ex(inner)
    if bool((info != 0).any()):
        raise _singular_error(k, dim)
    projected = (centred @ v[:, :, None]) * a[:, None, None]  # (B, k, 1)
    correction = centred.transpose(1, 2) @ torch.cholesky_solve(projected, factor)  # (B, K, 1)
    return (v - correction[:, :, 0]) / b[:, None]


def write_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> Path:
    """Write named tensors and string metadata to ``.safetensors`` or ``.npz`` (``allow_pickle=False``)."""
    path = Path(path)
    meta = {**{k: str(v) for k, v in meta.items()}, "whycam_format": FORMAT_VERSION}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    elif path.suffix == ".npz":
        with path.open("wb") as handle:
            arrays = {k: v.numpy() for k, v in tensors.items()}
            np.savez(handle, **arrays, __meta__=np.array(json.dumps(meta)))
    else:
        raise ValueError(f"cannot tell the format of {path.name!r}: name it *.safetensors or *.npz")
    return path


def read_tensors(path: str | Path, kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read what ``write_tensors`` wrote, refusing another kind of file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no statistics file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["__meta__"])) if "__meta__" in archive else {}
            tensors = {k: torch.from_numpy(archive[k].copy()) for k in archive.files if k != "__meta__"}
    else:
        raise ValueError(f"cannot tell the format of {path.name!r}: whycam reads *.safetensors and *.npz")
    if meta.get("kind") != kind:
        found = f"a {meta['kind']}" if "kind" in meta else "no whycam statistics"
        raise ValueError(f"{path.name} holds {found}, not a {kind}; load it with the class that saved it")
    meta.pop("kind")
    meta.pop("whycam_format", None)
    return tensors, meta


def _as_embeddings(embeddings: object, dim: int | None = None) -> Tensor:
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"embeddings must be an (n, K) tensor, not {type(embeddings).__name__}")
    if embeddings.dim() != 2 or (dim is not None and embeddings.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, K)"
        raise ValueError(f"embeddings must be {want}; got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinity")
    return embeddings


def _label_list(labels: Label | Iterable[Label]) -> list[Label]:
    if isinstance(labels, Tensor):
        return labels.reshape(-1).tolist()
    if isinstance(labels, (str, bytes, int)) or not isinstance(labels, Iterable):
        return [labels]
    return list(labels)
