"""Activation statistics, tiles and top-k inputs of every observed layer call (one collector:
they share the per-row reductions).

Per layer call, on the device:
- running per-channel statistics for all channels (float64: mean, max, min, positives, inputs
  with a positive value, non-finite values);
- for the first `keep_inputs` inputs, up to `max_channels` channels downsampled to at most
  `tile_size` pixels a side and quantised to uint8 (the only thing copied to the host), and
  input 0's maps at up to ZOOM_SIZE px for the zoom;
- per shown channel, the top-k inputs by max activation, and the peak cell of the first
  `peak_channels` channels (those whose crops are drawn).
Nothing grows with the number of inputs but the kept inputs' tiles.

Merging two states is exact: sums add, extremes take the extreme, tiles are a union, and two
top-k lists keep the k best with ties going to the lower input index, which is what one pass in
input order gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reportgen.capture import (
    ZOOM_SIZE,
    CapturedLayer,
    LayerTiles,
    Winners,
    envelope_levels,
    frame_slices,
    peak_shape,
    quantise_tiles,
    spatial_view,
)
from reportgen.engine.collector import Collector, Observation
from reportgen.sites import Site

Top = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # scores (C, k), input indices (C, k), peak cells (C, k)
_NO_INPUT = torch.iinfo(torch.long).max  # a candidate that cannot enter (sorts after every input)


def merge_top(first: Top | None, second: Top | None, k: int) -> Top | None:
    """The k best of two top-k lists by score, ties to the lower input index."""
    if first is None or second is None:
        return first if second is None else second
    scores = torch.cat([first[0], second[0]], dim=1)
    inputs = torch.cat([first[1], second[1]], dim=1)
    positions = torch.cat([first[2], second[2]], dim=1)
    by_input = torch.sort(inputs, dim=1, stable=True).indices
    scores, inputs, positions = (t.gather(1, by_input) for t in (scores, inputs, positions))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), inputs.gather(1, order), positions.gather(1, order)


@dataclass
class LayerState:
    """One layer call's statistics, kept tiles and top-k (device tensors)."""

    key: str
    module_name: str
    call_index: int
    type: str
    site: Site
    output_shape: tuple[int, ...]
    channels_total: int
    shown: tuple[int, ...]
    top_k: int
    sum_mean: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    active_positions: torch.Tensor
    inputs_active: torch.Tensor
    nonfinite: torch.Tensor
    inputs_seen: int = 0
    positions_seen: int = 0
    tiles: LayerTiles = field(default_factory=lambda: LayerTiles(channels=()))
    top: Top | None = None

    @classmethod
    def empty(cls, observation: Observation, values: torch.Tensor, max_channels: int, top_k: int) -> LayerState:
        channels = values.shape[1] if values.dim() >= 2 else 1
        device = values.device

        def filled(value: float) -> torch.Tensor:
            return torch.full((channels,), value, dtype=torch.float64, device=device)

        shown = tuple(range(min(channels, max_channels)))
        return cls(key=observation.key, module_name=observation.name, call_index=observation.call_index,
                   type=observation.module_type, site=observation.site, output_shape=(1, *values.shape[1:]),
                   channels_total=channels, shown=shown, top_k=top_k, sum_mean=filled(0.0),
                   max=filled(float("-inf")), min=filled(float("inf")), active_positions=filled(0.0),
                   inputs_active=filled(0.0), nonfinite=filled(0.0), tiles=LayerTiles(channels=shown))

    def merge(self, other: LayerState) -> None:
        # out of place: a merge after the pass may run outside inference mode
        self.sum_mean = self.sum_mean + other.sum_mean
        self.max = torch.maximum(self.max, other.max)
        self.min = torch.minimum(self.min, other.min)
        self.active_positions = self.active_positions + other.active_positions
        self.inputs_active = self.inputs_active + other.inputs_active
        self.nonfinite = self.nonfinite + other.nonfinite
        self.inputs_seen += other.inputs_seen
        self.positions_seen += other.positions_seen
        for mine, theirs in ((self.tiles.per_input, other.tiles.per_input), (self.tiles.tile_min, other.tiles.tile_min),
                             (self.tiles.tile_max, other.tiles.tile_max), (self.tiles.flat, other.tiles.flat),
                             (self.tiles.envelopes, other.tiles.envelopes), (self.tiles.zoom, other.tiles.zoom)):
            mine.update(theirs)
        self.top = merge_top(self.top, other.top, self.top_k)

    def finish(self) -> CapturedLayer:
        inputs = max(self.inputs_seen, 1)
        positions = max(self.positions_seen, 1)
        return CapturedLayer(
            key=self.key, module_name=self.module_name, call_index=self.call_index, type=self.type,
            output_shape=self.output_shape, channels_total=self.channels_total,
            mean=(self.sum_mean / inputs).cpu().numpy(), max=self.max.cpu().numpy(), min=self.min.cpu().numpy(),
            fraction_active=(self.active_positions / positions).cpu().numpy(),
            fraction_inputs_active=(self.inputs_active / inputs).cpu().numpy(),
            nonfinite=self.nonfinite.cpu().numpy().astype(np.int64), channels_shown=self.shown,
            tiles=dict(self.tiles.per_input), tile_min=dict(self.tiles.tile_min), tile_max=dict(self.tiles.tile_max),
            flat=dict(self.tiles.flat), inputs_seen=self.inputs_seen,
            top_scores=self.top[0].cpu().numpy() if self.top is not None else None,
            top_inputs=self.top[1].cpu().numpy() if self.top is not None else None,
            top_positions=self.top[2].cpu().numpy() if self.top is not None else None,
            spatial_shape=peak_shape(self.output_shape), site=self.site,
            envelopes=dict(self.tiles.envelopes), zoom=dict(self.tiles.zoom),
        )


@dataclass
class ActivationState:
    layers: dict[str, LayerState] = field(default_factory=dict)

    def merge(self, other: ActivationState) -> None:
        for key, theirs in other.layers.items():
            mine = self.layers.get(key)
            if mine is None:
                self.layers[key] = theirs
            else:
                mine.merge(theirs)


class ActivationCollector(Collector[ActivationState]):
    """Statistics, tiles and top-k of every observed layer call (see the module doc)."""

    observes = True

    def __init__(self, *, max_channels: int, tile_size: int, keep_inputs: int, top_k: int = 0,
                 peak_channels: int = 0) -> None:
        super().__init__()
        self.max_channels = max_channels
        self.tile_size = tile_size
        self.keep = range(keep_inputs)
        self.top_k = top_k
        self.peak_channels = peak_channels

    def empty(self) -> ActivationState:
        return ActivationState()

    def observe(self, observation: Observation) -> None:
        values, flat = observation.rows()
        state = self.staged.layers.get(observation.key)
        if state is None:
            state = LayerState.empty(observation, values, self.max_channels, self.top_k)
            self.staged.layers[observation.key] = state
        batch = flat.shape[0]
        # Four passes over the activation (max, min, sum, > 0), shared with every collector;
        # everything else is derived from the small (N, C) results. NaN and Inf propagate into
        # the sums, so the exact count of non-finite values is only taken when a sum says so.
        reduced = observation.reduced()
        state.sum_mean += (reduced.sum / flat.shape[2]).sum(dim=0)
        state.max = torch.maximum(state.max, reduced.max.amax(dim=0).double())
        state.min = torch.minimum(state.min, reduced.min.amin(dim=0).double())
        state.active_positions += reduced.positives
        state.inputs_active += (reduced.max > 0).sum(dim=0).double()
        if not reduced.finite:  # on an accelerator always: asking would stall the stream
            state.nonfinite += (~torch.isfinite(flat)).sum(dim=(0, 2)).double()
        state.inputs_seen += batch
        state.positions_seen += batch * flat.shape[2]
        self._top(state, flat, reduced.max)
        self._tiles(state, values)

    @property
    def _offset(self) -> int:
        return self.batch.start if self.batch is not None else 0

    def _tiles(self, state: LayerState, values: torch.Tensor) -> None:
        offset = self._offset
        kept = [i for i in range(values.shape[0]) if offset + i in self.keep]
        if not kept or values.dim() < 2:
            return
        # keep is a prefix of the inputs and batches arrive in order, so `kept` is contiguous.
        selected = values[kept[0]: kept[-1] + 1, :len(state.shown)]
        view = spatial_view(selected)
        frames = len(frame_slices(selected.shape[2])) if selected.dim() == 5 else 1  # a volume: a strip
        levels, low, high, flat_mask = quantise_tiles(view, self.tile_size, frames)
        tiles = state.tiles
        if selected.dim() == 3:  # 1D: drawn as line plots from per-bin min, max and mean
            envelopes = envelope_levels(selected, self.tile_size, low, high, flat_mask).cpu().numpy()
            tiles.envelopes.update((offset + i, envelopes[row]) for row, i in enumerate(kept))
        elif offset + kept[0] == 0 and max(view.shape[-2], view.shape[-1] // frames) > self.tile_size:
            # the zoom shows input 0's maps as they were before pooling (up to ZOOM_SIZE a side)
            tiles.zoom[0] = quantise_tiles(view[:1], ZOOM_SIZE, frames)[0][0].cpu().numpy()
        levels_host, low_host, high_host = levels.cpu().numpy(), low.cpu().numpy(), high.cpu().numpy()
        flat_host = flat_mask.cpu().numpy()
        for row, i in enumerate(kept):
            index = offset + i
            tiles.per_input[index] = levels_host[row]
            tiles.tile_min[index] = low_host[row]
            tiles.tile_max[index] = high_host[row]
            tiles.flat[index] = flat_host[row]

    def _top(self, state: LayerState, flat: torch.Tensor, per_input_max: torch.Tensor) -> None:
        """This batch's candidates for each shown channel's top-k inputs by max activation.

        Candidates are ranked by `per_input_max` (already computed: no extra pass). A row that
        does not beat the committed k-th score of its channel cannot enter (on a tie the
        earlier input wins), so it is dropped here and its peak never looked up. The peak cell
        (argmax: a pass) is found only for the first `peak_channels` channels and only for the
        rows still in; the others keep -1.
        """
        if self.top_k <= 0 or flat.dim() != 3:
            return
        shown = len(state.shown)
        batch = flat.shape[0]
        scores = torch.nan_to_num(per_input_max[:, :shown].T.float(), nan=float("-inf"))  # (C, B)
        inputs = torch.arange(self._offset, self._offset + batch, device=flat.device).expand(shown, batch)
        committed = self.state.layers.get(state.key)
        if committed is not None and committed.top is not None and committed.top[0].shape[1] >= self.top_k:
            out = scores <= committed.top[0][:, -1:]
            scores = scores.masked_fill(out, float("-inf"))
            inputs = inputs.masked_fill(out, _NO_INPUT)
        width = min(self.top_k, batch)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :width]  # (C, width)
        chosen_inputs = inputs.gather(1, order)
        located = min(self.peak_channels, shown)
        positions = torch.full_like(order, -1)
        if located:
            channel = torch.arange(located, device=flat.device)[:, None]
            rows = order[:located]
            if flat.device.type == "cpu":
                # Only the batch rows still in some located channel's list are searched: after
                # the first batches that is few of them (asking which is free on the CPU).
                wanted = torch.zeros(batch, dtype=torch.bool)
                wanted[rows[chosen_inputs[:located] != _NO_INPUT]] = True
                needed = wanted.nonzero().flatten()
                lookup = torch.zeros(batch, dtype=torch.long)
                lookup[needed] = torch.arange(needed.numel())
                peaks = flat[needed, :located].argmax(dim=2) if needed.numel() else \
                    torch.zeros((1, located), dtype=torch.long)
                positions[:located] = peaks[lookup[rows], channel]
            else:  # on an accelerator a data-dependent subset would stall the stream: all rows
                positions[:located] = flat[:, :located].argmax(dim=2)[rows, channel]
            positions = positions.masked_fill(chosen_inputs == _NO_INPUT, -1)
        staged = (scores.gather(1, order), chosen_inputs, positions)
        state.top = merge_top(state.top, staged, self.top_k)

    # -- results --
    def winners(self, channels: int) -> list[Winners]:
        """The committed top-k of each layer call's first `channels` shown channels (those whose
        peaks are located): a few small copies from the device, for crops cut mid-pass."""
        layers = [state for state in self.state.layers.values() if state.top is not None]
        if not layers:
            return []
        parts = [torch.stack([state.top[1][:channels], state.top[2][:channels]]) for state in layers]  # type: ignore[index]
        # one copy for all layers: on an accelerator each copy waits for the stream
        host = torch.cat([part.reshape(2, -1) for part in parts], dim=1).cpu().numpy()
        found, offset = [], 0
        for state, part in zip(layers, parts):
            rows, k = part.shape[1:]
            inputs, positions = host[:, offset:offset + rows * k].reshape(2, rows, k)
            offset += rows * k
            found.append(Winners(key=state.key, output_shape=state.output_shape,
                                 spatial_shape=peak_shape(state.output_shape), inputs=inputs, positions=positions,
                                 geometry_key=state.site.module_key or state.key, site=state.site))
        return found

    def results(self, order: dict[str, int] | None = None) -> list[CapturedLayer]:
        """Observed layer calls, in `order` (the order they first ran, not the order their sites
        did) when given."""
        ranked: list[Any] = list(self.state.layers.values())
        if order is not None:
            ranked.sort(key=lambda state: order.get(state.key, len(order)))
        return [state.finish() for state in ranked]
