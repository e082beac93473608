"""The size budget: keep the HTML under `--max-size` MB by drawing less, never by running again.

The forward pass is the expensive part and its result, the `Analysis`, is kept. When the first
render is over the limit, the pictures are re-rendered from a *reduced* Analysis:

- fewer channels: the uint8 tile stacks (and their min/max, the filters) are sliced to the first
  N channels, so filters and feature maps still show the same channels;
- smaller tiles: each captured tile is average-pooled (adaptive, like `adaptive_avg_pool2d`)
  so its longer side is at most T pixels; the tiles already hold levels that are linear in the
  activation, so the mean of levels is the level of the mean, to within half a level;
- fewer inputs: feature maps are drawn for the first K inputs only.

A transformer layer's token pictures (norm map, principal components) follow the feature maps:
pooled to the same tile size, drawn for the same inputs (the estimate counts them per input drawn).

Statistics and alerts cover every channel and input whatever is drawn. The size of each
candidate is estimated from the first render (bytes per pixel of every grid), the best
candidate that fits is redrawn (its layer sections only: nothing else depends on what is
drawn) and measured, and the ladder goes on down if it still does not.

Measuring a page means rendering it, which costs about as much as drawing its pictures. So
when the first render's grid pictures alone are over the limit, that page is not rendered:
its size is the page without grids (cheap to render) plus the pictures plus their markup, and
the report says the full size was estimated. Only the page that is kept is rendered in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from reportgen.analysis import Analysis, TokenPicture
from reportgen.assemble import render_html
from reportgen.capture import CapturedLayer
from reportgen.grids import default_columns
from reportgen.plots import PLOT_HEIGHT, plot_bins, pool_envelopes, tap_width
from reportgen.report_model import BudgetInfo, LayerSection, ReportModel, TileGrid
from reportgen.view import colorbars_view

DEFAULT_MAX_SIZE_MB = 6.0
MEGABYTE = 1_000_000  # decimal MB, as the CLI reports sizes
MAX_RENDERS = 5  # re-renders after the first; each costs PNG encoding only
HEADROOM = 0.97  # aim a little under the limit: the estimate is not exact
# The first input's pictures predict the rest; only a prediction this far over the limit skips
# drawing everything (inputs differ, so a near miss is drawn and measured instead).
SAMPLE_MARGIN = 1.25

# Measured on resnet18 and resnet50 pages (both gave 400 + 20.1 per tile):
_TILE_META_BYTES = 20  # about what one tile's channel, min and max take in the page
_FIGURE_BYTES = 600  # about what one grid's markup (figure, caption, attributes, the zoom's words) takes
_BAR_MARKUP_BYTES = 110  # the zoom's <img> of one colour bar, besides its data: URI
_TOKEN_MARKUP_BYTES = 700  # about what one input's token figure (two <img>, alt texts, captions) takes
_TILE_STEPS = (28, 24, 20, 16, 12, 10, 8, 6, 4)
_CHANNEL_STEPS = (48, 32, 24, 16, 12, 8, 4, 2, 1)


@dataclass(frozen=True)
class Drawing:
    """How much of the analysis is drawn: tile side, channels per layer, inputs with maps."""

    tile_size: int
    channels: int
    inputs: int


def html_bytes(model: ReportModel) -> int:
    return len(render_html(model).encode("utf-8"))


def _picture_bytes(model: ReportModel, maps_per_section: dict[str, int] | None = None) -> int:
    """Bytes of every grid picture `model` stands for (see `_full_grids`)."""
    return sum(len(grid.image.data_uri) for grid, _ in _full_grids(model, maps_per_section))


def estimated_html_bytes(model: ReportModel, maps_per_section: dict[str, int] | None = None) -> int:
    """The page's size without rendering it in full: the page without its grids (rendered,
    cheap) plus every grid's picture (exact, or stood in for: see `_full_grids`) and markup
    (estimated per figure and tile)."""
    without_grids = replace(
        model, sections=tuple(replace(s, filters=None, feature_maps=(), token_pictures=()) for s in model.sections)
    )
    markup = sum(_FIGURE_BYTES + _TILE_META_BYTES * len(grid.channels)
                 for grid, _ in _full_grids(model, maps_per_section))
    # the zoom's colour bars go with the grids (one per colormap they use)
    markup += sum(len(bar["src"]) + _BAR_MARKUP_BYTES for bar in colorbars_view(model))
    return (html_bytes(without_grids) + _picture_bytes(model, maps_per_section) + markup
            + _token_bytes(model, None, maps_per_section))


def _token_bytes(model: ReportModel, inputs: int | None, maps_per_section: dict[str, int] | None = None) -> int:
    """Bytes of the token pictures and their figures `model` stands for with the first `inputs`
    inputs drawn (None: all). As in `_full_grids`, an input `model` did not draw but
    `maps_per_section` counts is stood in for by the last one drawn; pooling them to smaller
    tiles is not counted (they are a few hundred bytes each)."""
    total = 0
    for section in model.sections:
        drawn = [len(item.norm.data_uri) + (len(item.pca.data_uri) if item.pca is not None else 0)
                 + _TOKEN_MARKUP_BYTES for item in sorted(section.token_pictures, key=lambda t: t.input_index)]
        if not drawn:
            continue
        count = max(len(drawn), (maps_per_section or {}).get(section.name, 0))
        count = count if inputs is None else min(count, inputs)
        total += sum(drawn[min(rank, len(drawn) - 1)] for rank in range(count))
    return total


# --- reducing the analysis ------------------------------------------------------------------


def adaptive_pool_levels(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) uint8 levels -> (C, height, width), averaging like adaptive_avg_pool2d.

    Window i covers [floor(i*h/H), ceil((i+1)*h/H)). Flat tiles (all FLAT_INDEX) stay flat;
    ramp levels (0..253) average to ramp levels. Rounds with +0.5 before the cast.
    """
    _, h, w = stack.shape
    if (height, width) == (h, w):
        return stack
    values = stack.astype(np.float64)

    def pool_axis(array: np.ndarray, size: int, out: int, axis: int) -> np.ndarray:
        starts = np.array([(i * size) // out for i in range(out)])
        ends = np.array([-((-(i + 1) * size) // out) for i in range(out)])
        cumulative = np.concatenate(
            [np.zeros_like(np.take(array, [0], axis=axis)), np.cumsum(array, axis=axis)], axis=axis
        )
        sums = np.take(cumulative, ends, axis=axis) - np.take(cumulative, starts, axis=axis)
        shape = [1] * array.ndim
        shape[axis] = out
        return sums / (ends - starts).reshape(shape)

    pooled = pool_axis(pool_axis(values, h, height, 1), w, width, 2)
    return np.floor(pooled + 0.5).astype(np.uint8)


def _tile_target(h: int, w: int, tile_size: int) -> tuple[int, int]:
    """Longer side at most tile_size, aspect kept, never larger than the tile already is."""
    longest = max(h, w)
    if longest <= tile_size:
        return h, w
    return max(1, round(h * tile_size / longest)), max(1, round(w * tile_size / longest))


def _pooled_envelopes(envelopes: np.ndarray, tile_size: int) -> np.ndarray:
    """1D plots get narrower with the tile size (`plots.plot_bins`), min/max kept exact."""
    return pool_envelopes(envelopes, plot_bins(envelopes.shape[2], tile_size))


def reduce_layer(layer: CapturedLayer, drawing: Drawing) -> CapturedLayer:
    keep = [index for index in sorted(layer.tiles)][: drawing.inputs]
    shown = min(len(layer.channels_shown), drawing.channels)

    def tiles(index: int) -> np.ndarray:
        stack = layer.tiles[index][:shown]
        height, width = _tile_target(stack.shape[1], stack.shape[2], drawing.tile_size)
        return adaptive_pool_levels(stack, height, width)

    return replace(
        layer,
        channels_shown=layer.channels_shown[:shown],
        tiles={index: tiles(index) for index in keep},
        tile_min={index: layer.tile_min[index][:shown] for index in keep},
        tile_max={index: layer.tile_max[index][:shown] for index in keep},
        flat={index: layer.flat[index][:shown] for index in keep},
        envelopes={index: _pooled_envelopes(layer.envelopes[index][:shown], drawing.tile_size)
                   for index in keep if index in layer.envelopes},
    )


def reduce_token_pictures(found: dict[int, TokenPicture], drawing: Drawing) -> dict[int, TokenPicture]:
    """A layer's token pictures for the first `drawing.inputs` inputs, pooled to the tile size."""

    def pooled(picture: TokenPicture) -> TokenPicture:
        height, width = _tile_target(picture.norm.shape[0], picture.norm.shape[1], drawing.tile_size)
        pca = picture.pca
        if pca is not None:  # (h, w, 3) -> its three levels pooled like three tiles
            pca = adaptive_pool_levels(pca.transpose(2, 0, 1), height, width).transpose(1, 2, 0)
        return replace(picture, norm=adaptive_pool_levels(picture.norm[None], height, width)[0], pca=pca)

    return {index: pooled(found[index]) for index in sorted(found)[: drawing.inputs]}


def reduce_analysis(analysis: Analysis, drawing: Drawing) -> Analysis:
    """The same analysis with less drawn; statistics untouched."""
    weights = {
        name: replace(found, filters=found.filters[: drawing.channels])
        for name, found in analysis.weights.items()
    }
    return replace(
        analysis,
        layers=tuple(reduce_layer(layer, drawing) for layer in analysis.layers),
        weights=weights,
        token_pictures={key: reduce_token_pictures(found, drawing) for key, found in analysis.token_pictures.items()},
    )


def full_drawing(analysis: Analysis) -> Drawing:
    tile = max(
        (max(stack.shape[1:]) for layer in analysis.layers for stack in layer.tiles.values()),
        default=1,
    )
    channels = max((len(layer.channels_shown) for layer in analysis.layers), default=1)
    channels = max([channels, *(w.filters.shape[0] for w in analysis.weights.values())])
    inputs = max((len(layer.tiles) for layer in analysis.layers), default=0)
    return Drawing(tile_size=tile, channels=channels, inputs=inputs)


def ladder(start: Drawing) -> Iterator[Drawing]:
    """Ever smaller drawings: tiles and channels shrink in turn, then fewer inputs, to nothing."""
    tiles = [t for t in _TILE_STEPS if t < start.tile_size]
    channels = [c for c in _CHANNEL_STEPS if c < start.channels]
    current = start
    # Tiles down to 12 px and channels down to 16 alternate; then inputs down to 2; then the rest.
    while (tiles and tiles[0] >= 12) or (channels and channels[0] >= 16):
        if tiles and tiles[0] >= 12:
            current = replace(current, tile_size=tiles.pop(0))
            yield current
        if channels and channels[0] >= 16:
            current = replace(current, channels=channels.pop(0))
            yield current
    while current.inputs > 2:
        current = replace(current, inputs=current.inputs - 1)
        yield current
    while tiles or channels:
        if tiles:
            current = replace(current, tile_size=tiles.pop(0))
            yield current
        if channels:
            current = replace(current, channels=channels.pop(0))
            yield current
    while current.inputs > 0:
        current = replace(current, inputs=current.inputs - 1)
        yield current


# --- estimating -------------------------------------------------------------------------------


def _grid_pixels(count: int, tile_h: int, tile_w: int, padding: int = 1) -> int:
    if count <= 0:
        return 0
    columns = default_columns(count, tile_h, tile_w)
    rows = math.ceil(count / columns)
    return (padding + rows * (tile_h + padding)) * (padding + columns * (tile_w + padding))


def _bytes_per_pixel(grid: TileGrid) -> float:
    pixels = _grid_pixels(len(grid.channels), grid.tile_height, grid.tile_width, grid.padding)
    return len(grid.image.data_uri) / max(pixels, 1)


def _full_grids(model: ReportModel, maps_per_section: dict[str, int] | None = None) -> list[tuple[TileGrid, int]]:
    """Every grid of the drawing `model` stands for, with its input rank (-1: filters).

    `maps_per_section`: feature-map grids per section when everything is drawn, where `model`
    drew fewer (the budget's sample draws the first input only); each missing grid is stood in
    for by the last one drawn (same layer, same size: about the same bytes).
    """
    grids: list[tuple[TileGrid, int]] = []
    for section in model.sections:
        if section.filters is not None:
            grids.append((section.filters, -1))
        drawn = [fm.grid for fm in sorted(section.feature_maps, key=lambda f: f.input_index)]
        count = max(len(drawn), (maps_per_section or {}).get(section.name, 0)) if drawn else 0
        grids += [(drawn[min(rank, len(drawn) - 1)], rank) for rank in range(count)]
    return grids


def estimate_bytes(first: ReportModel, first_bytes: int, drawing: Drawing,
                   maps_per_section: dict[str, int] | None = None) -> int:
    """Predicted HTML size for `drawing`, from the first render's bytes per pixel."""
    picture_bytes = 0
    predicted = 0.0
    # 1D maps are line plots: their height stays, their width follows the tile size (`plot_bins`)
    plots = {id(maps.grid) for section in first.sections if len(section.output_shape) == 3
             for maps in section.feature_maps}
    for grid, rank in _full_grids(first, maps_per_section):
        picture_bytes += len(grid.image.data_uri)
        if rank >= drawing.inputs:  # not drawn: its markup and per-tile numbers go too
            predicted -= _FIGURE_BYTES + _TILE_META_BYTES * len(grid.channels)
            continue
        count = min(len(grid.channels), drawing.channels)
        if rank < 0:  # filters keep their size; only their count changes
            height, width = grid.tile_height, grid.tile_width
        elif id(grid) in plots:
            height, width = grid.tile_height, plot_bins(grid.tile_width, drawing.tile_size)
        else:
            height, width = _tile_target(grid.tile_height, grid.tile_width, drawing.tile_size)
        predicted += _bytes_per_pixel(grid) * _grid_pixels(count, height, width, grid.padding)
        # per-tile numbers (channel, min, max) in the page scale with the channel count
        predicted -= _TILE_META_BYTES * (len(grid.channels) - count)
    # token pictures go with the inputs drawn
    predicted += _token_bytes(first, drawing.inputs, maps_per_section) - _token_bytes(first, None, maps_per_section)
    return int(first_bytes - picture_bytes + predicted)


def picture_ceiling(analysis: Analysis) -> int:
    """Bytes the grid pictures of everything drawn can take at most, before any is encoded:
    one byte a pixel (three for RGB filters; deflate never grows data by more than a little),
    base64's 4/3 and a header each."""
    total = 0
    for layer in analysis.layers:
        for index, stack in layer.tiles.items():
            # 1D maps are drawn as plots PLOT_HEIGHT high, one column per envelope bin
            height, width = (PLOT_HEIGHT, layer.envelopes[index].shape[2]) if index in layer.envelopes \
                else stack.shape[1:]
            total += _grid_pixels(stack.shape[0], height, width) * 1.02 + 300
    for weights in analysis.weights.values():
        count, height, width = weights.filters.shape[0], weights.filters.shape[-2], weights.filters.shape[-1]
        if weights.filters.ndim == 3:  # 1D kernels: palette line plots
            height, width = PLOT_HEIGHT, width * tap_width(width)
        total += _grid_pixels(count, height, width) * 3 * 1.02 + 300
    for found in analysis.token_pictures.values():  # a palette norm map and an RGB picture per input
        for picture in found.values():
            total += picture.norm.size * 1.02 + 300 + (picture.pca.size * 1.02 + 300 if picture.pca is not None else 0)
    return int(total * 4 / 3)


# --- fitting ----------------------------------------------------------------------------------


def describe(start: Drawing, end: Drawing, limit_bytes: int, first_bytes: int, *, estimated: bool = False) -> str:
    changes = []
    if end.tile_size < start.tile_size:
        changes.append(f"feature-map tiles {start.tile_size} → {end.tile_size} px")
    if end.channels < start.channels:
        changes.append(f"channels drawn per layer {start.channels} → {end.channels}")
    if end.inputs < start.inputs:
        changes.append(f"inputs with feature maps {start.inputs} → {end.inputs}")
    what = ", ".join(changes) or "nothing"
    about = "about " if estimated else ""
    return (
        f"To stay under --max-size {limit_bytes / MEGABYTE:g} MB (everything drawn would take "
        f"{about}{first_bytes / MEGABYTE:.2f} MB), less is drawn: {what}. Statistics and alerts still "
        "cover every channel and input; rerun with --max-size 0 to draw everything."
    )


def fit_to_budget(
    analysis: Analysis,
    *,
    limit_bytes: int,
    render_report: Callable[[Analysis, tuple[LayerSection, ...] | None], ReportModel],
    redraw_sections: Callable[[Analysis], tuple[LayerSection, ...]],
    measure: Callable[[ReportModel], int] = html_bytes,
) -> ReportModel:
    """The report of everything if it fits, else the best redraw from a reduced analysis that does.

    `render_report(analysis, sections)` renders the report (with `sections` already drawn, or
    drawing them); `redraw_sections` draws the layer sections of a (reduced) analysis; `measure`
    gives the bytes of a page (the caller may keep the page it renders to measure: it is usually
    the one saved).

    When the pictures may not fit, the first input's sections are drawn first (a sample): if
    they predict the full drawing well over the limit, the full drawing is never encoded and
    the ladder starts from the sample; otherwise everything is drawn and measured.
    """
    if limit_bytes <= 0:
        return render_report(analysis, None)
    start = full_drawing(analysis)
    maps = {layer.key: len(layer.tiles) for layer in analysis.layers}
    first: ReportModel | None = None
    estimated = False
    if start.inputs > 1 and picture_ceiling(analysis) > limit_bytes:
        sample = render_report(analysis, redraw_sections(reduce_analysis(analysis, replace(start, inputs=1))))
        # the whole page's estimate, not its pictures' alone: with many inputs the rest of the
        # page (predictions, inputs, top-k) is a large part of it (1.5 of 8.5 MB for 512 inputs)
        sample_bytes = estimated_html_bytes(sample, maps)
        if sample_bytes > limit_bytes * SAMPLE_MARGIN:
            first, estimated, first_bytes = sample, True, sample_bytes
    if first is None:
        first = render_report(analysis, None)
        maps = {}
        estimated = _picture_bytes(first) > limit_bytes
        if estimated:  # certainly over: no need to render this page in full
            first_bytes = estimated_html_bytes(first)
        else:
            first_bytes = measure(first)
            if first_bytes <= limit_bytes:
                return first
    candidates = list(ladder(start))
    if not candidates:
        candidates = [start]
    correction = 1.0
    position = 0
    for attempt in range(MAX_RENDERS):
        if attempt == MAX_RENDERS - 1:
            position = len(candidates) - 1  # last try: the smallest drawing there is
        # the first candidate predicted to fit (corrected by what the last render showed)
        while position < len(candidates) - 1 and (
            estimate_bytes(first, first_bytes, candidates[position], maps) * correction
            > limit_bytes * HEADROOM
        ):
            position += 1
        drawing = candidates[position]
        info = BudgetInfo(
            limit_bytes=limit_bytes,
            full_bytes=first_bytes,
            full_bytes_estimated=estimated,
            tile_size=(start.tile_size, drawing.tile_size),
            channels=(start.channels, drawing.channels),
            inputs_drawn=(start.inputs, drawing.inputs),
            fits=True,
            message=describe(start, drawing, limit_bytes, first_bytes, estimated=estimated),
        )
        # only the sections hold what the budget reduces; alerts, inputs and the rest stay as is
        best = replace(first, sections=redraw_sections(reduce_analysis(analysis, drawing)), budget=info)
        actual = measure(best)
        if actual <= limit_bytes:
            return best
        if position == len(candidates) - 1:
            break
        correction = max(correction, actual / max(estimate_bytes(first, first_bytes, drawing, maps), 1))
        position += 1
    note = info.message.replace(
        "less is drawn", f"less is drawn but it still takes {actual / MEGABYTE:.2f} MB"
    )
    return replace(best, budget=replace(info, fits=False, message=note))
