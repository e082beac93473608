"""The reductions the main pass applies to an observed layer output on the device, and what
the activation collector (collectors/activations.py) hands on: `CapturedLayer`.

Nothing keeps an activation. The output is turned into what the report shows right away:
per-row max, min, sum and positive counts (`reduce_rows`, computed once per observed tensor and
shared by every collector), tiles downsampled and quantised to uint8 (`quantise_tiles`), 1D
envelopes. Because the reduction happens inside the hook, an in-place op that runs after the
layer (`ReLU(inplace=True)`) cannot change what was captured, and memory does not grow with the
number of inputs. A module called several times in one forward gets one entry per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reportgen.palettes import FLAT_INDEX, LEVELS
from reportgen.plots import plot_bins
from reportgen.sites import RAW_BY_REQUEST, Site


@dataclass
class LayerTiles:
    """Host-side tiles of one layer call: one uint8 stack per kept input."""

    channels: tuple[int, ...]
    per_input: dict[int, np.ndarray] = field(default_factory=dict)  # index -> (C, h, w) uint8
    tile_min: dict[int, np.ndarray] = field(default_factory=dict)  # index -> (C,) float
    tile_max: dict[int, np.ndarray] = field(default_factory=dict)
    flat: dict[int, np.ndarray] = field(default_factory=dict)  # index -> (C,) bool
    envelopes: dict[int, np.ndarray] = field(default_factory=dict)  # 1D only: index -> (C, 3, bins) uint8
    # the first input's maps at up to ZOOM_SIZE px a side, for the tile zoom (only when larger than the tiles)
    zoom: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class CapturedLayer:
    """What the capture kept of one layer call, moved to plain numpy."""

    key: str
    module_name: str
    call_index: int
    type: str
    output_shape: tuple[int, ...]  # of one input, batch dim first as 1
    channels_total: int
    mean: np.ndarray
    max: np.ndarray
    min: np.ndarray
    fraction_active: np.ndarray
    fraction_inputs_active: np.ndarray
    nonfinite: np.ndarray
    channels_shown: tuple[int, ...]
    tiles: dict[int, np.ndarray]
    tile_min: dict[int, np.ndarray]
    tile_max: dict[int, np.ndarray]
    flat: dict[int, np.ndarray]
    inputs_seen: int
    # Insight (top_activations.py): per shown channel the top-k inputs by max activation:
    # scores (C, k), input indices (C, k), peak cell as a flat index into spatial_shape (C, k).
    top_scores: np.ndarray | None = None
    top_inputs: np.ndarray | None = None
    top_positions: np.ndarray | None = None
    spatial_shape: tuple[int, ...] = ()
    site: Site = Site(raw=RAW_BY_REQUEST)  # where the layer's output was observed (sites.py)

    @property
    def geometry_key(self) -> str:
        """The layer call whose receptive field the observed cells have: the site's module
        call (after a residual add, the block output's), else the layer's own."""
        return self.site.module_key or self.key
    # 1D outputs: per kept input (C, 3, bins) levels of each bin's min, max and mean (plots.py)
    envelopes: dict[int, np.ndarray] = field(default_factory=dict)
    zoom: dict[int, np.ndarray] = field(default_factory=dict)  # input 0's maps at up to ZOOM_SIZE px a side


MAX_FRAMES = 8  # time (depth) slices a 3D map's tile shows side by side


def frame_slices(depth: int) -> list[int]:
    """The depth (time) indices a 3D map's tile shows: round(linspace(0, depth - 1, min(depth, 8)))."""
    return [int(i) for i in np.round(np.linspace(0, depth - 1, min(depth, MAX_FRAMES)))]


def spatial_view(output: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, H, W): 1D signals become one row; a volume (N, C, T, H, W) a strip
    of up to MAX_FRAMES of its T slices side by side, time running left to right (`frame_slices`);
    higher ranks first take the middle slice of every extra leading dimension."""
    if output.dim() == 2:
        return output[:, :, None, None]
    if output.dim() == 3:
        return output[:, :, None, :]
    if output.dim() == 4:
        return output
    while output.dim() > 5:
        output = output.select(2, output.shape[2] // 2)
    batch, channels, depth, height, width = output.shape
    frames = output[:, :, frame_slices(depth)]  # (N, C, k, H, W)
    return frames.permute(0, 1, 3, 2, 4).reshape(batch, channels, height, -1)


def downsample(maps: torch.Tensor, tile_size: int, frames: int = 1) -> torch.Tensor:
    """Average-pool (N, C, H, W) so the longer side is at most `tile_size`, keeping aspect. A strip
    of `frames` equal slices side by side (`spatial_view` of a volume) is pooled slice by slice, so
    each slice keeps to `tile_size` and no window straddles two slices."""
    if frames > 1:
        batch, channels, height, width = maps.shape
        slices = maps.reshape(batch, channels, height, frames, width // frames).permute(0, 1, 3, 2, 4)
        pooled = downsample(slices.reshape(batch, channels * frames, height, width // frames), tile_size)
        small_h, small_w = pooled.shape[-2:]
        return pooled.reshape(batch, channels, frames, small_h, small_w).permute(0, 1, 3, 2, 4).reshape(
            batch, channels, small_h, frames * small_w)
    height, width = maps.shape[-2:]
    factor = math.ceil(max(height, width) / tile_size)
    if factor <= 1:
        return maps
    target = (max(1, math.ceil(height / factor)), max(1, math.ceil(width / factor)))
    return F.adaptive_avg_pool2d(maps, target)


ZOOM_SIZE = 128  # px a side of the maps the tile zoom shows: full resolution up to this size
CHUNK_VALUES = 1 << 19  # float32 values per CPU chunk (2 MiB): a chunk and its scratch stay in cache


class Scratch:
    """One reusable float32 buffer for the hooks' temporaries on the CPU.

    A fresh full-size temporary per layer (what `torch.relu(x)` makes) is mapped from the OS
    and faulted in page by page: measured 43 ms for a (16, 64, 112x112) activation against
    7 ms when the same work runs over cache-sized chunks into one kept buffer.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, count: int) -> torch.Tensor:
        # A buffer made under inference mode cannot be written outside it (Grad-CAM's batch).
        stale = self._buffer is not None and self._buffer.is_inference() and not torch.is_inference_mode_enabled()
        if self._buffer is None or self._buffer.numel() < count or stale:
            self._buffer = torch.empty(count, dtype=torch.float32)
        return self._buffer[:count]

    def release(self) -> None:
        self._buffer = None


@dataclass(frozen=True)
class RowReductions:
    """Per input and channel max, min and sum (N, C), per-channel count of values > 0 (float64)."""

    max: torch.Tensor
    min: torch.Tensor
    sum: torch.Tensor
    positives: torch.Tensor
    finite: bool  # known to hold no NaN/Inf (always False on an accelerator: no sync to ask)


def reduce_rows(flat: torch.Tensor, scratch: Scratch | None = None) -> RowReductions:
    """Max, min, sum and positive count of every (input, channel) row of a float32 (N, C, S) map.

    On an accelerator: three whole-tensor passes, nothing asked of the device. On the CPU: the
    rows go in chunks of about CHUNK_VALUES values, each reduced while it is in cache, and the
    positives of a chunk are counted through `scratch` (see `Scratch`).
    """
    batch, channels, positions = flat.shape
    if flat.device.type != "cpu" or scratch is None:
        per_max = flat.amax(dim=2)
        per_sum = flat.sum(dim=2).double()
        finite = flat.device.type == "cpu" and bool(torch.isfinite(per_sum).all())
        return RowReductions(per_max, flat.amin(dim=2), per_sum, positive_counts(flat, finite=finite), finite)
    rows = flat.reshape(batch * channels, positions)
    per_max = torch.empty(rows.shape[0], dtype=flat.dtype)
    per_min = torch.empty(rows.shape[0], dtype=flat.dtype)
    per_sum = torch.empty(rows.shape[0], dtype=flat.dtype)
    per_positive = torch.empty(rows.shape[0], dtype=torch.float32)
    step = max(1, CHUNK_VALUES // max(positions, 1))
    finite = True
    for start in range(0, rows.shape[0], step):
        stop = min(start + step, rows.shape[0])
        chunk = rows[start:stop]
        torch.amax(chunk, dim=1, out=per_max[start:stop])
        torch.amin(chunk, dim=1, out=per_min[start:stop])
        torch.sum(chunk, dim=1, out=per_sum[start:stop])
        chunk_finite = bool(torch.isfinite(per_sum[start:stop]).all())
        finite = finite and chunk_finite
        indicator = scratch.take(chunk.numel()).view(chunk.shape)
        _indicate_positive(chunk, indicator, finite=chunk_finite)
        torch.sum(indicator, dim=1, out=per_positive[start:stop])
    positives = per_positive.view(batch, channels).double().sum(dim=0)
    return RowReductions(per_max.view(batch, channels), per_min.view(batch, channels),
                         per_sum.view(batch, channels).double(), positives, finite)


def as_rows(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer output as float32 (half precision sums overflow) and as (N, C, S) rows."""
    values = output.detach().float()
    channels = values.shape[1] if values.dim() >= 2 else 1
    return values, values.reshape(values.shape[0], channels, -1)


def _indicate_positive(values: torch.Tensor, out: torch.Tensor, *, finite: bool) -> torch.Tensor:
    """1.0 where a value is > 0, else 0.0, written into `out`.

    relu then sign gives exactly that for finite values, and is ~2x faster than writing the
    comparison into a float buffer; but a NaN would stay NaN, so the comparison is kept for
    values that may hold one. (Summing a bool tensor converts it to int64 first: ~7x slower.)
    """
    if finite:
        return torch.clamp_min(values, 0, out=out).sign_()
    return torch.gt(values, 0, out=out)


def positive_counts(flat: torch.Tensor, *, finite: bool) -> torch.Tensor:
    """Per-channel count of values > 0 in (N, C, S), as float64 (see `_indicate_positive`).

    Counts are summed per input first: exact in float32 up to 2**24 positions (a 4096x4096
    map), then added up in float64.
    """
    indicator = _indicate_positive(flat, torch.empty_like(flat), finite=finite)
    return indicator.sum(dim=2).double().sum(dim=0)


def quantise_tiles(
    maps: torch.Tensor, tile_size: int, frames: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tile min-max to 0..253 on the device. Returns (uint8 tiles, min, max, flat mask).
    `frames`: the tiles are strips of that many slices (`downsample`), on one scale per strip.

    min and max come from the full-resolution map, so the legend states true values; a tile
    whose range is zero or that holds NaN/Inf is flat and filled with FLAT_INDEX.
    """
    # amin + amax: two passes, but each is ~10x faster than aminmax's fused kernel on CPU.
    low, high = maps.flatten(2).amin(dim=2), maps.flatten(2).amax(dim=2)
    # NaN propagates into min/max and an Inf becomes one, so finite extremes mean a finite tile;
    # only then is the NaN-free copy worth making.
    finite = torch.isfinite(low) & torch.isfinite(high)
    safe = maps
    if maps.device.type != "cpu" or not bool(finite.all()):
        safe = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = safe.flatten(2).amin(dim=2), safe.flatten(2).amax(dim=2)
    span = high - low
    flat = (~finite) | (span <= 0)
    pooled = downsample(safe, tile_size, frames)
    scale = torch.where(flat, torch.ones_like(span), span)
    unit = ((pooled - low[..., None, None]) / scale[..., None, None]).clamp_(0.0, 1.0)
    levels = torch.floor(unit * (LEVELS - 1) + 0.5).to(torch.uint8)
    if maps.device.type != "cpu" or bool(flat.any()):  # the mask write costs a pass; most tiles are not flat
        levels[flat] = FLAT_INDEX
    low = torch.where(finite, low, torch.full_like(low, float("nan")))
    high = torch.where(finite, high, torch.full_like(high, float("nan")))
    return levels, low, high, flat


def envelope_levels(maps: torch.Tensor, tile_size: int, low: torch.Tensor, high: torch.Tensor,
                    flat: torch.Tensor) -> torch.Tensor:
    """(N, C, L) 1D maps -> (N, C, 3, bins) uint8: each bin's min, max and mean (plots.LOW, HIGH,
    MEAN) on the tile's own full-resolution scale [low, high] from `quantise_tiles`, on the device.
    Bins are adaptive pooling windows, `plots.plot_bins` of them; flat tiles are FLAT_INDEX."""
    safe = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    bins = plot_bins(maps.shape[2], tile_size)
    stacked = torch.stack([-F.adaptive_max_pool1d(-safe, bins), F.adaptive_max_pool1d(safe, bins),
                           F.adaptive_avg_pool1d(safe, bins)], dim=2)
    scale = torch.where(flat, torch.ones_like(high), high - low)
    low = torch.nan_to_num(low, nan=0.0)
    unit = ((stacked - low[..., None, None]) / torch.nan_to_num(scale, nan=1.0)[..., None, None]).clamp_(0.0, 1.0)
    levels = torch.floor(unit * (LEVELS - 1) + 0.5).to(torch.uint8)
    levels[flat] = FLAT_INDEX
    return levels


@lru_cache(maxsize=1024)  # asked for every layer after every batch (`winners`)
def peak_shape(output_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a top-k peak position indexes (flattened). It indexes the whole map, so a
    volume keeps all its dims here (its tiles show one slice, but its peak can be in any)."""
    if len(output_shape) > 4:
        return tuple(int(d) for d in output_shape[2:])
    return tuple(int(d) for d in spatial_view(torch.empty((1, 1, *output_shape[2:]), device="meta")).shape[2:])


@dataclass(frozen=True)
class Winners:
    """One layer call's current top-k of its first channels (host copies; -1 where none)."""

    key: str
    output_shape: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    inputs: np.ndarray  # (channels, k) input indices
    positions: np.ndarray  # (channels, k) peak cells, flat into spatial_shape
    geometry_key: str = ""  # see CapturedLayer.geometry_key
    site: Site | None = None  # a token map's grid (tokens.py) decides its geometry


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a hook should look at: the output itself, or the first tensor inside it."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for key in sorted(output, key=str):
            found = first_tensor(output[key])
            if found is not None:
                return found
    return None
