"""Ranking pixels: the order metrics remove them in, and average ranks for rank correlations."""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_ranks(maps: Tensor, descending: bool, seed: int = 0, indices: Tensor | None = None) -> Tensor:
    """Rank (B, H, W) of every pixel by map value, 0 = first; ties in a random order seeded with
    ``seed + index`` (``indices``: the images' indices in the dataset, by default 0..B-1)."""
    flat = maps.flatten(1)
    indices = range(flat.shape[0]) if indices is None else indices.tolist()
    order = torch.stack(
        [torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed + i)) for i in indices]
    ).to(flat.device)
    keys = flat.gather(1, order)
    sorted_order = order.gather(1, keys.sort(dim=1, descending=descending, stable=True).indices)
    ranks = torch.empty_like(sorted_order)
    ranks.scatter_(1, sorted_order, torch.arange(flat.shape[1], device=flat.device).expand_as(flat))
    return ranks.view_as(maps)


def top_pixels(maps: Tensor, counts: Tensor, seed: int = 0) -> Tensor:
    """The ``counts[i]`` most relevant pixels of each (B, H, W) map, as a bool mask; the same set as
    ``pixel_ranks(maps, True, seed) < counts``, with the sort by random order only for the images
    whose cut falls inside a tie."""
    flat = maps.flatten(1)
    counts = counts.to(flat.device).long()
    largest = flat.topk(int(counts.max().clamp(1, flat.shape[1])), dim=1).values
    cut = largest.gather(1, (counts.clamp(1, flat.shape[1]) - 1)[:, None])
    chosen = flat >= cut
    chosen[counts == 0] = False
    tied = (chosen.sum(1) != counts).nonzero().flatten()
    if tied.numel():
        ranks = pixel_ranks(maps[tied], True, seed, tied).flatten(1)
        chosen[tied] = ranks < counts[tied, None]
    return chosen.view_as(maps)


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
