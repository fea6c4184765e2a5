"""LeGrad (Bousselham et al., ICCV 2025, arXiv:2404.03214): a ViT's explanation from the sensitivity
of each layer's prediction to that layer's attention.

For each explained transformer block l, with z^l its output tokens, the layer's prediction is the
model's own head applied to the mean token, s^l = head(norm(mean_i z^l_i)) (the official code and
torchcam pool by the mean token), and A^l (B, heads, N, N) the block's post-softmax attention:

    E^l = mean_{heads, queries} ReLU(ds^l_c / dA^l),   map = mean_l E^l over the patch keys,

one gradient per layer, to the explained blocks only; no attention value multiplies the gradient.
Attention probabilities are read where the model computes them: in ``F.scaled_dot_product_attention``
(timm, Hugging Face's "sdpa" attention), computed explicitly in its place, and in
``nn.MultiheadAttention`` (torchvision), whose output is recomputed from explicit probabilities
with the module's own weights. Both give the same output as the model's own attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..layers import auto_layer, resolve_layers, token_layout
from ..taps import preserved
from ..targets import Target, pin_target, target_scores
from .base import Explainer, register
from .transformer import has_attention


def explicit_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *, causal=False, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v, and the probabilities (B, heads, Nq, Nk)."""
    if key.shape[-3] != query.shape[-3]:  # grouped-query attention: key/value heads are shared
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = query @ key.transpose(-2, -1) * scale
    if causal:
        keep = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    probabilities = logits.softmax(-1)
    return probabilities @ value, probabilities


class AttentionCapture(TorchFunctionMode):
    """Records the attention probabilities computed inside the block being run (``block``)."""

    def __init__(self):
        super().__init__()
        self.block: int | None = None
        self.probabilities: dict[int, list[Tensor]] = {}

    def record(self, probabilities: Tensor) -> None:
        if self.block is not None:
            self.probabilities.setdefault(self.block, []).append(probabilities)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.block is None:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        call = dict(zip(names, args)) | kwargs
        if call.get("dropout_p", 0.0):
            raise ValueError("LeGrad needs the attention without dropout: call model.eval() first")
        output, probabilities = explicit_attention(
            call["query"],
            call["key"],
            call["value"],
            call.get("attn_mask"),
            causal=call.get("is_causal", False),
            scale=call.get("scale"),
        )
        self.record(probabilities)
        return output

    def multihead_hook(self, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output):
        """Forward hook: ``nn.MultiheadAttention``'s output recomputed with explicit probabilities."""
        if self.block is None:
            return None
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
        call = dict(zip(names, args)) | kwargs
        if call.get("key_padding_mask") is not None or call.get("attn_mask") is not None:
            raise ValueError("LeGrad reads self-attention without masks")
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ValueError("LeGrad reads nn.MultiheadAttention with one packed q/k/v projection only")
        if module.training and module.dropout > 0:
            raise ValueError("LeGrad needs the attention without dropout: call model.eval() first")
        inputs = [call[n] if module.batch_first else call[n].transpose(0, 1) for n in ("query", "key", "value")]
        weights = module.in_proj_weight.chunk(3)
        biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
        heads = module.num_heads

        def split(x: Tensor) -> Tensor:
            return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)

        q, k, v = (split(F.linear(x, w, b)) for x, w, b in zip(inputs, weights, biases, strict=True))
        mixed, probabilities = explicit_attention(q, k, v)
        self.record(probabilities)
        result = module.out_proj(mixed.transpose(1, 2).flatten(2))
        return (result if module.batch_first else result.transpose(0, 1)), output[1]


def default_projection(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """The model's head on the mean token: timm's ViT (norm, fc_norm, head) or torchvision's (encoder.ln, heads)."""
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(getattr(model, "heads", None), nn.Module):
        return lambda tokens: model.heads(encoder.ln(tokens.mean(1)))
    if all(isinstance(getattr(model, n, None), nn.Module) for n in ("norm", "head")):
        fc_norm = getattr(model, "fc_norm", None) or nn.Identity()
        return lambda tokens: model.head(fc_norm(model.norm(tokens.mean(1))))
    return None


def transformer_blocks(model: nn.Module, images: Tensor) -> list[str]:
    """The names of every block of the ViT's last stack of transformer blocks."""
    name = auto_layer(model, images)
    modules = dict(model.named_modules())
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        parent = modules.get(".".join(parts[: end - 1]), model if end == 1 else None)
        block = modules[".".join(parts[:end])]
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            siblings = [n for n, c in parent.named_children() if type(c) is type(block)]
            if len(siblings) > 1:
                prefix = ".".join(parts[: end - 1])
                return [f"{prefix}.{n}" if prefix else n for n in siblings]
    raise ValueError("LeGrad explains a ViT's transformer blocks; none were found: pass layer=[<block names>]")


@register
class LeGrad(Explainer):
    """LeGrad: each block's positive attention gradients of its own prediction, averaged.

    ``layer``: the transformer blocks (names or modules; default: every block of the last stack).
    ``score_projection``: maps a block's tokens (B, N, D) to class scores (B, classes); by default the
    model's head on the mean token (timm and torchvision ViTs).
    """

    name = "legrad"
    summary = "LeGrad (ViT): positive gradients of each layer's prediction on its attention, averaged."
    needs_layer = True  # its ``layer`` is the transformer blocks (None: every block of the last stack)
    uses_gradient = True
    needs_attention = True

    @classmethod
    def applies(cls, model: nn.Module) -> bool:
        return has_attention(model)

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
        *,
        score_projection: Callable[[Tensor], Tensor] | None = None,
        **options,
    ):
        super().__init__(model, **options)
        self.layer = layer
        self._blocks: list[str] = []
        self.score_projection = score_projection or default_projection(model)
        if self.score_projection is None:
            raise ValueError(
                "LeGrad needs each block's prediction: pass score_projection=<callable mapping tokens "
                "(B, N, D) to class scores (B, classes)> (timm and torchvision ViTs are read automatically)"
            )

    def used_layers(self) -> list[str]:
        return list(self._blocks)

    def attribute(self, images: Tensor, target: Target) -> list[Tensor]:
        with preserved(self.model):
            blocks = self.layer if self.layer is not None else transformer_blocks(self.model, images)
            layers = resolve_layers(self.model, blocks, images)
            self._blocks = [name for name, _ in layers]
        capture, tokens = AttentionCapture(), {}
        handles = self._hooks([module for _, module in layers], capture, tokens)
        try:
            with torch.no_grad(), capture:
                output = self.forward(images)
                pinned = pin_target(target, len(images), lambda: output.detach())
                relevance = [
                    self._relevance(name, capture.probabilities.get(index, []), tokens.get(index), pinned, index)
                    for index, name in enumerate(self._blocks)
                ]
        finally:
            for handle in handles:
                handle.remove()
        keys = torch.stack(relevance).mean(0)  # (B, N)
        layout = token_layout(self.model, keys.shape[1], tuple(images.shape[-2:]))
        return [keys[:, layout.prefix :].reshape(len(images), *layout.grid).detach()]

    @staticmethod
    def _hooks(blocks: list[nn.Module], capture: AttentionCapture, tokens: dict[int, Tensor]) -> list:
        """Hooks that mark which block runs, start the graph at the first one to run, keep each
        block's output tokens, and read ``nn.MultiheadAttention`` inside the blocks."""

        def enter(index):
            def hook(module, args):
                capture.block = index
                if not torch.is_grad_enabled() and args and isinstance(args[0], Tensor):  # the graph starts here
                    torch.set_grad_enabled(True)
                    return (args[0].detach().requires_grad_(True), *args[1:])
                return None

            return hook

        def leave(index):
            def hook(module, args, output):
                capture.block = None
                tokens[index] = output[0] if isinstance(output, tuple) else output

            return hook

        handles = []
        for index, module in enumerate(blocks):
            handles += [module.register_forward_pre_hook(enter(index)), module.register_forward_hook(leave(index))]
            handles += [
                attention.register_forward_hook(capture.multihead_hook, with_kwargs=True)
                for attention in module.modules()
                if isinstance(attention, nn.MultiheadAttention)
            ]
        return handles

    def _relevance(self, name: str, found: list[Tensor], tokens: Tensor | None, pinned, index: int) -> Tensor:
        """E^l (B, N): the block's positive attention gradients of its own prediction, averaged over
        heads and queries."""
        if len(found) != 1:
            raise ValueError(
                f"block {name!r} computed {len(found)} attention maps; LeGrad reads one global attention per "
                "block, from F.scaled_dot_product_attention or nn.MultiheadAttention (windowed attention, as "
                "Swin's, is not one); use a CAM method such as gradcam for this model"
            )
        if tokens is None or tokens.dim() != 3:
            raise ValueError(f"block {name!r} did not return tokens (B, N, D)")
        scores, _ = target_scores(self.score_projection(tokens), pinned)
        (gradient,) = torch.autograd.grad(scores.sum(), found[0], retain_graph=index < len(self._blocks) - 1)
        return gradient.clamp(min=0).mean((1, 2))
