"""Ranking pixels: the order metrics remove them in, and average ranks for rank correlations."""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_ranks(maps: Tensor, descending: bool, seed: int = 0) -> Tensor:
    """Rank (B, H, W) of every pixel by map value, 0 = first; ties in a seeded random order."""
    flat = maps.flatten(1)
    order = torch.stack([torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed + i))
                         for i in range(flat.shape[0])]).to(flat.device)
    keys = flat.gather(1, order)
    sorted_order = order.gather(1, keys.sort(dim=1, descending=descending, stable=True).indices)
    ranks = torch.empty_like(sorted_order)
    ranks.scatter_(1, sorted_order, torch.arange(flat.shape[1], device=flat.device).expand_as(flat))
    return ranks.view_as(maps)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks (1-based) of each row of (B, N) ``values``, ties given their average rank (as scipy)."""
    ordered, order = values.sort(dim=1)
    count = values.shape[1]
    position = torch.arange(count, device=values.device).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.cummax(torch.where(starts, position, 0), 1).values
    last = torch.where(ends, position, count).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks.scatter_(1, order, (first + last).double() / 2 + 1)
    return ranks
