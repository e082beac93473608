"""Insight beyond pictures, the render half: `InsightData` (from `insight.collect`) -> the
report model.

`build_sections` fills each section's `LayerInsight` (weight statistics, activity bars, the
weight histogram, dead and constant channels, receptive fields, the top-activation strip);
`build_report_insight` makes the report-level `ReportInsight` (Grad-CAM overlays, embedding
scatter, per-class view). Pictures are encoded here; numbers stay numbers (`insight_view.py`
formats them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache

import numpy as np

from reportgen import gradcam, svg
from reportgen.alerts import AlertThresholds
from reportgen.analysis import Analysis, InsightData
from reportgen.embedding import Features, colour_keys, pca_2d
from reportgen.grids import embed, encode_png, tile_grid
from reportgen.per_class import per_class
from reportgen.report_model import (
    CamMap,
    Embedding,
    EmbeddingPoint,
    EncodedImage,
    GradCam,
    GradCamInput,
    LayerInsight,
    LayerSection,
    PerClass,
    ReportInsight,
)
from reportgen.thumbnails import cam_overlay

CONSTANT_TOLERANCE = 1e-5  # a channel is constant when (max - min) <= this * max(|max|, |min|)
ACTIVITY_HEIGHT = 24  # pixels of the per-channel activity bars


def dead_channels(section: LayerSection, dead_fraction: float) -> tuple[int, ...]:
    """Channels > 0 on at most `dead_fraction` of the inputs. A channel holding NaN/Inf is
    reported as non-finite instead (NaN is never > 0, so it would look dead)."""
    nonfinite = section.stats.nonfinite
    return tuple(i for i, f in enumerate(section.stats.fraction_inputs_active)
                 if f <= dead_fraction and not (i < len(nonfinite) and nonfinite[i]))


def constant_channels(section: LayerSection, dead: Sequence[int]) -> tuple[int, ...]:
    """Channels with the same value at every position of every input, other than dead ones:
    max - min within float32 rounding of the larger magnitude."""
    low = np.asarray(section.stats.min, dtype=np.float64)
    high = np.asarray(section.stats.max, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(high), np.abs(low))
        constant = np.isfinite(low) & np.isfinite(high) & (high - low <= CONSTANT_TOLERANCE * scale)
    constant[list(dead)] = False
    return tuple(int(i) for i in np.flatnonzero(constant))


def activity_picture(values: Sequence[float], marked: Sequence[int]) -> np.ndarray:
    """(ACTIVITY_HEIGHT, channels, 3) uint8: one column per channel, bar height = value (0..1);
    marked (dead) channels are a full red column."""
    count = len(values)
    picture = np.full((ACTIVITY_HEIGHT, max(count, 1), 3), 255, dtype=np.uint8)
    picture[-1, :] = (200, 205, 212)
    share = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    heights = np.floor(share * (ACTIVITY_HEIGHT - 1) + 0.5).astype(int)
    row = np.arange(ACTIVITY_HEIGHT - 1)[:, None]
    picture[: ACTIVITY_HEIGHT - 1][row >= ACTIVITY_HEIGHT - 1 - heights[None, :]] = (31, 111, 235)
    picture[: ACTIVITY_HEIGHT - 1, list(marked)] = (209, 36, 47)
    return picture


# The size budget renders the report again from the same analysis: the per-layer charts, which
# depend on the analysis only, are made once (keyed by their plain-value inputs).
@lru_cache(maxsize=4096)
def activity_png(values: tuple[float, ...], marked: tuple[int, ...]) -> EncodedImage:
    picture = activity_picture(values, marked)
    return embed(encode_png(picture), width=picture.shape[1], height=picture.shape[0])


@lru_cache(maxsize=4096)
def histogram_svg(counts: tuple[int, ...], low: float, high: float, title: str) -> EncodedImage | None:
    return svg.histogram(counts, low, high, title=title)


class _Encoder:
    """PNG encodings queued and run in a thread pool (zlib releases the GIL)."""

    def __init__(self) -> None:
        self.pending: list[np.ndarray] = []

    def queue(self, picture: np.ndarray) -> int:
        self.pending.append(picture)
        return len(self.pending) - 1

    def run(self) -> list[EncodedImage]:
        def encode(picture: np.ndarray) -> EncodedImage:
            return embed(encode_png(picture), width=picture.shape[1], height=picture.shape[0])

        if not self.pending:
            return []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(encode, self.pending))


def build_report_insight(
    analysis: Analysis,
    sections: Sequence[LayerSection],
    *,
    label_of: Callable[[int | None], str | None],
) -> ReportInsight | None:
    """The report-level insight: Grad-CAM overlays, the embedding, the per-class view."""
    data: InsightData | None = getattr(analysis, "insight", None)
    if data is None:
        return None
    encoder = _Encoder()
    cam_slots = []
    thumbnails = {record.index: record for record in analysis.inputs}
    if data.cam is not None:
        for record in data.cam.records:
            thumb = thumbnails.get(record.input_index)
            slot = encoder.queue(cam_overlay(thumb.thumbnail, record.cam, thumb.shape)) \
                if thumb is not None and thumb.thumbnail is not None else None
            cam_slots.append(slot)
    rollout_slots = []
    if data.rollout is not None:
        for record in data.rollout.records:
            thumb = thumbnails.get(record.input_index)
            rollout_slots.append(encoder.queue(cam_overlay(thumb.thumbnail, record.cam, thumb.shape))
                                 if thumb is not None and thumb.thumbnail is not None else None)
    images = encoder.run()
    names = {record.index: record.name for record in analysis.inputs}
    anchors = {section.name: section.anchor for section in sections}
    report = ReportInsight(
        gradcam=_gradcam(data.cam, cam_slots, images, names, anchors, label_of),
        rollout=_gradcam(data.rollout, rollout_slots, images, names, anchors, label_of),
        embedding=_embedding(data.features, analysis, names, label_of),
        per_class=_per_class(analysis, names, label_of),
        notes=data.notes,
        init_test=data.init_test,
    )
    return report


def build_sections(
    analysis: Analysis, sections: Sequence[LayerSection], *, thresholds: AlertThresholds
) -> tuple[LayerSection, ...]:
    """Sections with their per-layer `insight` filled in (what depends on what is drawn:
    the top-k strip has no more rows than the section draws channels)."""
    data: InsightData | None = getattr(analysis, "insight", None)
    if data is None:
        return tuple(sections)
    encoder = _Encoder()
    layer_by_key = {layer.key: layer for layer in analysis.layers}
    reaches = data.cam.reaches_output if data.cam is not None else {}
    pending_layers = []
    for section in sections:
        layer = layer_by_key.get(section.name)
        module_name = layer.module_name if layer is not None else section.name
        first_call = layer is None or layer.call_index == 0
        stats = data.weight_stats.get(module_name) if first_call else None
        dead = dead_channels(section, thresholds.dead_fraction)
        activity = activity_png(section.stats.fraction_active, dead) if section.stats.fraction_active else None
        crops = data.crops.get(section.name)
        strip_slot = None
        if crops is not None:
            # no more rows than channels drawn: when the size budget draws fewer, so does this
            crops = crops[: max(1, len(section.channels_shown))]
            rows, k = crops.shape[:2]
            picture, _ = tile_grid(crops.reshape(rows * k, *crops.shape[2:]), columns=k, pad_value=(255, 255, 255))
            strip_slot = encoder.queue(picture)
        pending_layers.append((section, layer, stats, dead, activity, strip_slot, crops))
    images = encoder.run()

    def image(slot: int | None) -> EncodedImage | None:
        return images[slot] if slot is not None else None

    updated = []
    for section, layer, stats, dead, activity, strip_slot, crops in pending_layers:
        geometry = data.geometry.get(section.name)
        # the largest magnitude either way: a channel at -2e5 is as large as one at +2e5
        extremes = np.abs(np.asarray((*section.stats.max, *section.stats.min), dtype=np.float64))
        finite_max = extremes[np.isfinite(extremes)]
        insight = LayerInsight(
            weights=stats,
            weight_histogram=histogram_svg(stats.histogram.counts, stats.histogram.low, stats.histogram.high,
                                           f"weights of {section.name}") if stats is not None else None,
            activity_chart=activity,
            max_abs_activation=float(finite_max.max()) if finite_max.size else None,
            dead_channels=dead,
            dead_fraction=len(dead) / section.channels_total if section.channels_total else 0.0,
            constant_channels=constant_channels(section, dead),
            reaches_output=reaches.get(layer.module_name) if layer is not None else None,
            receptive_field=geometry.receptive_field if geometry is not None else (),
            stride=geometry.stride if geometry is not None else (),
            first_pixel=geometry.first if geometry is not None else (),
            geometry_unknown=geometry.unknown if geometry is not None else "",
            receptive_whole_input=geometry is not None and geometry.whole_input,
            top_activations=data.tops.get(section.name, ()),
            top_strip=image(strip_slot),
            top_strip_channels=tuple(t.channel for t in data.tops.get(section.name, ())[: crops.shape[0]])
            if crops is not None else (),
        )
        updated.append(replace(section, insight=insight))

    return tuple(updated)


def _gradcam(cam: gradcam.CamResult | None, slots: Sequence[int | None], images: Sequence[EncodedImage],
             names: dict[int, str], anchors: dict[str, str],
             label_of: Callable[[int | None], str | None]) -> GradCam | None:
    if cam is None or not cam.records:
        return None
    by_input: dict[int, list[CamMap]] = {}
    for record, slot in zip(cam.records, slots):
        small = gradcam.pooled(record.cam)
        by_input.setdefault(record.input_index, []).append(CamMap(
            kind=record.kind,
            target=record.target,
            target_label=(label_of(record.target) or str(record.target)) if record.target >= 0 else "",
            cam=tuple(tuple(round(float(v), 4) for v in row) for row in small),
            peak=tuple(round(float(v), 4) for v in gradcam.peak_fraction(record.cam)),  # type: ignore[arg-type]
            overlay=images[slot] if slot is not None else None,
        ))
    order = {"predicted": 0, "true": 1}
    entries = tuple(
        GradCamInput(input_index=index, input_name=names.get(index, str(index)),
                     maps=tuple(sorted(maps, key=lambda m: order.get(m.kind, 2))))
        for index, maps in sorted(by_input.items())
    )
    return GradCam(
        layer=cam.layer,
        anchor=anchors.get(cam.layer),
        inputs=entries,
        note=cam.note if cam.records[0].kind == "rollout" else _cam_note(cam),
    )


def _cam_note(cam: gradcam.CamResult) -> str:
    rank = cam.records[0].cam.ndim
    if rank == 2:
        return (f"Grad-CAM at {cam.layer}: heat = ReLU(sum over channels of (mean gradient of the class score) "
                "x activation), scaled to its own max, upsampled bilinearly onto the input.")
    axes, laid = {
        1: ("time", "interpolated linearly onto the waveform's columns and drawn as the strip under it "
                    "(black = no heat, dark red to yellow = the max)"),
        3: ("time and space", "interpolated (trilinear) to the clip's frames and laid over each frame shown"),
    }[rank]
    return (f"Grad-CAM at {cam.layer}: heat = ReLU(sum over channels of (the class score's gradient averaged over "
            f"{axes}) x activation), scaled to its own max, {laid}.")


def _embedding(features: Features | None, analysis: Analysis, names: dict[int, str],
               label_of: Callable[[int | None], str | None]) -> Embedding | None:
    if features is None:
        return None
    projection = pca_2d(features.vectors)
    if projection is None:
        return None
    labels_by_index = {record.index: record.label for record in analysis.inputs}
    predicted = {p.index: p.top_indices[0] for p in analysis.predictions if p.top_indices}
    indices = [int(i) for i in features.indices]
    if any(labels_by_index.get(i) is not None for i in indices):
        colour_by = "true label"
        keys = [label_of(labels_by_index.get(i)) for i in indices]
    elif predicted:
        colour_by = "predicted label"
        keys = [label_of(predicted.get(i)) for i in indices]
    else:
        colour_by = ""
        keys = [None for _ in indices]
    mapping, colours = colour_keys(keys, svg.CATEGORICAL, svg.OTHER)
    outlier_rows = set(projection.outliers)
    points = tuple(
        EmbeddingPoint(input_index=index, input_name=names.get(index, str(index)),
                       x=float(projection.coordinates[row, 0]), y=float(projection.coordinates[row, 1]),
                       label=keys[row], outlier=row in outlier_rows)
        for row, index in enumerate(indices)
    )
    marked = [(row, names.get(indices[row], str(indices[row]))) for row in projection.outliers]
    chart = svg.scatter([p.x for p in points], [p.y for p in points], colours, marked=marked,
                        title=f"PCA of {features.source}")
    legend = tuple((label, colour) for label, colour in mapping.items())
    if any(colour == svg.OTHER for colour in colours):
        legend += (("other", svg.OTHER),)
    return Embedding(
        source=features.source,
        dimension=int(features.vectors.shape[1]),
        total_inputs=features.total,
        colour_by=colour_by,
        explained_variance=tuple(projection.explained),
        points=points,
        outliers=tuple(indices[row] for row in projection.outliers),
        legend=legend,
        chart=chart,
    )


def _per_class(analysis: Analysis, names: dict[int, str],
               label_of: Callable[[int | None], str | None]) -> PerClass | None:
    return per_class(analysis.predictions, names, label_of)
