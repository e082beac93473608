"""Small line plots of 1D signals (feature maps, kernels, waveform inputs), drawn in numpy.

A plot is a (height, width) array of palette indices on the `gray` ramp, so it goes through the
same grid -> palette PNG pipeline as any tile. One pixel column is one bin of samples: the band
(BAND) spans the bin's min to its max, a mid-gray line (ZERO) over it marks the value 0 when it
lies in the plotted range, and the black line (LINE) on top is the bin's mean, joined to its
neighbours' means.
The vertical axis runs from level 0 (bottom row) to level LEVELS - 1 (top row), where a level
is the value stretched onto 0..253 as everywhere else: floor((x - min) / (max - min) * 253 + 0.5).

A bin i of L samples into B columns covers samples [floor(i * L / B), ceil((i + 1) * L / B)),
the windows of `adaptive_avg_pool1d` / `adaptive_max_pool1d`.
"""

from __future__ import annotations

import numpy as np

from reportgen.palettes import FLAT_INDEX, LEVELS

PLOT_HEIGHT = 24  # px
FILTER_PLOT_WIDTH = 32  # a kernel's taps are widened to about this many px (each tap >= 1 px)
# gray-ramp levels (0 black .. 253 white); padding between tiles is white, so the background is not
BACKGROUND = 240
BAND = 185
ZERO = 120
LINE = 0

LOW, HIGH, MEAN = 0, 1, 2  # rows of an envelope: (..., 3, bins)


def plot_bins(length: int, tile_size: int) -> int:
    """Pixel columns of a 1D feature-map plot: one per sample, at most 2 * --tile-size."""
    return max(1, min(length, 2 * tile_size))


def tap_width(taps: int) -> int:
    """Pixel columns per tap of a 1D kernel plot: taps are widened to about FILTER_PLOT_WIDTH px."""
    return max(1, -(-FILTER_PLOT_WIDTH // max(taps, 1)))


def bin_windows(length: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each of `bins` adaptive windows over `length` samples."""
    index = np.arange(bins)
    return (index * length) // bins, -((-(index + 1) * length) // bins)


def level_rows(levels: np.ndarray, height: int = PLOT_HEIGHT) -> np.ndarray:
    """Levels 0..253 (float or int) -> pixel rows: LEVELS - 1 is row 0 (top), 0 the bottom row."""
    top = LEVELS - 1
    clipped = np.clip(np.asarray(levels, dtype=np.float64), 0, top)
    return np.floor((top - clipped) / top * (height - 1) + 0.5).astype(np.int64)


def zero_levels(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The level of the value 0 on each tile's min-max scale; NaN where 0 is outside [min, max]."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        level = (0.0 - low) / np.where(span > 0, span, 1.0) * (LEVELS - 1)
    inside = np.isfinite(level) & (span > 0) & (low <= 0) & (high >= 0)
    return np.where(inside, level, np.nan)


def envelope_plots(envelopes: np.ndarray, zero: np.ndarray, flat: np.ndarray, *,
                   height: int = PLOT_HEIGHT, repeat: int = 1) -> np.ndarray:
    """(C, 3, B) levels (LOW, HIGH, MEAN rows) -> (C, height, B * repeat) palette indices.

    `zero`: (C,) level of the value 0 (NaN: not drawn); `flat`: (C,) tiles filled with
    FLAT_INDEX; `repeat`: each bin drawn this many columns wide (kernel taps as steps).
    """
    envelopes = np.repeat(np.asarray(envelopes), repeat, axis=2)
    count, _, width = envelopes.shape
    rows = np.arange(height)[None, :, None]  # (1, H, 1)
    zero_row = np.where(np.isfinite(zero), level_rows(np.nan_to_num(zero, nan=0.0), height), -1)
    top = level_rows(envelopes[:, HIGH], height)[:, None, :]  # (C, 1, B)
    bottom = level_rows(envelopes[:, LOW], height)[:, None, :]
    first, last = _line_extent(level_rows(envelopes[:, MEAN], height))
    plots = np.full((count, height, width), BACKGROUND, dtype=np.uint8)
    plots = np.where((rows >= top) & (rows <= bottom), np.uint8(BAND), plots)
    plots = np.where(rows == zero_row[:, None, None], np.uint8(ZERO), plots)
    plots = np.where((rows >= first[:, None, :]) & (rows <= last[:, None, :]), np.uint8(LINE), plots)
    plots[np.asarray(flat, dtype=bool)] = FLAT_INDEX
    return plots


def _line_extent(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows the mean line covers in each column: its own row, extended halfway (rounded toward
    it) to each neighbour's row, so consecutive columns join without gaps."""
    previous = np.concatenate([mean[:, :1], mean[:, :-1]], axis=1)
    following = np.concatenate([mean[:, 1:], mean[:, -1:]], axis=1)
    half_previous = mean + np.trunc((previous - mean) / 2).astype(np.int64)
    half_following = mean + np.trunc((following - mean) / 2).astype(np.int64)
    stacked = np.stack([mean, half_previous, half_following])
    return stacked.min(axis=0), stacked.max(axis=0)


def signal_envelopes(signal: np.ndarray, bins: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(C, L) float values -> (C, 3, bins) levels of each bin's min, max and mean on the
    per-row scale [low, high] (host-side twin of `capture.envelope_levels`, for inputs)."""
    signal = np.asarray(signal, dtype=np.float64)
    starts, ends = bin_windows(signal.shape[1], bins)
    low_bins = np.stack([signal[:, s:e].min(axis=1) for s, e in zip(starts, ends)], axis=1)
    high_bins = np.stack([signal[:, s:e].max(axis=1) for s, e in zip(starts, ends)], axis=1)
    mean_bins = np.stack([signal[:, s:e].mean(axis=1) for s, e in zip(starts, ends)], axis=1)
    span = np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)
    scale = np.where(span > 0, span, 1.0)[:, None, None]
    stacked = np.stack([low_bins, high_bins, mean_bins], axis=1)
    unit = np.clip((stacked - np.asarray(low, dtype=np.float64)[:, None, None]) / scale, 0.0, 1.0)
    return np.floor(unit * (LEVELS - 1) + 0.5).astype(np.uint8)


def pool_envelopes(envelopes: np.ndarray, bins: int) -> np.ndarray:
    """(C, 3, B) -> (C, 3, bins) over adaptive windows of the B bins: min of the minima and max
    of the maxima (exact: the windows' samples are the union of theirs), mean of the means (the
    mean of the samples to within the bins' one-sample size difference)."""
    count = envelopes.shape[2]
    if bins >= count:
        return envelopes
    starts, ends = bin_windows(count, bins)
    values = envelopes.astype(np.float64)
    low = np.stack([values[:, LOW, s:e].min(axis=1) for s, e in zip(starts, ends)], axis=1)
    high = np.stack([values[:, HIGH, s:e].max(axis=1) for s, e in zip(starts, ends)], axis=1)
    mean = np.stack([values[:, MEAN, s:e].mean(axis=1) for s, e in zip(starts, ends)], axis=1)
    return np.floor(np.stack([low, high, mean], axis=1) + 0.5).astype(np.uint8)


def gray_values(plot: np.ndarray) -> np.ndarray:
    """Palette indices of a plot -> 8-bit gray values (for thumbnails, which carry no palette):
    the gray ramp is linear, so level l is floor(l * 255 / 253 + 0.5); flat is mid gray."""
    values = np.floor(plot.astype(np.float64) * 255 / (LEVELS - 1) + 0.5)
    values[plot == FLAT_INDEX] = 128
    return np.clip(values, 0, 255).astype(np.uint8)
