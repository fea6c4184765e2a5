"""Pictures of maps: overlays with a colour bar, method-by-image grids, and metric curves.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no display needed) and turned into
PNG bytes by ``png``; ``overlay`` gives the blended image itself as an (H, W, 3) uint8 array.
A signed map (``sign="both"``: values in [-1, 1], evidence against below 0) is drawn with the
diverging colour map ``DIVERGING``: blue against, white nothing, red for.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

CMAP = "jet"
DIVERGING = "RdBu_r"


def _image_array(image: Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) / (H, W, 3) / (H, W) image in [0, 1] as an (H, W, 3) float array."""
    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array, 0, 1)


def _map_array(saliency: Tensor | np.ndarray) -> np.ndarray:
    array = saliency.detach().cpu().float().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    return np.nan_to_num(array.astype(np.float32))


def overlay(
    image: Tensor | np.ndarray,
    saliency: Tensor | np.ndarray,
    alpha: float = 0.5,
    cmap: str = CMAP,
    signed: bool = False,
) -> np.ndarray:
    """``(1 - alpha) * image + alpha * cmap(map)`` as an (H, W, 3) uint8 array; the map in [0, 1],
    or, ``signed``, in [-1, 1] drawn with ``DIVERGING``."""
    base = _image_array(image)
    if signed:
        heat = colormaps[DIVERGING]((np.clip(_map_array(saliency), -1, 1) + 1) / 2)[..., :3]
    else:
        heat = colormaps[cmap](np.clip(_map_array(saliency), 0, 1))[..., :3]
    if heat.shape[:2] != base.shape[:2]:
        raise ValueError(f"the map is {heat.shape[1]}x{heat.shape[0]}, the image {base.shape[1]}x{base.shape[0]}")
    return ((1 - alpha) * base + alpha * heat).clip(0, 1).__mul__(255).round().astype(np.uint8)


def png(figure: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def save_png(path: str | Path, picture: Figure | np.ndarray) -> Path:
    """Write a figure or an (H, W, 3) uint8 array as a PNG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, Figure):
        path.write_bytes(png(picture))
    else:
        Image.fromarray(picture).save(path)
    return path


def overlay_figure(
    image: Tensor | np.ndarray,
    saliency: Tensor | np.ndarray,
    title: str = "",
    alpha: float = 0.5,
    signed: bool = False,
) -> Figure:
    """The image with the map blended on top and a colour bar of the map's values (a signed map in
    [-1, 1] with the diverging colour map)."""
    figure = Figure(figsize=(4.2, 3.6))
    axes = figure.add_subplot()
    axes.imshow(_image_array(image))
    low, cmap = (-1, DIVERGING) if signed else (0, CMAP)
    shown = axes.imshow(np.clip(_map_array(saliency), low, 1), cmap=cmap, alpha=alpha, vmin=low, vmax=1)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    return figure


def grid_figure(
    images: Tensor | Sequence,
    maps: Mapping[str, Tensor | Sequence],
    *,
    row_titles: Sequence[str] | None = None,
    column_notes: Mapping[str, str] | None = None,
    alpha: float = 0.5,
    cell: float = 1.6,
    signed: Collection[str] = (),
) -> Figure:
    """Images down, methods across: the first column the image, then one overlay per method.

    ``maps``: method name -> (B, H, W) maps; ``column_notes``: text under a method's name (its time,
    its stride); ``signed``: the names whose maps are signed, in [-1, 1] (diverging colour map).
    """
    names = list(maps)
    rows, cols = len(images), len(names) + 1
    figure = Figure(figsize=(cell * cols, cell * rows + 0.5))
    axes = figure.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(_image_array(images[r]))
        if row_titles is not None:
            axes[r, 0].set_title(row_titles[r], fontsize=7)
        for c, name in enumerate(names, start=1):
            axes[r, c].imshow(overlay(images[r], maps[name][r], alpha, signed=name in signed))
            if r == 0:
                note = (column_notes or {}).get(name)
                axes[r, c].set_title(name + (f"\n{note}" if note else ""), fontsize=7)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.subplots_adjust(wspace=0.04, hspace=0.12)
    return figure


def curve_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Figure:
    """One line per method: ``curves[name] = (x, y)`` (for example a deletion curve)."""
    figure = Figure(figsize=(5, 3.4))
    axes = figure.add_subplot()
    for name, (x, y) in curves.items():
        axes.plot(np.asarray(x, dtype=float), np.asarray(torch.as_tensor(y).float()), marker=".", label=name)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=7)
    return figure


def bar_figure(values: Mapping[str, float], *, title: str = "", xlabel: str = "") -> Figure:
    """Horizontal bars, one per name (for example the time per image of each method)."""
    figure = Figure(figsize=(5, 0.3 * len(values) + 1))
    axes = figure.add_subplot()
    names = list(values)
    axes.barh(names, [values[n] for n in names])
    axes.invert_yaxis()
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    return figure
