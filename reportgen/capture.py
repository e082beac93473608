"""Forward hooks that reduce each selected layer's output on the device, batch by batch.

A hook never keeps an activation. It turns the output into what the report shows, right away:
- running per-channel statistics for all channels (float64 accumulators on the device);
- for the first `keep_inputs` inputs only, up to `max_channels` channels downsampled to at most
  `tile_size` pixels a side and quantised to uint8 (the only thing copied to the host).

Because the reduction happens inside the hook, an in-place op that runs after the layer
(`ReLU(inplace=True)`) cannot change what was captured, and memory does not grow with the
number of inputs. A module called several times in one forward gets one entry per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.palettes import FLAT_INDEX, LEVELS
from reportgen.plots import plot_bins
from reportgen.sites import RAW_BY_REQUEST, Plan, Site, SiteTracker, call_key


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


def spatial_view(output: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, H, W): 1D signals become one row, volumes their middle slice."""
    if output.dim() == 2:
        return output[:, :, None, None]
    if output.dim() == 3:
        return output[:, :, None, :]
    if output.dim() == 4:
        return output
    # 3D and higher: the middle slice of every extra leading spatial dimension.
    while output.dim() > 4:
        output = output.select(2, output.shape[2] // 2)
    return output


def downsample(maps: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Average-pool (N, C, H, W) so the longer side is at most `tile_size`, keeping aspect."""
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
    maps: torch.Tensor, tile_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tile min-max to 0..253 on the device. Returns (uint8 tiles, min, max, flat mask).

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
    pooled = downsample(safe, tile_size)
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


class _Accumulator:
    """Running per-channel statistics and kept tiles of one layer call (device tensors)."""

    def __init__(self, key: str, module_name: str, call_index: int, module_type: str) -> None:
        self.key = key
        self.module_name = module_name
        self.call_index = call_index
        self.type = module_type
        self.output_shape: tuple[int, ...] = ()
        self.channels_total = 0
        self.inputs_seen = 0
        self.positions_seen = 0
        self.sum_mean: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.min: torch.Tensor | None = None
        self.site = Site(raw=RAW_BY_REQUEST)
        self.active_positions: torch.Tensor | None = None
        self.inputs_active: torch.Tensor | None = None
        self.nonfinite: torch.Tensor | None = None
        self.tiles: LayerTiles | None = None
        self.top: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def update(
        self, output: torch.Tensor, keep: range, max_channels: int, tile_size: int, offset: int,
        top_k: int = 0, peak_channels: int = 0, scratch: Scratch | None = None,
        reduced: RowReductions | None = None,
    ) -> None:
        """Add one batch's `output`; `reduced`: its `reduce_rows`, when another layer call
        observed at the same tensor (a shared activation site) already computed them."""
        values, flat = as_rows(output)
        batch, channels = flat.shape[:2]
        if self.sum_mean is None:
            self.output_shape = (1, *tuple(values.shape[1:]))
            self.channels_total = channels
            device = values.device
            self.sum_mean = torch.zeros(channels, dtype=torch.float64, device=device)
            self.max = torch.full((channels,), float("-inf"), dtype=torch.float64, device=device)
            self.min = torch.full((channels,), float("inf"), dtype=torch.float64, device=device)
            self.active_positions = torch.zeros(channels, dtype=torch.float64, device=device)
            self.inputs_active = torch.zeros(channels, dtype=torch.float64, device=device)
            self.nonfinite = torch.zeros(channels, dtype=torch.float64, device=device)
            shown = tuple(range(min(channels, max_channels)))
            self.tiles = LayerTiles(channels=shown)
        assert self.max is not None and self.min is not None and self.tiles is not None
        # Four passes over the activation (max, min, sum, > 0); everything else is derived from
        # the small (N, C) results. NaN and Inf propagate into the sums, so the exact count of
        # non-finite values is only taken when a sum says there is something to count.
        reduced = reduced if reduced is not None else reduce_rows(flat, scratch)
        per_input_max, per_input_sum = reduced.max, reduced.sum
        self.sum_mean += (per_input_sum / flat.shape[2]).sum(dim=0)
        self.max = torch.maximum(self.max, per_input_max.amax(dim=0).double())
        self.min = torch.minimum(self.min, reduced.min.amin(dim=0).double())
        self.active_positions += reduced.positives
        self.inputs_active += (per_input_max > 0).sum(dim=0).double()
        if not reduced.finite:  # on an accelerator always: asking would stall the stream
            self.nonfinite += (~torch.isfinite(flat)).sum(dim=(0, 2)).double()
        self.inputs_seen += batch
        self.positions_seen += batch * flat.shape[2]
        self._update_insight(flat, per_input_max, offset, top_k, peak_channels)

        kept = [i for i in range(batch) if offset + i in keep]
        if not kept or values.dim() < 2:
            return
        shown = len(self.tiles.channels)
        # keep is a prefix of the inputs and batches arrive in order, so `kept` is contiguous.
        selected = values[kept[0] : kept[-1] + 1, :shown]
        view = spatial_view(selected)
        levels, low, high, flat_mask = quantise_tiles(view, tile_size)
        if selected.dim() == 3:  # 1D: drawn as line plots from per-bin min, max and mean
            envelopes = envelope_levels(selected, tile_size, low, high, flat_mask).cpu().numpy()
            self.tiles.envelopes.update((offset + i, envelopes[row]) for row, i in enumerate(kept))
        elif offset + kept[0] == 0 and max(view.shape[-2:]) > tile_size:
            # the zoom shows input 0's maps as they were before pooling (up to ZOOM_SIZE a side)
            self.tiles.zoom[0] = quantise_tiles(view[:1], ZOOM_SIZE)[0][0].cpu().numpy()
        levels_host = levels.cpu().numpy()
        low_host, high_host = low.cpu().numpy(), high.cpu().numpy()
        flat_host = flat_mask.cpu().numpy()
        for row, i in enumerate(kept):
            index = offset + i
            self.tiles.per_input[index] = levels_host[row]
            self.tiles.tile_min[index] = low_host[row]
            self.tiles.tile_max[index] = high_host[row]
            self.tiles.flat[index] = flat_host[row]

    def snapshot(self) -> tuple[Any, ...]:
        """The running state, cloned, so a failed batch can be undone (`restore`)."""
        tensors = (self.sum_mean, self.max, self.min, self.active_positions, self.inputs_active, self.nonfinite)
        # self.top is replaced, never changed in place, on each update: a reference is a snapshot.
        return (*(t.clone() if t is not None else None for t in tensors), self.inputs_seen, self.positions_seen,
                self.top)

    def restore(self, state: tuple[Any, ...], first_index: int) -> None:
        """Back to `state`; tiles of inputs from `first_index` on are forgotten."""
        (self.sum_mean, self.max, self.min, self.active_positions, self.inputs_active, self.nonfinite,
         self.inputs_seen, self.positions_seen, self.top) = state
        if self.tiles is not None:
            for store in (self.tiles.per_input, self.tiles.tile_min, self.tiles.tile_max, self.tiles.flat,
                          self.tiles.envelopes, self.tiles.zoom):
                for index in [i for i in store if i >= first_index]:
                    del store[index]

    def finish(self) -> CapturedLayer:
        assert self.sum_mean is not None and self.max is not None and self.min is not None
        assert self.tiles is not None and self.active_positions is not None and self.inputs_active is not None
        assert self.nonfinite is not None
        inputs = max(self.inputs_seen, 1)
        positions = max(self.positions_seen, 1)
        return CapturedLayer(
            key=self.key,
            module_name=self.module_name,
            call_index=self.call_index,
            type=self.type,
            output_shape=self.output_shape,
            channels_total=self.channels_total,
            mean=(self.sum_mean / inputs).cpu().numpy(),
            max=self.max.cpu().numpy(),
            min=self.min.cpu().numpy(),
            fraction_active=(self.active_positions / positions).cpu().numpy(),
            fraction_inputs_active=(self.inputs_active / inputs).cpu().numpy(),
            nonfinite=self.nonfinite.cpu().numpy().astype(np.int64),
            channels_shown=self.tiles.channels,
            tiles=dict(self.tiles.per_input),
            tile_min=dict(self.tiles.tile_min),
            tile_max=dict(self.tiles.tile_max),
            flat=dict(self.tiles.flat),
            inputs_seen=self.inputs_seen,
            top_scores=self.top[0].cpu().numpy() if self.top is not None else None,
            top_inputs=self.top[1].cpu().numpy() if self.top is not None else None,
            top_positions=self.top[2].cpu().numpy() if self.top is not None else None,
            spatial_shape=peak_shape(self.output_shape),
            site=self.site,
            envelopes=dict(self.tiles.envelopes),
            zoom=dict(self.tiles.zoom),
        )

    def _update_insight(self, flat: torch.Tensor, per_input_max: torch.Tensor, offset: int, top_k: int,
                        peak_channels: int) -> None:
        """Per shown channel, the top-k inputs by max activation, kept on the device.

        Candidates are ranked by `per_input_max` (already computed: no extra pass), merged with
        the kept ones by a stable sort of (k + batch) scores per channel (kept ones first, so ties
        go to the earlier input). The peak cell (argmax: a pass) is looked up only for the first
        `peak_channels` channels (those whose crops are drawn) and only for the batch rows that
        entered their top-k; the others keep -1. Memory stays (C, k) however many inputs run.
        """
        if top_k <= 0 or self.tiles is None or flat.dim() != 3:
            return
        shown = len(self.tiles.channels)
        batch = flat.shape[0]
        scores = torch.nan_to_num(per_input_max[:, :shown].T.float(), nan=float("-inf"))  # (C, B)
        inputs = torch.arange(offset, offset + batch, device=flat.device).expand(shown, batch)
        kept = 0 if self.top is None else self.top[0].shape[1]
        if self.top is not None:
            scores = torch.cat([self.top[0], scores], dim=1)
            inputs = torch.cat([self.top[1], inputs], dim=1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]  # (C, k)
        fresh = order >= kept
        rows = (order - kept).clamp(min=0)  # batch row of each fresh entry
        located = min(peak_channels, shown)
        positions = torch.full_like(order, -1)
        if located:
            channel = torch.arange(located, device=flat.device)[:, None]
            if flat.device.type == "cpu":
                # Only the batch rows that entered a top-k are searched: after the first batches
                # that is few of them (asking which is free on the CPU).
                wanted = torch.zeros(batch, dtype=torch.bool)
                wanted[rows[:located][fresh[:located]]] = True
                needed = wanted.nonzero().flatten()
                lookup = torch.zeros(batch, dtype=torch.long)
                lookup[needed] = torch.arange(needed.numel())
                peaks = flat[needed, :located].argmax(dim=2) if needed.numel() else \
                    torch.zeros((1, located), dtype=torch.long)
                positions[:located] = peaks[lookup[rows[:located]], channel]
            else:  # on an accelerator a data-dependent subset would stall the stream: all rows
                positions[:located] = flat[:, :located].argmax(dim=2)[rows[:located], channel]
        if self.top is not None:
            previous = self.top[2].gather(1, order.clamp(max=kept - 1)) if kept else positions
            positions = torch.where(fresh, positions, previous)
        self.top = (scores.gather(1, order), inputs.gather(1, order), positions)


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


class ActivationCapture:
    """Context manager owning the hooks; `__exit__` always removes them.

    Usage: `with ActivationCapture(model, names, ...) as capture:` then, before each batch,
    `capture.start_batch(offset)`, run the forward, and at the end `capture.results()`.

    With a `plan` (`sites.learn_sites`) each layer call is observed at its activation site (the
    output of the activation that acts on it, after BN and a residual add): its hook only hands
    the output to a `SiteTracker`, which calls back when the site's tensor exists. Without one
    (or for a call the plan does not know) the raw layer output is observed, and `raw_reason`
    (or "not traced") says why.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: list[str],
        *,
        max_channels: int,
        tile_size: int,
        keep_inputs: int,
        top_k: int = 0,
        peak_channels: int = 0,
        plan: Plan | None = None,
        raw_reason: str = RAW_BY_REQUEST,
    ) -> None:
        self.model = model
        self.raw_reason = raw_reason
        self._tracker = SiteTracker(model, self._on_site, plan) if plan else None
        self._layer_types: dict[str, tuple[str, int, str]] = {}  # key -> (module name, call index, type)
        self.top_k = top_k
        self.peak_channels = peak_channels
        self.layer_names = list(layer_names)
        self.max_channels = max_channels
        self.tile_size = tile_size
        self.keep = range(keep_inputs)
        self._handles: list[Any] = []
        self._calls: dict[str, int] = {}
        self._accumulators: dict[str, _Accumulator] = {}
        self._offset = 0
        self._scratch = Scratch()
        self.fired: set[str] = set()  # layer names whose hook ran at least once

    def __enter__(self) -> ActivationCapture:
        modules = dict(self.model.named_modules())
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset_calls))
            for name in self.layer_names:
                self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
            if self._tracker is not None:
                self._tracker.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            if self._tracker is not None:
                self._tracker.__exit__(None, None, None)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._scratch.release()

    def _reset_calls(self, module: nn.Module, args: Any) -> None:
        self._calls.clear()

    @property
    def offset(self) -> int:
        """Global index of the current batch's first input."""
        return self._offset

    def start_batch(self, offset: int) -> None:
        """Tell the hooks the global index of the next batch's first input."""
        self._offset = offset

    def discard(self) -> None:
        """Forget everything captured so far (a failed pass that will be run again)."""
        self._accumulators.clear()
        self._calls.clear()

    def mark(self) -> dict[str, tuple[Any, ...]]:
        """Remember the state before a batch, for `rollback` if that batch fails."""
        return {key: acc.snapshot() for key, acc in self._accumulators.items()}

    def rollback(self, mark: dict[str, tuple[Any, ...]], first_index: int) -> None:
        """Undo everything captured since `mark` (a batch that ran out of memory part-way)."""
        for key in [k for k in self._accumulators if k not in mark]:
            del self._accumulators[key]
        for key, state in mark.items():
            self._accumulators[key].restore(state, first_index)
        self._calls.clear()

    def _make_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call_index = self._calls.get(name, 0)
            self._calls[name] = call_index + 1
            self.fired.add(name)
            tensor = first_tensor(output)
            if tensor is None or tensor.dim() < 1 or not tensor.is_floating_point():
                return
            key = call_key(name, call_index)
            self._layer_types[key] = (name, call_index, type(module).__name__)
            if self._tracker is not None and key in self._tracker.plan:
                self._tracker.watch(tensor, key)  # observed at its site: `_on_site`
                return
            with torch._C.DisableTorchFunction():  # the tracker's mode need not see the reductions
                reason = self.raw_reason if self._tracker is None else "its path was not traced on the first input"
                self._observe(key, tensor, Site(raw=reason))

        return hook

    def _on_site(self, arrivals: Sequence[tuple[str, Site]], tensor: torch.Tensor) -> None:
        # layer calls that share a site (a block's conv and its shortcut conv, joined by the
        # add before the ReLU) share its reductions: the tensor is read once
        reduced = reduce_rows(as_rows(tensor)[1], self._scratch) if len(arrivals) > 1 else None
        for key, site in arrivals:
            self._observe(key, tensor, site, reduced)

    def _observe(self, key: str, tensor: torch.Tensor, site: Site, reduced: RowReductions | None = None) -> None:
        accumulator = self._accumulators.get(key)
        if accumulator is None:
            name, call_index, module_type = self._layer_types[key]
            accumulator = _Accumulator(key, name, call_index, module_type)
            accumulator.site = site
            self._accumulators[key] = accumulator
        accumulator.update(tensor, self.keep, self.max_channels, self.tile_size, self._offset, self.top_k,
                           self.peak_channels, self._scratch, reduced)

    def winners(self, channels: int) -> list[Winners]:
        """The top-k so far of each layer call's first `channels` shown channels (those whose
        peaks are located): a few small copies from the device, for crops cut mid-pass."""
        layers = [acc for acc in self._accumulators.values() if acc.top is not None]
        if not layers:
            return []
        parts = [torch.stack([acc.top[1][:channels], acc.top[2][:channels]]) for acc in layers]  # type: ignore[index]
        # one copy for all layers: on an accelerator each copy waits for the stream
        host = torch.cat([part.reshape(2, -1) for part in parts], dim=1).cpu().numpy()
        found, offset = [], 0
        for acc, part in zip(layers, parts):
            rows, k = part.shape[1:]
            inputs, positions = host[:, offset:offset + rows * k].reshape(2, rows, k)
            offset += rows * k
            found.append(Winners(key=acc.key, output_shape=acc.output_shape, spatial_shape=peak_shape(acc.output_shape),
                                 inputs=inputs, positions=positions, geometry_key=acc.site.module_key or acc.key))
        return found

    def results(self) -> list[CapturedLayer]:
        """Captured layer calls in the order they first ran (not the order their sites did)."""
        order = {key: i for i, key in enumerate(self._layer_types)}
        ranked = sorted(self._accumulators.values(), key=lambda acc: order.get(acc.key, len(order)))
        return [acc.finish() for acc in ranked]
