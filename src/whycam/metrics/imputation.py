"""Noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022): removed pixels are filled in from their neighbours.

Each removed pixel ``i`` becomes the weighted mean of its 8 neighbours ``j`` (weight 1/6 for the 4
edge neighbours, 1/12 for the 4 diagonal ones; neighbours outside the image are dropped and the
weights renormalised):

    D_i x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j,      D_i = sum_{j in image} w_ij

one linear system per image and channel, then Gaussian noise of standard deviation ``noise`` is
added to the imputed pixels. The matrix ``D - W`` restricted to the removed pixels is a graph
Laplacian with the kept pixels as a Dirichlet boundary: symmetric positive definite and diagonally
dominant (singular only when every pixel of an image is removed).

On the CPU it is solved directly, like pytorch-grad-cam's imputer, but for the removed pixels only
(the kept ones are on the right-hand side), with the matrix built by array operations in a nested
dissection order (recursive bisection of the grid by lines of pixels; a line separates the two halves
of an 8-neighbour grid) so that SuperLU factorises it without pivoting (symmetric mode) and with less
fill; the three channels share the factorisation. Images on an accelerator are solved where they are, by
conjugate gradients preconditioned with a geometric multigrid V-cycle, for every image and channel at
once; the stencil is applied by shifted additions. The Jacobi smoother is undamped: this stencil's
high-frequency eigenvalues lie in [2/3, 4/3] (relative to the diagonal), where weight 1 gives the best
smoothing factor, 1/3.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import splu
from torch import Tensor


def noisy_linear_impute(
    images: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0, *, tol: float = 1e-7, max_iter: int = 500
) -> Tensor:
    """Fill the ``removed`` pixels (bool (B, H, W)) of ``images`` (B, C, H, W) by noisy linear imputation.

    The imputation works in the space of the values given: pass the images the model sees
    (normalised) to impute after normalisation, as ROAD and pytorch-grad-cam do. The noise for image
    ``i`` is drawn from a generator seeded with ``seed + i``; ``noise=0`` gives the exact solution.
    ``tol`` and ``max_iter`` apply to the iterative solver (images on an accelerator): it stops when
    every system's residual is below ``tol`` times its right-hand side.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float (B, C, H, W) tensor; got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    removed = as_pixel_mask(removed, images)
    return impute(
        images, removed, noise_fields(images, range(images.shape[0]), seed) * noise, tol=tol, max_iter=max_iter
    )


def as_pixel_mask(removed: Tensor, images: Tensor) -> Tensor:
    """Check a (B, H, W) mask against (B, C, H, W) images and return it as bool on their device."""
    expected = (images.shape[0], *images.shape[-2:])
    if not isinstance(removed, Tensor) or tuple(removed.shape) != expected:
        got = tuple(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ValueError(f"the removed mask must be a (B, H, W) = {expected} tensor; got {got}")
    removed = removed.to(images.device).bool()
    full = removed.flatten(1).all(1)
    if full.any():
        raise ValueError(
            f"every pixel of image(s) {full.nonzero().flatten().tolist()} is removed: nothing "
            "is left to impute from; remove fewer pixels"
        )
    return removed


def noise_fields(images: Tensor, indices, seed: int) -> Tensor:
    """Standard normal noise (B, C, H, W), image ``i`` drawn from a generator seeded with ``seed + i``."""
    fields = []
    for index in indices:
        generator = torch.Generator(device=images.device).manual_seed(seed + index)
        fields.append(torch.randn(images.shape[1:], generator=generator, device=images.device))
    return torch.stack(fields).to(images.dtype)


def impute(
    images: Tensor, removed: Tensor, noise: Tensor | None = None, *, tol: float = 1e-7, max_iter: int = 500
) -> Tensor:
    """Linear imputation of ``removed`` (bool (B, H, W), checked), plus ``noise`` on imputed pixels:
    a direct solve on the CPU, multigrid-preconditioned CG (``tol``, ``max_iter``) elsewhere."""
    solve = _direct if images.device.type == "cpu" else _iterative
    filled = solve(images, removed, tol=tol, max_iter=max_iter)
    if noise is not None:
        filled = filled + noise * removed[:, None]
    return filled


_NEIGHBOURS = tuple(
    (dr, dc, 1 / 12 if dr and dc else 1 / 6) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc
)  # (row offset, column offset, weight)


def _direct(images: Tensor, removed: Tensor, **_) -> Tensor:
    """Sparse direct solve per image of the removed pixels' system (float64), channels as columns."""
    batch, channels, height, width = images.shape
    values = images.detach().double().reshape(batch, channels, -1).numpy().copy()
    key = _dissection_order(height, width)
    for image, mask in enumerate(removed.reshape(batch, -1).numpy()):
        pixels = np.flatnonzero(mask)
        if pixels.size == 0:
            continue
        pixels = pixels[np.argsort(key[pixels], kind="stable")]
        position = np.full(height * width, -1)
        position[pixels] = np.arange(pixels.size)
        row, col = np.divmod(pixels, width)
        diagonal = np.zeros(pixels.size)
        rhs = np.zeros((pixels.size, channels))
        rows, cols, entries = [np.arange(pixels.size)], [np.arange(pixels.size)], [diagonal]
        for dr, dc, weight in _NEIGHBOURS:
            r, c = row + dr, col + dc
            inside = np.flatnonzero((r >= 0) & (r < height) & (c >= 0) & (c < width))
            diagonal[inside] += weight
            neighbour = r[inside] * width + c[inside]
            other = position[neighbour]
            unknown = other >= 0
            rows.append(inside[unknown])
            cols.append(other[unknown])
            entries.append(np.full(unknown.sum(), -weight))
            rhs[inside[~unknown]] += weight * values[image][:, neighbour[~unknown]].T
        matrix = csc_matrix(
            (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))), shape=(pixels.size,) * 2
        )
        factor = splu(matrix, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        values[image][:, pixels] = factor.solve(rhs).T
    return torch.from_numpy(values).reshape(images.shape).to(images.dtype)


@lru_cache(maxsize=8)
def _dissection_order(height: int, width: int, leaf: int = 16) -> np.ndarray:
    """Nested dissection rank of every pixel of a (height, width) grid: each half is numbered before
    the line of pixels between them, recursively down to blocks of ``leaf`` pixels (row-major)."""
    rank = np.zeros((height, width), np.int64)
    count = 0

    def number(rows: slice, cols: slice) -> None:
        nonlocal count
        block = rank[rows, cols]
        h, w = block.shape
        if h * w <= leaf or max(h, w) < 3:
            block[...] = count + np.arange(h * w).reshape(h, w)
            count += h * w
        elif h >= w:
            middle = rows.start + h // 2
            number(slice(rows.start, middle), cols)
            number(slice(middle + 1, rows.stop), cols)
            number(slice(middle, middle + 1), cols)
        else:
            middle = cols.start + w // 2
            number(rows, slice(cols.start, middle))
            number(rows, slice(middle + 1, cols.stop))
            number(rows, slice(middle, middle + 1))

    number(slice(0, height), slice(0, width))
    return rank.ravel()


def _iterative(images: Tensor, removed: Tensor, *, tol: float, max_iter: int) -> Tensor:
    """Multigrid-preconditioned CG, mixed precision: conjugate gradients in float32 solve for a
    correction to a relative accuracy of 1e-4, the residual is recomputed in float64 and the
    correction repeated (iterative refinement) until the float64 residual is below ``tol`` times the
    right-hand side."""
    batch, channels, height, width = images.shape
    values = images.double().reshape(batch * channels, 1, height, width)
    unknown = removed[:, None].repeat_interleave(channels, 0)
    fine = _Level(unknown.double())
    levels = _hierarchy(unknown.float())
    rhs = _neighbour_sum(values * (~unknown)) * unknown
    bound = tol * rhs.square().sum((1, 2, 3), keepdim=True).sqrt()
    solution, residual, iterations = torch.zeros_like(rhs), rhs, 0
    while (residual.square().sum((1, 2, 3), keepdim=True).sqrt() > bound).any():
        correction, used = _conjugate_gradients(levels, residual.float(), 1e-4, max_iter - iterations)
        if used == 0:  # the residual is below float32's range: nothing left to correct
            break
        iterations += used
        solution = solution + correction.double()
        residual = rhs - fine.apply(solution)
    return torch.where(unknown, solution, values).reshape(images.shape).to(images.dtype)


def _neighbour_sum(x: Tensor) -> Tensor:
    """``sum_j w_ij x_j`` over the 8 neighbours inside the image, for (N, 1, H, W) ``x``.

    The stencil is ``[1 2 1]^T [1 2 1] / 12`` minus the centre's 4/12: two separable passes of
    shifted additions, several times faster on the CPU than a one-channel convolution.
    """
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (padded[..., :-2, :] + padded[..., 2:, :]).add_(padded[..., 1:-1, :], alpha=2)
    both = (rows[..., :-2] + rows[..., 2:]).add_(rows[..., 1:-1], alpha=2)
    return both.mul_(1 / 12).sub_(x, alpha=1 / 3)


class _Level:
    """One grid of the multigrid hierarchy: its unknown mask, the operator's diagonal, the Jacobi step."""

    def __init__(self, unknown: Tensor, weight: float = 1.0):
        self.unknown = unknown
        self.diagonal = _neighbour_sum(torch.ones_like(unknown[:1]))  # D_i: 1 inside, less on the border
        self.jacobi = unknown * (weight / self.diagonal)

    def apply(self, x: Tensor) -> Tensor:
        """``(D - W) x`` on the unknown pixels, for ``x`` zero elsewhere."""
        return (self.diagonal * x - _neighbour_sum(x)) * self.unknown

    def smooth(self, x: Tensor | None, residual: Tensor, steps: int) -> Tensor:
        """Damped Jacobi sweeps on ``A x = residual`` from ``x`` (None: zero); symmetric in the V-cycle."""
        for _ in range(steps):
            if x is None:
                x = self.jacobi * residual
            else:
                x = torch.addcmul(x, self.jacobi, residual - self.diagonal * x + _neighbour_sum(x))
        return x


def _hierarchy(unknown: Tensor, coarsest: int = 8) -> list[_Level]:
    """Levels from fine to coarse; a coarse pixel is unknown when all its 2x2 children are."""
    levels = [_Level(unknown)]
    while min(levels[-1].unknown.shape[-2:]) >= 2 * coarsest:
        coarse = -F.max_pool2d(-levels[-1].unknown, 3, stride=2, padding=1)
        levels.append(_Level(coarse))
    return levels


def _restrict_axis(x: Tensor, dim: int) -> Tensor:
    """``r_i = x_(2i) + (x_(2i-1) + x_(2i+1)) / 2`` along ``dim`` (zero outside), length ceil(n/2)."""
    if x.shape[dim] % 2:
        x = _pad_end(x, dim)
    even, odd = x.unflatten(dim, (-1, 2)).unbind(dim + 1)
    before = torch.cat([torch.zeros_like(odd.narrow(dim, 0, 1)), odd.narrow(dim, 0, odd.shape[dim] - 1)], dim)
    return even + 0.5 * (odd + before)


def _prolong_axis(x: Tensor, dim: int, size: int) -> Tensor:
    """Linear interpolation along ``dim``: ``f_(2i) = x_i``, ``f_(2i+1) = (x_i + x_(i+1)) / 2``
    (zero beyond the end); the transpose of ``_restrict_axis``. Cut to ``size``."""
    after = torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), torch.zeros_like(x.narrow(dim, 0, 1))], dim)
    return torch.stack([x, 0.5 * (x + after)], dim + 1).flatten(dim, dim + 1).narrow(dim, 0, size)


def _pad_end(x: Tensor, dim: int) -> Tensor:
    return torch.cat([x, torch.zeros_like(x.narrow(dim, 0, 1))], dim)


def _restrict(x: Tensor) -> Tensor:
    """Transpose of bilinear prolongation: (N, 1, H, W) -> (N, 1, ceil(H/2), ceil(W/2))."""
    return _restrict_axis(_restrict_axis(x, 2), 3)


def _prolong(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear prolongation from a coarse grid to a fine grid of ``size``."""
    return _prolong_axis(_prolong_axis(x, 2, size[0]), 3, size[1])


def _v_cycle(levels: list[_Level], residual: Tensor, depth: int = 0, sweeps: int = 2) -> Tensor:
    """Symmetric multigrid V-cycle approximating ``A^-1 residual`` (the CG preconditioner)."""
    level = levels[depth]
    if depth == len(levels) - 1:
        return level.smooth(None, residual, 20)
    x = level.smooth(None, residual, sweeps)
    coarse_unknown = levels[depth + 1].unknown
    coarse = _v_cycle(levels, _restrict(residual - level.apply(x)) * coarse_unknown, depth + 1, sweeps)
    x = torch.addcmul(x, _prolong(coarse, residual.shape[-2:]), level.unknown)
    return level.smooth(x, residual, sweeps)


def _conjugate_gradients(levels: list[_Level], rhs: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Preconditioned CG on every (N, 1, H, W) system at once, until all residuals are below ``tol``
    times their right-hand side; returns the solution and the number of iterations."""
    fine = levels[0]
    dims = (1, 2, 3)
    tiny = torch.finfo(rhs.dtype).tiny
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    bound = (tol * rhs.square().sum(dims, keepdim=True).sqrt()).clamp(min=tiny)
    z = _v_cycle(levels, residual)
    direction = z
    rz = (residual * z).sum(dims, keepdim=True)
    for iteration in range(max_iter):
        if (residual.square().sum(dims, keepdim=True).sqrt() <= bound).all():
            return x, iteration
        product = fine.apply(direction)
        step = rz / (direction * product).sum(dims, keepdim=True).clamp(min=tiny)
        x = x + step * direction
        residual = residual - step * product
        z = _v_cycle(levels, residual)
        rz_next = (residual * z).sum(dims, keepdim=True)
        direction = z + (rz_next / rz.clamp(min=tiny)) * direction
        rz = rz_next
    raise RuntimeError(f"noisy linear imputation did not converge in {max_iter} iterations; raise max_iter or tol")
