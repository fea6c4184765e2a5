"""Explanations read from a vision transformer's attention: attention rollout and gradient-weighted
attention relevance.

The attention probabilities A = softmax(q k^T * scale) (B, heads, N, N) of every self-attention
module are recomputed in a forward hook from the module's own q/k/v projections, and the module's
output is recomputed from them (A v, then its output projection) and handed on. The map does not
depend on whether timm or transformers run a fused kernel (which never forms A), and A is in the
autograd graph for the relevance rule. On its first call each module's recomputed output is
checked against its own output: attention that is not plain softmax(q k^T) v (relative position
bias, windows, masks) is refused instead of explained wrongly. Read: timm ``Attention`` (``qkv``),
Hugging Face attention (``q_proj``/``k_proj``/``v_proj``), ``torch.nn.MultiheadAttention`` (torchvision).

The map is the class token's row of the relevance matrix R over the patch tokens (for a model
without a class token, the mean of the patch tokens' rows), folded into the patch grid.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import token_layout
from ..targets import OutputSelector, Target, select_output, target_scores
from .base import Explainer, register


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        return "torch"
    if isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "num_heads"):
        return "timm"
    if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")) and any(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("o_proj", "out_proj")
    ):
        return "hf"
    return None


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` has a self-attention module whycam reads (what the attention methods explain)."""
    return any(_kind(m) is not None for m in model.modules())


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of ``model`` whycam reads, in order."""
    found = [m for m in model.modules() if _kind(m) is not None]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no attention module whycam reads (timm Attention, Hugging Face "
            "q_proj/k_proj/v_proj attention, torch.nn.MultiheadAttention); use a CAM method"
        )
    return found


def _heads(t: Tensor, heads: int) -> Tensor:
    batch, n, dim = t.shape
    return t.view(batch, n, heads, dim // heads).transpose(1, 2)


def _merge(t: Tensor) -> Tensor:
    batch, heads, n, dim = t.shape
    return t.transpose(1, 2).reshape(batch, n, heads * dim)


def attend(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, y)``: the attention probabilities (B, heads, N, N) of ``module`` on tokens x (B, N, D),
    and the module's output recomputed from them."""
    kind = _kind(module)
    if x.dim() != 3:
        raise ValueError(_not_plain(module))
    if kind == "timm":
        batch, n, _ = x.shape
        q, k, v = module.qkv(x).reshape(batch, n, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = getattr(module, "q_norm", nn.Identity())(q), getattr(module, "k_norm", nn.Identity())(k)
        a = ((q * module.scale) @ k.transpose(-2, -1)).softmax(-1)
        y = getattr(module, "norm", nn.Identity())(_merge(a @ v))
        if getattr(module, "gate", None) is not None:
            y = y * module.gate(x).sigmoid()
        return a, module.proj(y)
    if kind == "hf":
        heads = module.q_proj.out_features // module.head_dim
        q, k, v = (_heads(p(x), heads) for p in (module.q_proj, module.k_proj, module.v_proj))
        scale = getattr(module, "scaling", getattr(module, "scale", module.head_dim**-0.5))
        a = ((q @ k.transpose(-2, -1)) * scale).softmax(-1)
        out = module.o_proj if isinstance(getattr(module, "o_proj", None), nn.Linear) else module.out_proj
        return a, out(_merge(a @ v))
    tokens = x if module.batch_first else x.transpose(0, 1)
    q, k, v = F.linear(tokens, module.in_proj_weight, module.in_proj_bias).chunk(3, -1)
    q, k, v = (_heads(t, module.num_heads) for t in (q, k, v))
    a = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    y = module.out_proj(_merge(a @ v))
    return a, y if module.batch_first else y.transpose(0, 1)


def _not_plain(module: nn.Module) -> str:
    return (
        f"the attention of {type(module).__name__} is not plain softmax(q k^T) v over a token sequence (a position "
        "bias, windows or a mask): attention methods would misread it; use a CAM method"
    )


class AttentionExplainer(Explainer):
    """Base of the attention methods: one forward pass with every attention module recomputed."""

    needs_attention = True

    @classmethod
    def applies(cls, model: nn.Module) -> bool:
        return has_attention(model)

    def __init__(self, model: nn.Module, *, output: OutputSelector = None):
        super().__init__(model, output=output)
        self.attention = attention_modules(model)
        self._checked: set[int] = set()

    def attentions(self, images: Tensor, target: Target, grad: bool) -> tuple[list[Tensor], Tensor | None]:
        """The attention probabilities of every module (and, with ``grad``, the target's scores)."""
        seen: list[Tensor] = []

        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            original = output[0] if isinstance(output, tuple) else output
            try:
                a, y = attend(module, x)
            except RuntimeError:  # shapes that plain attention would not give (windows, extra tokens)
                raise ValueError(_not_plain(module)) from None
            if id(module) not in self._checked:
                if y.shape != original.shape or not torch.allclose(
                    y, original, rtol=1e-3, atol=1e-4 * float(original.detach().abs().max())
                ):
                    raise ValueError(_not_plain(module))
                self._checked.add(id(module))
            seen.append(a)
            return (y, a, *output[2:]) if isinstance(output, tuple) else y

        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in self.attention]
        try:
            with torch.set_grad_enabled(grad):
                inputs = images.detach().requires_grad_(grad)
                output = self.model(inputs)
                scores = target_scores(select_output(output, self.output), target)[0] if grad else None
        finally:
            for handle in handles:
                handle.remove()
        if any(a.shape[0] != images.shape[0] or a.shape[-1] != seen[0].shape[-1] for a in seen):
            raise ValueError(
                f"{type(self.model).__name__} attends within windows or over changing token sets (Swin-like): "
                "attention rollout and relevance need one global attention over the same tokens; use a CAM method"
            )
        return seen, scores

    def to_map(self, relevance: Tensor, images: Tensor) -> Tensor:
        """The class token's row of R (B, N, N) over the patch tokens (no class token: the mean patch
        row), as a (B, h, w) grid."""
        layout = token_layout(self.model, relevance.shape[-1], tuple(images.shape[2:]))
        p = layout.prefix
        row = relevance[:, 0, p:] if p > 0 else relevance[:, p:, p:].mean(1)
        return row.reshape(relevance.shape[0], *layout.grid)


@register
class AttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):

    with A_l the head-mean attention of layer l and the residual as identity,
    Â_l = rownorm(0.5 A_l + 0.5 I), R = Â_L ... Â_1; no class, no gradient.
    """

    name = "rollout"
    summary = "Attention rollout: the product of the layers' head-averaged attention (with the residual)."
    needs_target: ClassVar[bool] = False

    def attribute(self, images, target):
        attentions, _ = self.attentions(images, None, grad=False)
        relevance = None
        for a in attentions:
            mixed = 0.5 * a.mean(1).double() + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64, device=a.device)
            mixed = mixed / mixed.sum(-1, keepdim=True)
            relevance = mixed if relevance is None else mixed @ relevance
        return [self.to_map(relevance, images).float()]


@register
class AttentionRelevance(AttentionExplainer):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf, "Generic Attention-model
    Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021; the
    gradient rule of "Transformer Interpretability Beyond Attention Visualization", CVPR 2021):

    R = I;  for each layer l:  Ā_l = mean_heads( ReLU(dy/dA_l ⊙ A_l) ),  R <- R + Ā_l R.
    """

    name = "chefer"
    summary = "Gradient-weighted attention relevance (Chefer et al. 2021): attention weighted by its gradient."

    def attribute(self, images, target):
        attentions, scores = self.attentions(images, target, grad=True)
        gradients = torch.autograd.grad(scores.sum(), attentions)
        n = attentions[0].shape[-1]
        relevance = torch.eye(n, dtype=torch.float64, device=images.device).expand(images.shape[0], n, n)
        for a, g in zip(attentions, gradients, strict=True):
            weighted = (g.detach() * a.detach()).clamp(min=0).mean(1).double()
            relevance = relevance + weighted @ relevance
        return [self.to_map(relevance, images).float()]
