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
``S = C + lambda I``. S^-1 is computed once per shrinkage setting (from a Cholesky factor, which
also proves S positive definite) and cached, so that solving ``S^-1 v`` for a new image is one
matrix-vector product.

Statistics carry string metadata (model fingerprint, layer, embedding, ...; see ``identity``) and
save to safetensors or npz, never a pickle (see ``io``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from .errors import NotFittedError
from .identity import check_compatible
from .io import read_tensors, write_tensors

Shrinkage = str | float | tuple[str, float]


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
    """A shrunk covariance ``S = a C + b I``, how it was chosen, its lower Cholesky factor L, and
    (computed at the first solve, then kept) its inverse ``S^-1 = L^-T L^-1``."""

    method: str
    intensity: float
    covariance: Tensor
    factor: Tensor

    @cached_property
    def inverse(self) -> Tensor:
        """S^-1 (K, K), float64, symmetric: the part of every solve that does not depend on the image."""
        inverse = torch.cholesky_inverse(self.factor)
        return (inverse + inverse.mT) / 2

    def solve(self, rhs: Tensor) -> Tensor:
        """``S^-1 v`` for each row v of ``rhs`` (..., K): one product with the cached ``inverse``."""
        return (rhs.reshape(-1, rhs.shape[-1]).to(self.inverse) @ self.inverse).reshape(rhs.shape)


class ReferenceStats:
    """Sufficient statistics of a group of embeddings: streaming, mergeable, saved without pickles.

    ``dim`` (K), ``meta`` (string metadata), ``keep_embeddings`` (also keep the embeddings themselves,
    memory O(n K), which DiffCAM's nearest-reference option needs) and ``device`` are set at
    construction; what ``update`` accumulates ends in ``_``, as scikit-learn's fitted state: ``count_``,
    ``sum_``, ``outer_``, ``moment3_``, ``moment4_``, ``embeddings_`` (None unless kept) and the
    derived ``mean_``. Asking an empty group for its mean or covariance raises ``NotFittedError``.
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
        self.keep_embeddings = keep_embeddings
        self.device = device
        self.count_ = 0
        self.sum_ = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer_ = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.moment3_ = torch.zeros(dim, dtype=torch.float64, device=device)
        self.moment4_ = torch.zeros((), dtype=torch.float64, device=device)
        self.embeddings_: Tensor | None = (
            torch.zeros(0, dim, dtype=torch.float64, device=device) if keep_embeddings else None
        )
        self._shrunk: dict[tuple[str, float | None], Shrunk] = {}

    @classmethod
    def from_embeddings(
        cls, embeddings: Tensor, *, meta: Mapping[str, str] | None = None, keep_embeddings: bool = False
    ) -> ReferenceStats:
        """The statistics of an (n, K) tensor of embeddings."""
        embeddings = as_embeddings(embeddings)
        return cls(embeddings.shape[1], meta=meta, keep_embeddings=keep_embeddings, device=embeddings.device).update(
            embeddings
        )

    def update(self, embeddings: Tensor) -> ReferenceStats:
        """Add a batch of (n, K) embeddings (streaming; the result does not depend on the batching)."""
        x = as_embeddings(embeddings, self.dim).to(self.sum_.device, torch.float64)
        norms = (x * x).sum(1)
        self.count_ += x.shape[0]
        self.sum_ += x.sum(0)
        self.outer_ += x.T @ x
        self.moment3_ += norms @ x
        self.moment4_ += (norms * norms).sum()
        if self.embeddings_ is not None:
            self.embeddings_ = torch.cat([self.embeddings_, x])
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
        keep = self.embeddings_ is not None and other.embeddings_ is not None
        merged = ReferenceStats(self.dim, meta=meta, keep_embeddings=keep, device=self.sum_.device)
        merged.count_ = self.count_ + other.count_
        for name in ("sum_", "outer_", "moment3_", "moment4_"):
            setattr(merged, name, getattr(self, name) + getattr(other, name).to(self.sum_.device))
        if keep:
            merged.embeddings_ = torch.cat([self.embeddings_, other.embeddings_.to(self.sum_.device)])
        return merged

    def __add__(self, other: ReferenceStats) -> ReferenceStats:
        return self.merge(other)

    def __radd__(self, other: object) -> ReferenceStats:
        if isinstance(other, int) and other == 0:  # sum([a, b, c]) starts from 0
            return self
        return NotImplemented

    @property
    def mean_(self) -> Tensor:
        """m = s / n."""
        self._require(1)
        return self.sum_ / self.count_

    def empirical_covariance(self) -> Tensor:
        """C = Q / n - m m^T (the maximum-likelihood estimate, divided by n)."""
        self._require(2)
        mean = self.mean_
        covariance = self.outer_ / self.count_ - torch.outer(mean, mean)
        return (covariance + covariance.T) / 2

    def covariance(self, shrinkage: Shrinkage = "ledoit-wolf") -> Tensor:
        """The shrunk covariance S (K, K) for ``shrinkage`` (see ``shrunk``)."""
        return self.shrunk(shrinkage).covariance

    def shrunk(self, shrinkage: Shrinkage = "ledoit-wolf") -> Shrunk:
        """The shrunk covariance, its method, intensity and Cholesky factor (cached per setting)."""
        key = parse_shrinkage(shrinkage)
        if key not in self._shrunk:
            covariance = self.empirical_covariance()
            n, mean = self.count_, self.mean_
            trace = covariance.diagonal().sum()
            centred4 = (
                self.moment4_
                - 4 * self.moment3_ @ mean
                + 4 * mean @ self.outer_ @ mean
                + 2 * (mean @ mean) * self.outer_.diagonal().sum()
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
        if self.count_ == 0:
            raise NotFittedError(
                f"this ReferenceStats holds no embeddings yet: update(embeddings) first (it needs at least {minimum})"
            )
        if self.count_ < minimum:
            raise ValueError(
                f"a reference group needs at least {minimum} embeddings for its "
                f"{'covariance' if minimum > 1 else 'mean'}, this one has {self.count_}; "
                "add references (or choose a larger group)"
            )

    def tensors(self) -> dict[str, Tensor]:
        """The statistics as named tensors (what ``save`` writes)."""
        tensors = {
            "count": torch.tensor([self.count_], dtype=torch.int64),
            "sum": self.sum_,
            "outer": self.outer_,
            "moment3": self.moment3_,
            "moment4": self.moment4_.reshape(1),
        }
        if self.embeddings_ is not None:
            tensors["embeddings"] = self.embeddings_
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> ReferenceStats:
        """Rebuild statistics from ``tensors()`` output."""
        missing = {"count", "sum", "outer", "moment3", "moment4"} - set(tensors)
        if missing:
            raise ValueError(f"not a whycam statistics file: missing {', '.join(sorted(missing))}")
        stats = cls(tensors["sum"].shape[0], meta=meta, keep_embeddings="embeddings" in tensors)
        stats.count_ = int(tensors["count"].reshape(-1)[0])
        stats.sum_, stats.outer_ = tensors["sum"].double(), tensors["outer"].double()
        stats.moment3_, stats.moment4_ = tensors["moment3"].double(), tensors["moment4"].double().reshape(())
        stats.embeddings_ = tensors["embeddings"].double() if "embeddings" in tensors else None
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
        return f"ReferenceStats(count={self.count_}, dim={self.dim}{', ' + described if described else ''})"


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


def as_embeddings(embeddings: object, dim: int | None = None) -> Tensor:
    """``embeddings``, refused unless a finite (n, K) tensor (with K = ``dim`` when given)."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"embeddings must be an (n, K) tensor, not {type(embeddings).__name__}")
    if embeddings.dim() != 2 or (dim is not None and embeddings.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, K)"
        raise ValueError(f"embeddings must be {want}; got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinity")
    return embeddings
