"""Convolution filters -> tiles, under one of two documented normalisations.

- `per-filter` (default): a first layer that sees 3 input channels is drawn in colour, each
  filter's RGB kernel stretched by its own min and max over all three channels. Any other
  layer is drawn as the mean over its input channels, stretched by that filter's own min and
  max to the 254 gray levels (0 = its min, 253 = its max).
- `shared`: the mean over input channels on one symmetric scale for the whole layer,
  [-s, +s] with s = the largest |value| in the layer, on a diverging colormap (blue negative,
  white zero, red positive), so signs and relative magnitudes can be compared.

1D kernels are drawn as small line plots of the same values (`plots.py`): each tap a step a few
pixels wide, bottom = the level-0 value, top = the level-253 value, a mid-gray line at 0; 3D
kernels show their middle depth slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.palettes import FLAT_INDEX, LEVELS
from reportgen.plots import envelope_plots, tap_width, zero_levels

FILTER_SCALES = ("per-filter", "shared")


@dataclass(frozen=True)
class FilterTiles:
    tiles: np.ndarray  # (N, h, w) palette indices, or (N, h, w, 3) RGB
    colormap: str | None  # None for RGB tiles
    tile_min: np.ndarray  # (N,) the value drawn as the darkest / most negative level
    tile_max: np.ndarray
    flat: np.ndarray  # (N,) bool
    legend: str


def kernel_planes(filters: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, in, *k) -> (N, in, h, w): 1D kernels as one row, 3D kernels as their middle slice."""
    spatial = filters.ndim - 2
    if spatial == 1:
        return filters[:, :, None, :], ""
    if spatial == 2:
        return filters, ""
    middle = filters
    while middle.ndim > 4:
        middle = middle[:, :, middle.shape[2] // 2]
    return middle, f"3D kernels: the middle depth slice of {filters.shape[2]} is drawn"


def _stretch(planes: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-filter min-max to [0, 1]; returns (unit, min, max, flat)."""
    finite = np.isfinite(planes).all(axis=axes)
    safe = np.nan_to_num(planes, nan=0.0, posinf=0.0, neginf=0.0)
    low = safe.min(axis=axes)
    high = safe.max(axis=axes)
    span = high - low
    flat = ~finite | (span <= 0)
    shape = (-1,) + (1,) * (planes.ndim - 1)
    unit = (safe - low.reshape(shape)) / np.where(flat, 1.0, span).reshape(shape)
    low = np.where(finite, low, np.nan)
    high = np.where(finite, high, np.nan)
    return np.clip(unit, 0.0, 1.0), low, high, flat


def _symmetric(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One symmetric scale [-s, s] for all filters (s = the largest |value|) to [0, 1];
    returns (unit, low, high, flat, s), low/high NaN for filters holding NaN/Inf."""
    finite = np.isfinite(mean.reshape(len(mean), -1)).all(axis=1)
    safe = np.nan_to_num(mean, nan=0.0, posinf=0.0, neginf=0.0)
    bound = float(np.abs(safe).max()) if safe.size else 0.0
    flat = ~finite | (np.ptp(safe.reshape(len(safe), -1), axis=1) <= 0)
    unit = (safe / bound + 1.0) / 2.0 if bound > 0 else np.full_like(safe, 0.5)
    return np.clip(unit, 0.0, 1.0), np.where(finite, -bound, np.nan), np.where(finite, bound, np.nan), flat, bound


def to_levels(unit: np.ndarray, top: int) -> np.ndarray:
    """[0, 1] -> integers 0..top, rounding half up (x * top + 0.5, then floor)."""
    return np.floor(unit * top + 0.5).astype(np.uint8)


def filter_tiles(filters: np.ndarray, *, rgb_first_layer: bool, scale: str = "per-filter") -> FilterTiles:
    """Tiles for (N, in, *k) filters. `rgb_first_layer`: in==3 and it is the network's first conv."""
    if scale not in FILTER_SCALES:
        raise ValueError(f"unknown filter scale {scale!r}")
    if np.ndim(filters) == 3:
        return _kernel_plots(np.asarray(filters, dtype=np.float64), scale)
    planes, shape_note = kernel_planes(np.asarray(filters, dtype=np.float64))
    notes = [shape_note] if shape_note else []

    if rgb_first_layer and planes.shape[1] == 3 and scale == "per-filter":
        unit, low, high, flat = _stretch(planes, axes=(1, 2, 3))
        rgb = to_levels(unit, 255).transpose(0, 2, 3, 1)
        rgb[flat] = (255, 0, 255)
        legend = "RGB filters of the first layer, each stretched from its own min (black) to its own max (white) over all 3 channels"
        return FilterTiles(rgb, None, low, high, flat, "; ".join([legend, *notes]))

    mean = planes.mean(axis=1)
    if scale == "shared":
        unit, low, high, flat, bound = _symmetric(mean)
        levels = to_levels(unit, LEVELS - 1)
        levels[flat] = FLAT_INDEX
        legend = (f"mean over input channels, one symmetric scale for the layer: "
                  f"blue = -{bound:.3g}, white = 0, red = +{bound:.3g}")
        return FilterTiles(levels, "RdBu_r", low, high, flat, "; ".join([legend, *notes]))

    unit, low, high, flat = _stretch(mean, axes=(1, 2))
    levels = to_levels(unit, LEVELS - 1)
    levels[flat] = FLAT_INDEX
    legend = "mean over input channels, each filter stretched from its own min (black) to its own max (white)"
    return FilterTiles(levels, "gray", low, high, flat, "; ".join([legend, *notes]))


def _kernel_plots(filters: np.ndarray, scale: str) -> FilterTiles:
    """(N, in, K) 1D kernels -> line plots of the mean over input channels, on the same per-filter
    or shared scale as 2D tiles (level 0 at the bottom row, 253 at the top)."""
    mean = filters.mean(axis=1)  # (N, K)
    taps = mean.shape[1]
    repeat = tap_width(taps)
    if scale == "shared":
        unit, low, high, flat, bound = _symmetric(mean)
        what = f"one symmetric scale for the layer: bottom = -{bound:.3g}, top = +{bound:.3g}"
    else:
        unit, low, high, flat = _stretch(mean, axes=(1,))
        what = "each filter from its own min (bottom) to its own max (top)"
    levels = to_levels(unit, LEVELS - 1)
    plots = envelope_plots(np.repeat(levels[:, None, :], 3, axis=1), zero_levels(low, high), flat, repeat=repeat)
    width = f"each tap {repeat} px wide" if repeat > 1 else "one px per tap"
    legend = (f"1D kernels as line plots of the mean over input channels ({taps} taps, {width}), {what}; "
              "mid-gray line = 0; magenta = flat (zero range, NaN or Inf)")
    return FilterTiles(plots, "gray", low, high, flat, legend)
