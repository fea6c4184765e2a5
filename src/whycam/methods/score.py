"""CAM methods that weigh channels by forward passes instead of gradients: Score-CAM and Ablation-CAM.

Both run one forward pass per (image, channel) row, ``batch_size`` rows at a time (the caller's
memory budget: no pass sees more rows), under ``torch.inference_mode()``; the perturbed inputs (or
activations) of a chunk are built just before its pass and never all at once. Scores are read row by
row: a class target takes the row's class logit, a callable target is applied to the chunk's output
and must score each row on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CAMExplainer, LayerPass, minmax, positive_int, register


class ForwardScoreCAM(CAMExplainer):
    """Base of the CAM methods whose channel weights come from batched forward passes."""

    uses_gradient = False

    def __init__(self, model: nn.Module, layer=None, *, batch_size: int = 32, channels_last: bool = True, **options):
        super().__init__(model, layer, **options)
        self.batch_size = positive_int(batch_size, "batch_size (rows per forward pass)")
        self.channels_last = channels_last

    def forward_rows(self, inputs: Tensor) -> Tensor:
        """The selected output of a chunk of perturbed images, without autograd, channels-last
        where the model takes it (``in_layout``)."""
        with torch.inference_mode():
            return self.in_layout(self.forward, inputs)

    def row_scores(self, output: Tensor, classes: Tensor | None, step: LayerPass) -> Tensor:
        """The explained score of every row of a chunk's selected output (classes: each row's class)."""
        if classes is None:
            scores = step.target(output)
            if not isinstance(scores, Tensor) or scores.shape != (output.shape[0],):
                raise ValueError(
                    f"a callable target must return one score per row of the output, shape ({output.shape[0]},)"
                )
            return scores.detach()
        return output.gather(1, classes[:, None]).squeeze(1)

    def chunks(self, rows: Tensor) -> Iterator[Tensor]:
        """``rows`` in slices of at most ``batch_size``."""
        for start in range(0, rows.shape[0], self.batch_size):
            yield rows[start : start + self.batch_size]


@register
class ScoreCAM(ForwardScoreCAM):
    """Score-CAM (Wang et al., CVPRW 2020): w_k = softmax_k( y_c(x * s(Up(A_k))) ).

    ``s`` is a per-channel min-max normalisation (a constant channel gives the all-zero mask) and
    ``Up`` bilinear upsampling to the input size. Defaults reproduce pytorch-grad-cam exactly:
    ``align_corners=True`` and the mask normalised after upsampling (``normalize_at="input"``, as in
    the paper); torchcam uses ``align_corners=False, normalize_at="feature"``. Channels whose mask is
    all zero share one forward pass of the zero image.
    """

    name = "scorecam"
    summary = "Score-CAM: channels weighted by the score of the image masked by each channel."

    def __init__(
        self,
        model: nn.Module,
        layer=None,
        *,
        batch_size: int = 32,
        align_corners: bool = True,
        normalize_at: str = "input",
        **options,
    ):
        super().__init__(model, layer, batch_size=batch_size, **options)
        if normalize_at not in ("input", "feature"):
            raise ValueError(f"normalize_at must be 'input' or 'feature', not {normalize_at!r}")
        self.align_corners = align_corners
        self.normalize_at = normalize_at

    def masks(self, channels: Tensor, size: tuple[int, int]) -> Tensor:
        """(m, *grid) activation maps -> (m, *size) masks in [0, 1] (images: bilinear; volumes: trilinear)."""
        if self.normalize_at == "feature":
            channels = minmax(channels)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        masks = F.interpolate(channels[:, None], size=size, mode=mode, align_corners=self.align_corners)[:, 0]
        return minmax(masks) if self.normalize_at == "input" else masks

    def layer_map(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        images, size = step.images, tuple(step.images.shape[2:])
        batch, channels = activation.shape[:2]
        flat = activation.flatten(2)
        constant = flat.amax(2) == flat.amin(2)  # all-zero mask: x * 0 = 0
        scores = activation.new_empty(batch, channels)
        rows = (~constant).flatten().nonzero().flatten()  # (b * K + k) of the other rows
        if constant.any():
            zero = self.forward_rows(torch.zeros_like(images[:1]))
            b = constant.nonzero()[:, 0]
            classes = None if step.classes is None else step.classes[b]
            zero_rows = zero.expand(b.shape[0], *zero.shape[1:])
            scores[constant] = self.row_scores(zero_rows, classes, step).to(scores.dtype)
        for chunk in self.chunks(rows):
            b, k = chunk // channels, chunk % channels
            masked = images[b] * self.masks(activation[b, k], size)[:, None]
            classes = None if step.classes is None else step.classes[b]
            scores.view(-1)[chunk] = self.row_scores(self.forward_rows(masked), classes, step).to(scores.dtype)
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bk,bk...->b...", weights, activation)


@register
class AblationCAM(ForwardScoreCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): w_k = (y_c - y_c^k) / y_c.

    y_c^k is the score when the elements of the layer's output that form A_k are zeroed (for a ViT:
    feature k of the patch tokens). No module is replaced: a forward hook on the layer returns the
    ablated activations. Where the network after the layer treats rows independently (checked once
    per call: two replayed copies of the unablated activation must give back the original score), a
    chunk runs the layers before the tapped one on its single image once and the hook expands that
    activation into one ablated row per channel; otherwise every row repeats its image. A zero score
    y_c gives w_k = -y_c^k.
    """

    name = "ablationcam"
    summary = "Ablation-CAM: channels weighted by the score drop when each channel is zeroed."

    def ablated_forward(self, inputs: Tensor, module: nn.Module, sources: Tensor, positions: Tensor | None) -> Tensor:
        """The selected output when the layer's output row r is input ``sources[r]``'s, with the
        flattened elements ``positions[r]`` zeroed."""

        def ablate(_module, _inputs, output: Tensor) -> Tensor:
            rows = output.reshape(output.shape[0], -1)[sources].clone()
            if positions is not None:
                rows.scatter_(1, positions, 0.0)
            return rows.reshape(sources.shape[0], *output.shape[1:])

        handle = module.register_forward_hook(ablate)
        try:
            return self.forward_rows(inputs)
        finally:
            handle.remove()

    def replays(self, step: LayerPass) -> tuple[bool, torch.Size]:
        """Whether one image's activation can be expanded into many rows after the layer, and the
        shape of one image's layer output."""
        shapes: list[torch.Size] = []
        handle = step.module.register_forward_hook(lambda _m, _i, output: shapes.append(output.shape[1:]))
        try:
            sources = torch.zeros(2, dtype=torch.long, device=step.images.device)
            output = self.ablated_forward(step.images[:1], step.module, sources, None)
            classes = None if step.classes is None else step.classes[:1].expand(2)
            replayed = self.row_scores(output, classes, step)
            same = replayed.shape == (2,) and torch.allclose(replayed, step.scores[:1].expand(2), rtol=1e-4, atol=1e-5)
        except (RuntimeError, ValueError, IndexError):  # the layers after it need the input's batch size
            same = False
        finally:
            handle.remove()
        return same, shapes[-1]

    def layer_map(self, activation: Tensor, gradient: Tensor | None, step: LayerPass) -> Tensor:
        batch, channels = activation.shape[:2]
        replay, layer_shape = self.replays(step)
        # Which flattened elements of one image's layer output form each A_k: read the layout by
        # passing element indices through the same reshaping as the activations.
        index = torch.arange(layer_shape.numel(), dtype=torch.float64, device=activation.device).reshape(
            1, *layer_shape
        )
        positions = self.spatial(index, step.images[:1], step.module)[0].flatten(1).round().long()  # (K, hw)
        rows = torch.arange(batch * channels, device=activation.device)
        groups = rows.view(batch, channels) if replay else rows[None]
        ablated = activation.new_empty(batch * channels)
        for group in groups:
            for chunk in self.chunks(group):
                b, k = chunk // channels, chunk % channels
                inputs, sources = (
                    (step.images[b[:1]], torch.zeros_like(b))
                    if replay
                    else (step.images[b], torch.arange(b.shape[0], device=b.device))
                )
                output = self.ablated_forward(inputs, step.module, sources, positions[k])
                classes = None if step.classes is None else step.classes[b]
                ablated[chunk] = self.row_scores(output, classes, step).to(ablated.dtype)
        score = step.scores[:, None].to(activation.dtype)
        drop = score - ablated.view(batch, channels)
        weights = torch.where(score != 0, drop / torch.where(score != 0, score, 1.0), drop)
        return torch.einsum("bk,bk...->b...", weights, activation)
