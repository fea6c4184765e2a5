"""The models of docs/results.md "Without labels": a small ViT and the heads of self-supervised training.

- ``SmallViT``: normalise -> 8x8 patch embedding (a Conv2d, kernel = stride, which whycam reads as the
  patch grid) -> class token + learned positions (interpolated for other input sizes) -> pre-norm
  transformer blocks -> final norm -> ``head`` on the class token (``nn.Identity``: a backbone with no
  head; ``nn.Linear``: a classifier). Each block's attention probabilities (B, heads, N, N) pass
  through ``blocks[i].attn.probs`` (an identity module), so a forward hook reads them.
- ``DINOHead``: MLP -> bottleneck -> L2 normalisation -> a linear layer with unit-norm rows (Caron et
  al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021).
- ``ProjectionHead``: SimCLR's two-layer MLP (Chen et al., ICML 2020).
- the CNN backbone is ``train_tasks.SmallCNN`` with ``fc = nn.Identity()``: its pooled features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention, softmax(q k^T / sqrt(d)) v, with the probabilities passed through
    ``probs`` (identity) for hooks."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.probs = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = self.probs((q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1))
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A ViT for images in [0, 1]: ``classes`` = 0 gives a backbone returning the class token's
    features (B, dim); otherwise a linear head on it."""

    num_prefix_tokens = 1

    def __init__(self, classes: int = 0, size: int = 64, patch: int = 8, dim: int = 96, depth: int = 4, heads: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5])[:, None, None])
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25])[:, None, None])
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes) if classes else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """The learned positions for a patch grid, bicubically resized where it differs from training's."""
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(patches.shape[1] ** 0.5)
        if grid != (side, side):
            patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
            patches = patches.permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([cls, patches], 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed((images - self.mean) / self.std)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.positions(grid)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class DINOHead(nn.Module):
    """MLP (dim -> hidden -> hidden -> bottleneck), L2-normalised, then a linear map with unit-norm
    rows to ``out`` prototypes (DINO's weight-normalised last layer with its gain fixed at 1)."""

    def __init__(self, dim: int, out: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.randn(out, bottleneck) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h) = W2 ReLU(BN(W1 h))."""

    def __init__(self, dim: int, hidden: int = 256, out: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def cls_attention(model: SmallViT, images: Tensor, block: int = -1) -> Tensor:
    """DINO's attention map: the class token's attention to every patch in one block (the last by
    default), averaged over heads, as (B, h, w) on the patch grid (Caron et al. 2021, Fig. 1)."""
    captured = []
    handle = model.blocks[block].attn.probs.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    grid = (images.shape[-2] // model.patch, images.shape[-1] // model.patch)
    return captured[0][:, :, 0, 1:].mean(1).reshape(len(images), *grid)
