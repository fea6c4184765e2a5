"""The CAM family: one forward pass (and, for most, one backward pass to the tapped layer only).

Notation: A (B, K, h, w) the layer's activations, G = dy_c/dA their gradient for the target score y_c.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import CAMExplainer, LayerPass, grid_dims, register


@register
class CAM(CAMExplainer):
    """CAM (Zhou et al., CVPR 2016): w_k = W[c, k], the classifier's row for class c.

    Needs a model whose tapped layer is globally pooled into one linear layer; that layer is found
    as the last ``nn.Linear`` with K inputs, or given as ``classifier=``.
    """

    name = "cam"
    summary = "Class activation mapping: the classifier's weights on a GAP + linear head."
    uses_gradient = False

    def __init__(self, model: nn.Module, layer=None, *, classifier: str | nn.Linear | None = None, **options):
        super().__init__(model, layer, **options)
        self.classifier = classifier

    def _linear(self, channels: int) -> nn.Linear:
        if isinstance(self.classifier, nn.Linear):
            return self.classifier
        if isinstance(self.classifier, str):
            module = dict(self.model.named_modules()).get(self.classifier)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"classifier={self.classifier!r} is not an nn.Linear of the model")
            return module
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        if not linears:
            raise ValueError(
                f"CAM needs a global-pooling + linear head over the layer's {channels} "
                "channels, and the model has no nn.Linear with that many inputs; use GradCAM, "
                "or pass classifier=<the linear layer>"
            )
        return linears[-1]

    def _check_head(self, activation: Tensor, linear: nn.Linear, step: LayerPass) -> None:
        """Refuse a layer that is not globally average-pooled straight into ``linear``: the model's
        output must be W mean(A) + b, or the map would not be the classifier's evidence."""
        pooled = activation.mean(grid_dims(activation)) @ linear.weight.detach().T.to(activation.dtype)
        if linear.bias is not None:
            pooled = pooled + linear.bias.detach().to(activation.dtype)
        output = step.output
        if output.shape != pooled.shape or not torch.allclose(
            pooled, output.to(pooled.dtype), rtol=1e-3, atol=1e-4 * float(output.abs().max())
        ):
            raise ValueError(
                f"CAM needs the layer {step.name!r} to be globally average-pooled straight into the classifier "
                "(output = W mean(A) + b), and this model's output is not; use GradCAM, or pass the pooled "
                "layer as layer="
            )

    def weights(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        if step.classes is None:
            raise ValueError(
                "CAM explains a class through the classifier's row for it; give target as a class "
                "index (or None for the predicted class), not a callable"
            )
        linear = self._linear(activation.shape[1])
        if linear.in_features != activation.shape[1]:
            raise ValueError(
                f"the classifier has {linear.in_features} inputs, the layer {activation.shape[1]} channels"
            )
        self._check_head(activation, linear, step)
        rows = linear.weight.detach()[step.classes]
        return rows.view(*rows.shape, *[1] * len(grid_dims(activation))).to(activation.dtype)


@register
class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017): w_k = mean_ij G_kij."""

    name = "gradcam"
    summary = "Gradient-weighted CAM: channels weighted by their mean gradient."

    def weights(self, activation, gradient, step):
        return gradient.mean(grid_dims(gradient), keepdim=True)


@register
class GradCAMPlusPlus(CAMExplainer):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), exponential-score closed form:

    alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)   (0 where G = 0),   w_k = sum_ij alpha_kij ReLU(G_kij).
    """

    name = "gradcam++"
    summary = "Grad-CAM++: positive gradients weighted by second/third-order terms."

    def weights(self, activation, gradient, step):
        g2 = gradient.pow(2)
        denominator = 2 * g2 + activation.sum(grid_dims(activation), keepdim=True) * g2 * gradient
        alpha = torch.where(gradient != 0, g2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
        return (alpha * gradient.clamp(min=0)).sum(grid_dims(alpha), keepdim=True)


@register
class XGradCAM(CAMExplainer):
    """XGrad-CAM (Fu et al., BMVC 2020): w_k = sum_ij (A_kij / sum_ab A_kab) G_kij."""

    name = "xgradcam"
    summary = "Axiom-based Grad-CAM: gradients weighted by normalised activations."

    def weights(self, activation, gradient, step):
        total = activation.sum(grid_dims(activation), keepdim=True)
        total = torch.where(total != 0, total, 1.0)
        return (gradient * activation / total).sum(grid_dims(activation), keepdim=True)


@register
class HiResCAM(CAMExplainer):
    """HiResCAM (Draelos & Carin, 2020): M = sum_k G_k * A_k, element-wise (faithful to the score)."""

    name = "hirescam"
    summary = "HiResCAM: element-wise gradient times activation, summed over channels."

    def weights(self, activation, gradient, step):
        return gradient


@register
class LayerCAM(CAMExplainer):
    """LayerCAM (Jiang et al., TIP 2021): M = sum_k ReLU(G_k) * A_k, element-wise."""

    name = "layercam"
    summary = "LayerCAM: positive gradients times activations, element-wise; works on early layers."

    def weights(self, activation, gradient, step):
        return gradient.clamp(min=0)


def orient(projection: Tensor, activation: Tensor) -> Tensor:
    """A principal-component map (B, cells) signed to correlate positively with the channel-mean
    activation; where that mean carries no signal (a LayerNorm'd layer: zero mean per cell, up to
    rounding) or the two are uncorrelated within rounding, the largest entry is made positive
    (scikit-learn's convention), never a sign decided by rounding noise."""
    flat = activation.double().flatten(2)  # (B, K, cells)
    mean_map = flat.mean(1)
    mean_map = mean_map - mean_map.mean(1, keepdim=True)
    scale = flat.norm(dim=(1, 2)) / flat.shape[1] ** 0.5  # the norm of a map of one channel's size
    cosine = (projection * mean_map).sum(1) / (projection.norm(dim=1) * mean_map.norm(dim=1)).clamp(min=1e-300)
    telling = mean_map.norm(dim=1) * cosine.abs() > 1e-4 * scale
    largest = projection.gather(1, projection.abs().argmax(1, keepdim=True)).squeeze(1)
    sign = torch.where(telling, torch.sign(cosine), torch.sign(largest))
    return projection * torch.where(sign == 0, 1.0, sign)[:, None]


@register
class EigenCAM(CAMExplainer):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the activations' first principal component.

    With X the (hw, K) activations centred per channel and v_1 its first right singular vector (a
    thin SVD: never an hw x hw matrix), M = X v_1, with the sign chosen so that M correlates
    positively with the channel-mean activation (``orient``). No class, no gradient.
    """

    name = "eigencam"
    summary = "Eigen-CAM: projection on the activations' first principal component (class-agnostic)."
    uses_gradient = False
    needs_target = False

    def layer_map(self, activation, gradient, step):
        batch, grid = activation.shape[0], activation.shape[2:]
        x = activation.double().flatten(2).transpose(1, 2)  # (B, hw, K)
        x = x - x.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        projection = (x @ vh[:, 0, :, None]).squeeze(2)  # (B, hw)
        return orient(projection, activation).reshape(batch, *grid).to(activation.dtype)
