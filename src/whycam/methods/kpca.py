"""KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA, the activations' first kernel
principal component.

With x_i the (hw, K) activations centred per channel, kappa the kernel, Kc the doubly centred kernel
matrix (Kc = K - 1K - K1 + 1K1, 1 the matrix of 1/hw) and (lambda, v) its largest eigenpair, the map
is the first kernel principal score M = sqrt(lambda) v (scikit-learn's ``KernelPCA.fit_transform``).
Kernels and defaults are scikit-learn's, the default kernel pytorch-grad-cam's: ``"sigmoid"``
tanh(gamma x.y + 1), ``"rbf"`` exp(-gamma |x - y|^2), ``"poly"`` (gamma x.y + 1)^3, ``"linear"``
x.y (Eigen-CAM), ``"cosine"``; gamma = 1/K by default. The sign, which an eigenvector does not
fix, is chosen as in ``EigenCAM`` (``cam.orient``): M correlates positively with the channel-mean
activation, or, where that mean carries no signal, its largest entry is positive.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import CAMExplainer, LayerPass, register
from .cam import orient

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")
MAX_CELLS = 4096  # a 64x64 grid: a 128 MiB kernel matrix per image, its eigendecomposition seconds


def kernel_matrix(x: Tensor, kernel: str, gamma: float) -> Tensor:
    """The (B, n, n) kernel matrix of the rows of x (B, n, K)."""
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + 1)
    if kernel == "poly":
        return (gamma * dot + 1) ** 3
    if kernel == "rbf":
        squared = x.pow(2).sum(2)
        return torch.exp(-gamma * (squared[:, :, None] + squared[:, None, :] - 2 * dot).clamp(min=0))
    norms = x.norm(dim=2).clamp(min=torch.finfo(x.dtype).tiny)
    return dot / (norms[:, :, None] * norms[:, None, :])


@register
class KPCACAM(CAMExplainer):
    """KPCA-CAM: projection on the activations' first kernel principal component (class-agnostic).

    ``kernel``: one of ``KERNELS`` (default ``"sigmoid"``); ``gamma``: the kernel's scale (default 1/K).
    """

    name = "kpcacam"
    summary = "KPCA-CAM: projection on the activations' first kernel principal component (class-agnostic)."
    uses_gradient = False
    needs_target = False

    def __init__(self, model, layer=None, *, kernel: str = "sigmoid", gamma: float | None = None, **options):
        super().__init__(model, layer, **options)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if gamma is not None and not gamma > 0:
            raise ValueError(f"gamma must be > 0 (or None for 1 / channels), got {gamma!r}")
        self.kernel, self.gamma = kernel, gamma

    def layer_map(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        batch, channels, *grid = activation.shape  # (B, K, h, w), or (B, K, d, h, w) for volumes
        cells = activation[0, 0].numel()
        if cells > MAX_CELLS:
            raise ValueError(
                f"KPCA-CAM's kernel PCA over the layer's {cells} cells ({'x'.join(map(str, grid))}) needs a "
                f"{cells}x{cells} kernel matrix per image ({cells**2 * 8 / 2**30:.1f} GiB) and O(cells^3) time; "
                f"choose a coarser layer (layer='<dotted name>', at most {MAX_CELLS} cells), or use eigencam"
            )
        x = activation.double().flatten(2).transpose(1, 2)  # (B, cells, K)
        x = x - x.mean(1, keepdim=True)
        gram = kernel_matrix(x, self.kernel, 1.0 / channels if self.gamma is None else self.gamma)
        gram = gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True) + gram.mean((1, 2), keepdim=True)
        values, vectors = torch.linalg.eigh(gram)
        projection = vectors[:, :, -1] * values[:, -1:].clamp(min=0).sqrt()  # (B, hw)
        return orient(projection, activation).reshape(batch, *grid).to(activation.dtype)
