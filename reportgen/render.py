"""The render stage: an `Analysis` (numpy) -> the `ReportModel` (encoded pictures, plain values).

Pictures are laid out in numpy and encoded to PNG in a thread pool: zlib releases the GIL, so
encoding runs on every core.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from reportgen import insight_render
from reportgen.alerts import AlertThresholds, find_alerts
from reportgen.analysis import Analysis, InputRecord, LayerWeights, PredictionRecord, TokenPicture
from reportgen.capture import CapturedLayer, frame_slices
from reportgen.dense_render import render_dense
from reportgen.filters import filter_tiles
from reportgen.grids import embed, encode_png, tile_grid
from reportgen.palettes import PAD_INDEX, separator_note
from reportgen.plots import envelope_plots, zero_levels
from reportgen.report_model import (
    ChannelStats,
    EncodedImage,
    FeatureMaps,
    InputSummary,
    LayerRow,
    LayerSection,
    ModelInfo,
    Prediction,
    ReportModel,
    RunInfo,
    TileGrid,
    TokenPictures,
    TopClass,
    Totals,
    ZoomMap,
)


@dataclass(frozen=True)
class RenderOptions:
    filter_scale: str = "per-filter"
    colormap: str = "viridis"


@dataclass(frozen=True)
class _Pending:
    """A laid-out picture waiting for its PNG encoding."""

    picture: np.ndarray
    colormap: str | None


# ids the page itself uses that a layer's anchor could spell: a module named `filter` must not
# take the filter box's id (its permalink would land on the box and never open its section).
PAGE_IDS = frozenset({"layer-filter", "nav-layers"})


def anchors_for(names: Sequence[str], prefix: str = "layer-") -> dict[str, str]:
    """Stable, unique, ASCII ids: odd characters become '-', collisions get a counter.

    Letters outside ASCII become their code point (`层` -> `u5c42`), so an all-Cyrillic or
    all-CJK name still gets its own readable permalink rather than `layer-x`, and the URL
    survives mail clients that mangle percent-encoded fragments.
    """
    taken: set[str] = set(PAGE_IDS)
    result: dict[str, str] = {}
    for name in names:
        spelled = "".join(c if c.isascii() or not c.isalnum() else f"u{ord(c):x}" for c in name)
        base = prefix + (re.sub(r"[^A-Za-z0-9_.-]+", "-", spelled).strip("-") or "x")
        base = base[:120]
        anchor, counter = base, 2
        while anchor in taken:
            anchor = f"{base}-{counter}"
            counter += 1
        taken.add(anchor)
        result[name] = anchor
    return result


def _floats(values: np.ndarray) -> tuple[float, ...]:
    # tolist() makes Python floats in C; a generator of float(v) cost ~0.1 s on resnet50's grids
    return tuple(np.asarray(values, dtype=np.float64).tolist())


def _optional_floats(values: np.ndarray) -> tuple[float | None, ...]:
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if finite.all():
        return tuple(array.tolist())
    return tuple(v if ok else None for v, ok in zip(array.tolist(), finite.tolist()))


def _feature_legend(layer: CapturedLayer, tile_shape: tuple[int, int], colormap: str) -> str:
    shown = len(layer.channels_shown)
    spatial = layer.output_shape[2:]
    size = "x".join(str(d) for d in spatial) or "1x1"
    parts = [
        f"channels 0–{shown - 1} of {layer.channels_total}" if shown > 1 else f"channel 0 of {layer.channels_total}",
        f"each tile stretched from its own min (dark) to its own max (bright) on {colormap}",
        "magenta = flat (zero range, NaN or Inf)",
    ]
    drawn = f"{tile_shape[0]}x{tile_shape[1]}"
    if len(spatial) == 3:
        slices = frame_slices(spatial[0])
        which = "all" if len(slices) == spatial[0] else ", ".join(str(t) for t in slices) + " of"
        parts.append(f"time (depth) slices {which} {spatial[0]} side by side, left to right, one scale per strip")
        size = f"{spatial[1]}x{spatial[2] * len(slices)}"
    if drawn != size and len(spatial) >= 2:
        parts.append(f"{size} average-pooled to {drawn}")
    return "; ".join(parts)


def _plot_legend(layer: CapturedLayer, bins: int) -> str:
    shown = len(layer.channels_shown)
    length = layer.output_shape[-1]
    channels = (f"channels 0–{shown - 1} of {layer.channels_total}" if shown > 1
                else f"channel 0 of {layer.channels_total}")
    if bins < length:
        columns = (f"{length} positions in {bins} pixel columns (about {length / bins:.3g} each): "
                   "gray band = each column's min to max, black line = its mean")
    else:
        columns = f"one pixel column per position ({length}), black line = the value"
    return (f"{channels}; each channel a line plot, bottom = its own min, top = its own max; {columns}; "
            "mid-gray line = 0 (when within the range); magenta = flat (zero range, NaN or Inf)")


class _Renderer:
    def __init__(self, analysis: Analysis, options: RenderOptions) -> None:
        self.analysis = analysis
        self.options = options
        self.pending: list[_Pending] = []

    def queue(self, picture: np.ndarray, colormap: str | None) -> int:
        self.pending.append(_Pending(picture, colormap))
        return len(self.pending) - 1

    def encode_all(self, progress: Callable[[int], None] | None) -> list[EncodedImage]:
        def encode(item: _Pending) -> EncodedImage:
            data = encode_png(item.picture, item.colormap)
            if progress is not None:
                progress(1)
            return embed(data, width=item.picture.shape[1], height=item.picture.shape[0])

        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(encode, self.pending))


def _grid_spec(
    renderer: _Renderer,
    tiles: np.ndarray,
    channels: Sequence[int],
    tile_min: np.ndarray,
    tile_max: np.ndarray,
    flat: np.ndarray,
    colormap: str | None,
    legend: str,
) -> tuple[int, dict[str, object]]:
    pad_value: int | tuple[int, ...] = PAD_INDEX if tiles.ndim == 3 else (255, 255, 255)
    if tiles.ndim == 3 and colormap is not None:
        legend = f"{legend}; {separator_note(colormap)}"
    picture, layout = tile_grid(tiles, pad_value=pad_value)
    slot = renderer.queue(picture, colormap)
    spec = {
        "columns": layout.columns,
        "rows": layout.rows,
        "tile_width": layout.tile_width,
        "tile_height": layout.tile_height,
        "padding": layout.padding,
        "channels": tuple(int(c) for c in channels),
        "tile_min": _optional_floats(tile_min),
        "tile_max": _optional_floats(tile_max),
        "flat_channels": tuple(int(c) for c, f in zip(channels, flat) if f),
        "legend": legend,
        "colormap": colormap if tiles.ndim == 3 else None,
    }
    return slot, spec


def _anchors(analysis: Analysis) -> dict[str, str]:
    section_names = [layer.key for layer in analysis.layers]
    rows = [row.name for row in analysis.summary.rows]
    known = set(rows)
    return anchors_for(rows + [n for n in section_names if n not in known])


def section_anchors(analysis: Analysis) -> dict[str, str]:
    """The permalink anchor of each layer section (layer call key), whatever is drawn."""
    anchors = _anchors(analysis)
    return {layer.key: anchors[layer.key] for layer in analysis.layers}


def _draw_sections(
    analysis: Analysis,
    anchors: dict[str, str],
    options: RenderOptions,
    progress: Callable[[int], None] | None,
) -> list[LayerSection]:
    """One section per captured layer call: filters, feature maps and statistics, encoded."""
    renderer = _Renderer(analysis, options)
    first_conv = analysis.selected[0] if analysis.selected else None

    # Lay out every picture first, remembering which slot each goes to.
    filter_slots: dict[str, tuple[int, dict[str, object], str]] = {}
    for name, weights in analysis.weights.items():
        rgb = name == first_conv and weights.in_channels == 3 and weights.groups == 1
        tiles = filter_tiles(weights.filters, rgb_first_layer=rgb, scale=options.filter_scale)
        channels = range(tiles.tiles.shape[0])
        slot, spec = _grid_spec(renderer, tiles.tiles, channels, tiles.tile_min, tiles.tile_max,
                                tiles.flat, tiles.colormap, tiles.legend)
        filter_slots[name] = (slot, spec, _filter_note(weights))

    map_slots: dict[str, list[tuple[int, int, dict[str, object]]]] = {}
    for layer in analysis.layers:
        entries = []
        for index in sorted(layer.tiles):
            stack, colormap = layer.tiles[index], options.colormap
            legend = _feature_legend(layer, stack.shape[1:], options.colormap)
            if index in layer.envelopes:  # 1D: line plots instead of one-pixel-high strips
                envelopes = layer.envelopes[index]
                stack = envelope_plots(envelopes, zero_levels(layer.tile_min[index], layer.tile_max[index]),
                                       layer.flat[index])
                colormap, legend = "gray", _plot_legend(layer, envelopes.shape[2])
            slot, spec = _grid_spec(renderer, stack, layer.channels_shown, layer.tile_min[index],
                                    layer.tile_max[index], layer.flat[index], colormap, legend)
            entries.append((index, slot, spec))
        map_slots[layer.key] = entries

    images = renderer.encode_all(progress)
    names_by_index = {record.index: record.name for record in analysis.inputs}
    token_pictures = _token_pictures(analysis, options, names_by_index)

    def grid(slot: int, spec: dict[str, object]) -> TileGrid:
        return TileGrid(image=images[slot], **spec)  # type: ignore[arg-type]

    sections = []
    for layer in analysis.layers:
        filters = filter_slots.get(layer.module_name)
        sections.append(
            LayerSection(
                name=layer.key,
                anchor=anchors[layer.key],
                type=layer.type,
                weight_shape=analysis.weights[layer.module_name].weight_shape
                if layer.module_name in analysis.weights else (),
                output_shape=layer.output_shape,
                channels_total=layer.channels_total,
                channels_shown=layer.channels_shown,
                selection_note=_selection_note(layer),
                filters=grid(filters[0], filters[1]) if filters and layer.call_index == 0 else None,
                filter_note=filters[2] if filters else "this layer has no convolution kernel to draw",
                feature_maps=tuple(
                    FeatureMaps(input_index=index, input_name=names_by_index.get(index, str(index)),
                                grid=grid(slot, spec))
                    for index, slot, spec in map_slots[layer.key]
                ),
                stats=ChannelStats(
                    mean=_floats(layer.mean),
                    max=_floats(layer.max),
                    min=_floats(layer.min),
                    fraction_active=_floats(layer.fraction_active),
                    fraction_inputs_active=_floats(layer.fraction_inputs_active),
                    nonfinite=tuple(np.asarray(layer.nonfinite, dtype=np.int64).tolist()),
                    inputs=layer.inputs_seen,
                ),
                site=layer.site.describe(),
                site_zero_floor=layer.site.zero_floor,
                token_layer=bool(layer.site.grid),
                token_pictures=token_pictures.get(layer.key, ()),
            )
        )
    return sections


def _token_pictures(analysis: Analysis, options: RenderOptions,
                    names: dict[int, str]) -> dict[str, tuple[TokenPictures, ...]]:
    """Each transformer layer call's token-norm maps (palette levels on the colormap, like a
    feature-map tile) and principal-component pictures (RGB), encoded; per shown input."""
    colormap = options.colormap
    renderer = _Renderer(analysis, options)
    slots: list[tuple[str, int, TokenPicture, int, int | None]] = []
    for key, found in analysis.token_pictures.items():
        for index in sorted(found):
            picture = found[index]
            slots.append((key, index, picture, renderer.queue(picture.norm, colormap),
                          renderer.queue(picture.pca, None) if picture.pca is not None else None))
    images = renderer.encode_all(None)  # small pictures: not counted by the progress bar
    drawn: dict[str, list[TokenPictures]] = {}
    for key, index, picture, norm, pca in slots:
        finite = bool(np.isfinite(picture.norm_min) and np.isfinite(picture.norm_max))
        drawn.setdefault(key, []).append(TokenPictures(
            input_index=index, input_name=names.get(index, str(index)), grid=picture.grid,
            channels=picture.channels, norm=images[norm],
            norm_min=float(picture.norm_min) if finite else None, norm_max=float(picture.norm_max) if finite else None,
            pca=images[pca] if pca is not None else None, explained_variance=picture.explained,
            components=picture.components, colormap=colormap))
    return {key: tuple(found) for key, found in drawn.items()}


def zoom_maps(analysis: Analysis, *, allowance_bytes: float, options: RenderOptions = RenderOptions()
              ) -> tuple[ZoomMap, ...]:
    """The first input's maps before pooling (up to `capture.ZOOM_SIZE` px a side), one grid per
    layer whose tiles were pooled, in page order, while their pictures fit `allowance_bytes`:
    the share of the size budget the zoom may take (a layer that does not fit is left out, a
    smaller later one may still be kept)."""
    anchors = _anchors(analysis)
    renderer = _Renderer(analysis, options)
    pending = []
    for layer in analysis.layers:
        stack = layer.zoom.get(0)
        if stack is None or 0 not in layer.tile_min:
            continue
        shown = len(layer.channels_shown)
        slot, spec = _grid_spec(renderer, stack[:shown], layer.channels_shown, layer.tile_min[0], layer.tile_max[0],
                                layer.flat[0], options.colormap, "")
        pending.append((layer.key, slot, spec, tuple(int(d) for d in layer.output_shape[-2:])))
    images = renderer.encode_all(None)
    kept, used = [], 0
    for key, slot, spec, full in pending:
        size = len(images[slot].data_uri)
        if used + size > allowance_bytes:
            continue
        used += size
        kept.append(ZoomMap(anchor=anchors[key], input_index=0, grid=TileGrid(image=images[slot], **spec),
                            full_shape=(full[0], full[1])))
    return tuple(kept)


def render_sections(
    analysis: Analysis,
    *,
    options: RenderOptions = RenderOptions(),
    thresholds: AlertThresholds = AlertThresholds(),
) -> tuple[LayerSection, ...]:
    """The layer sections alone, with their per-layer insight: what the size budget redraws
    from a reduced analysis. Everything else in the report does not depend on what is drawn."""
    sections = _draw_sections(analysis, _anchors(analysis), options, None)
    return insight_render.build_sections(analysis, sections, thresholds=thresholds)


def render(
    analysis: Analysis,
    *,
    run: RunInfo,
    model_info: ModelInfo,
    class_names: Sequence[str] | None,
    options: RenderOptions = RenderOptions(),
    progress: Callable[[int], None] | None = None,
    thresholds: AlertThresholds = AlertThresholds(),
    sections: Sequence[LayerSection] | None = None,
) -> ReportModel:
    """The report model of `analysis`. `sections`: its layer sections already drawn by
    `render_sections` (possibly from a reduced analysis: the size budget's sample)."""
    anchors = _anchors(analysis)
    if sections is None:
        sections = insight_render.build_sections(analysis, _draw_sections(analysis, anchors, options, progress),
                                                thresholds=thresholds)
    thumbnails = _Renderer(analysis, options)
    thumb_slots = {
        record.index: thumbnails.queue(record.thumbnail, None)
        for record in analysis.inputs
        if record.thumbnail is not None
    }
    images = thumbnails.encode_all(progress)
    names_by_index = {record.index: record.name for record in analysis.inputs}

    visualized = {layer.key for layer in analysis.layers}
    rows = tuple(
        LayerRow(
            name=row.name,
            type=row.type,
            depth=row.depth,
            output_shape=row.output_shape,
            params=row.params,
            kernel_size=row.kernel_size,
            mult_adds=row.mult_adds,
            trainable=row.trainable,
            visualized=row.name in visualized,
            anchor=anchors[row.name],
            container=row.container,
        )
        for row in analysis.summary.rows
    )
    summary = analysis.summary
    megabyte = 1e6  # torchinfo's MB
    totals = Totals(
        total_params=summary.total_params,
        trainable_params=summary.trainable_params,
        non_trainable_params=summary.total_params - summary.trainable_params,
        mult_adds=summary.mult_adds,
        input_mb=summary.input_bytes / megabyte,
        forward_backward_mb=summary.forward_backward_bytes / megabyte,
        params_mb=summary.param_bytes / megabyte,
        total_mb=(summary.input_bytes + summary.forward_backward_bytes + summary.param_bytes) / megabyte,
        available=summary.available,
    )
    inputs = tuple(_input_summary(record, thumb_slots, images, class_names) for record in analysis.inputs)
    predictions = tuple(_prediction(p, names_by_index, class_names) for p in analysis.predictions)
    report_sections = tuple(sections)
    report_insight = insight_render.build_report_insight(analysis, report_sections,
                                                        label_of=lambda i: _label(i, class_names))
    alerts = find_alerts(analysis, report_sections, model_info, thresholds)
    return ReportModel(
        run=run,
        model=model_info,
        totals=totals,
        layers=rows,
        inputs=inputs,
        sections=report_sections,
        predictions=predictions,
        alerts=alerts,
        notes=analysis.notes,
        insight=report_insight,
        outputs=render_dense(analysis.dense, analysis.inputs, random_weights=model_info.random_weights,
                             label_of=lambda i: _label(i, class_names)),
    )


def _filter_note(weights: LayerWeights) -> str:
    shown = weights.filters.shape[0]
    note = f"filters 0–{shown - 1} of {weights.filters_total}" if shown > 1 else f"filter 0 of {weights.filters_total}"
    if weights.transposed and weights.groups != 1:
        note += "; grouped transposed conv: one tile per input channel"
    elif weights.groups > 1:
        note += f"; {weights.groups} groups, each filter sees {weights.filters.shape[1]} input channel(s)"
    return note


def _selection_note(layer: CapturedLayer) -> str:
    shown = len(layer.channels_shown)
    if shown == layer.channels_total:
        return f"all {shown} channels shown"
    return f"the first {shown} of {layer.channels_total} channels shown (the same channels as the filters); statistics cover all"


def _label(index: int | None, class_names: Sequence[str] | None) -> str | None:
    if index is None:
        return None
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def _input_summary(
    record: InputRecord,
    thumb_slots: dict[int, int],
    images: list[EncodedImage],
    class_names: Sequence[str] | None,
) -> InputSummary:
    slot = thumb_slots.get(record.index)
    return InputSummary(
        index=record.index,
        name=record.name,
        shape=record.shape,
        label=_label(record.label, class_names),
        thumbnail=images[slot] if slot is not None else None,
        notes=tuple(record.notes),
        spectrogram=embed(encode_png(record.spectrogram), width=record.spectrogram.shape[1],
                          height=record.spectrogram.shape[0]) if record.spectrogram is not None else None,
    )


def _prediction(record: PredictionRecord, names: dict[int, str], class_names: Sequence[str] | None) -> Prediction:
    top = tuple(
        TopClass(index=i, label=_label(i, class_names) or str(i), probability=p)
        for i, p in zip(record.top_indices, record.top_probabilities)
    )
    return Prediction(
        input=names.get(record.index, str(record.index)),
        top=top,
        true_label=_label(record.label, class_names),
        correct=None if record.label is None else record.top_indices[0] == record.label,
    )
