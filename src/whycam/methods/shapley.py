"""ShapleyCAM (Cai et al., 2025, "CAMs as Shapley value-based explainers"): Grad-CAM's weights with
a second-order term, the Shapley value of each channel under a quadratic expansion of the score:

    w_k = mean_ij (G - 1/2 H A)_kij,   G = dy_c/dA,   H A = d(G . A)/dA (a Hessian-vector product),

with the product taken in A's own layout, as pytorch-grad-cam does. Where the network after the
layer is piecewise linear (ReLU, max pooling, a linear head), H A = 0 and ShapleyCAM is Grad-CAM.
Attention runs on PyTorch's math kernel, the one whose backward is differentiable again.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import register
from .cam import GradCAM


@register
class ShapleyCAM(GradCAM):
    """ShapleyCAM: channel weights ``mean_ij (G - 1/2 H A)`` (one gradient and one
    Hessian-vector product, both to the tapped layer only)."""

    name = "shapleycam"
    summary = "ShapleyCAM: Grad-CAM with a Hessian-vector correction (channels' Shapley values)."

    def attribute(self, images, target):
        with sdpa_kernel(SDPBackend.MATH):
            return super().attribute(images, target)

    def gradients(self, scores: Tensor, activations: list[Tensor]) -> list[Tensor]:
        gradients = torch.autograd.grad(scores.sum(), activations, create_graph=True)
        corrected = []
        for gradient, activation in zip(gradients, activations, strict=True):
            if gradient.requires_grad:
                hvp = _hessian_product(gradient, activation)
            else:  # the score is linear in the layer's output: H = 0
                hvp = None
            corrected.append(gradient.detach() if hvp is None else (gradient - 0.5 * hvp).detach())
        return corrected


def _hessian_product(gradient: Tensor, activation: Tensor) -> Tensor | None:
    """H A: the gradient's own gradient along the activation (a second backward pass)."""
    try:
        (hvp,) = torch.autograd.grad(
            gradient, activation, grad_outputs=activation.detach(), retain_graph=True, allow_unused=True
        )
    except RuntimeError as error:
        if "double backward" not in str(error):
            raise
        raise ValueError(
            f"ShapleyCAM needs second derivatives, which an operation of this model lacks ({error}); "
            "use gradcam or xgradcam instead"
        ) from None
    return hvp
