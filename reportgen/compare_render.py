"""The render stage of a comparison: `CompareAnalysis` -> `CompareModel` (plain values, pictures
encoded). Sorting, ranking and what is drawn are decided here; formatting in `compare_view`.

Pictures:
- the filter triples: the filter of A, of B and B - A, each the mean over input channels, on
  one diverging scale [-s, s] per triple (s = the largest |value| of the three planes), level =
  floor((v / s + 1) / 2 * 253 + 0.5) on RdBu_r (blue negative, white 0, red positive), each
  kernel cell drawn as a square of `CELL` pixels;
- a training run's filter strips: one channel's filter at every checkpoint, the same way, one
  scale per strip;
- flip thumbnails: the input as the model saw it (thumbnails.py, drawn during the pass), and
  beside it the Grad-CAM of A's and of B's top-1 class at each model's last conv, laid over it
  as in the main report (`thumbnails.cam_overlay`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from reportgen import compare_svg
from reportgen.alerts import WHY
from reportgen.cka import ESTIMATOR
from reportgen.compare_data import (
    AlertFound,
    AlertsDiff,
    ChannelComparison,
    CompareAnalysis,
    FilterPicture,
    PredictionComparison,
    TrainingRun,
)
from reportgen.compare_model import (
    AlertChange,
    AlertsSection,
    ChannelLayer,
    ChannelRow,
    CheckpointRow,
    CkaLayer,
    CkaMatrixModel,
    CkaSection,
    ClassChange,
    CompareModel,
    CompareRun,
    FilterRow,
    FilterStrip,
    FilterTriple,
    FlipCard,
    PredictionSection,
    RunSection,
    TopEntry,
    TopSets,
    WeightLayer,
    WeightSection,
)
from reportgen.encoded_image import EncodedImage
from reportgen.grids import embed, encode_png, tile_grid
from reportgen.palettes import LEVELS
from reportgen.thumbnails import cam_overlay

CELL = 8  # pixels per kernel cell in the filter pictures
TOP_TILE = 32  # pixels a side of each input in a top-k strip
MIN_TILE = 24  # a kernel is drawn at least this many pixels a side
LEAST_CORRELATED = 5  # channels listed per layer


@dataclass(frozen=True)
class Drawing:
    """How much is drawn (the size budget lowers these)."""

    flips: int = 16
    filters: int = 12
    strips: int = 4
    top_sets: int = 2  # channels per layer whose top-k inputs are drawn


def _value(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _rows(array: np.ndarray) -> tuple[tuple[float | None, ...], ...]:
    return tuple(tuple(_value(float(v)) for v in row) for row in array)


def diverging_tiles(planes: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Planes ((h, w) or (k,)) on one symmetric scale -> uint8 level tiles (N, H, W), and s."""
    shaped = [p.reshape(1, -1) if p.ndim == 1 else p for p in planes]
    finite = [np.abs(p[np.isfinite(p)]) for p in shaped]
    scale = max((float(f.max()) for f in finite if f.size), default=0.0)
    height, width = shaped[0].shape
    factor = max(CELL, math.ceil(MIN_TILE / max(height, width, 1)))
    tiles = []
    for plane in shaped:
        unit = np.where(np.isfinite(plane), plane / scale if scale > 0 else 0.0, 0.0)
        levels = np.floor((unit + 1) / 2 * (LEVELS - 1) + 0.5).clip(0, LEVELS - 1).astype(np.uint8)
        tiles.append(np.kron(levels, np.ones((factor, factor), dtype=np.uint8)))
    return np.stack(tiles), scale


def _strip(planes: Sequence[np.ndarray]) -> tuple[EncodedImage, float]:
    tiles, scale = diverging_tiles(planes)
    picture, _ = tile_grid(tiles, padding=2, columns=len(planes))
    return embed(encode_png(picture, "RdBu_r"), width=picture.shape[1], height=picture.shape[0]), scale


def triple(picture: FilterPicture) -> FilterTriple:
    image, scale = _strip([picture.a, picture.b, picture.b - picture.a])
    return FilterTriple(layer=picture.layer, channel=picture.channel, relative_l2=_value(picture.relative_l2),
                        cosine=_value(picture.cosine), scale=scale, image=image)


def _thumbnail(picture: np.ndarray | None) -> EncodedImage | None:
    if picture is None:
        return None
    return embed(encode_png(picture), width=picture.shape[1], height=picture.shape[0])


def _cam(thumbnail: np.ndarray | None, cam: np.ndarray | None, shape: tuple[int, ...]) -> EncodedImage | None:
    """A Grad-CAM map laid over the flip's thumbnail, as in the main report (thumbnails.cam_overlay)."""
    if thumbnail is None or cam is None:
        return None
    return _thumbnail(cam_overlay(thumbnail, cam, shape))


def render_compare(analysis: CompareAnalysis, *, run: CompareRun, class_names: Sequence[str] | None,
                   drawing: Drawing = Drawing(), notes: Sequence[str] = ()) -> CompareModel:
    correlations = {c.key: c for c in analysis.channels}
    return CompareModel(
        run=run,
        checkpoints=tuple(CheckpointRow(name=c.name, source=c.source, type=c.type, file=c.file, sha256=c.sha256,
                                        params=c.params) for c in analysis.checkpoints),
        cka=_cka(analysis),
        channels=tuple(_channel_layer(c, analysis.pictures, drawing.top_sets) for c in analysis.channels),
        weights=_weights(analysis, correlations, drawing),
        predictions=_predictions(analysis.predictions, class_names, drawing) if analysis.predictions else None,
        training_run=_run(analysis.run, analysis, drawing) if analysis.run is not None else None,
        notes=tuple(notes) + analysis.notes,
        alerts=_alerts(analysis.alerts) if analysis.alerts is not None else None,
    )


def _alerts(found: AlertsDiff) -> AlertsSection:
    def rows(items: Sequence[AlertFound]) -> tuple[AlertChange, ...]:
        return tuple(AlertChange(kind=a.kind, layer=a.layer, detail=a.detail, why=WHY.get(a.kind, ""))
                     for a in sorted(items, key=lambda a: (a.kind, a.layer)))

    return AlertsSection(in_b_not_a=rows(found.in_b_not_a), in_a_not_b=rows(found.in_a_not_b), checked=found.checked)


def _cka(analysis: CompareAnalysis) -> CkaSection:
    cka = analysis.cka
    taps = {layer.key: layer.tap for layer in analysis.layers_a}
    col_of = {key: j for j, key in enumerate(cka.cols)}
    layers = []
    for i, key in enumerate(cka.rows):
        if key in col_of:
            layers.append(CkaLayer(name=key, tap=taps.get(key, key), value=_value(float(cka.values[i, col_of[key]]))))
    first, last = analysis.checkpoints[0].name, analysis.checkpoints[-1].name
    line = compare_svg.lines([(f"{first} vs {last}", [layer.value for layer in layers])], [layer.name for layer in layers],
                             title=f"CKA of each layer, {first} vs {last}", y_label="CKA") if layers else None
    heatmap = compare_svg.matrix(_rows(cka.values), cka.rows, cka.cols,
                                 title=f"CKA, every layer of {first} against every layer of {last}",
                                 row_title=first, col_title=last)
    return CkaSection(estimator=ESTIMATOR, batch_size=analysis.batch_size,
                      batch_sizes=tuple(sorted(cka.batch_sizes.items())), inputs_used=cka.inputs_used,
                      inputs_skipped=cka.inputs_skipped, layers=tuple(layers),
                      matrix=CkaMatrixModel(rows=cka.rows, cols=cka.cols, values=_rows(cka.values)),
                      line=line, heatmap=heatmap)


def _top_strip(indices: Sequence[int], pictures: dict[int, np.ndarray]) -> EncodedImage:
    """The inputs' thumbnails, each fitted into TOP_TILE x TOP_TILE (white around), side by side."""
    tiles = []
    for index in indices:
        picture = pictures.get(index)
        canvas = Image.new("RGB", (TOP_TILE, TOP_TILE), (255, 255, 255))
        if picture is not None:
            image = ImageOps.contain(Image.fromarray(picture).convert("RGB"), (TOP_TILE, TOP_TILE), Image.BILINEAR)
            canvas.paste(image, ((TOP_TILE - image.width) // 2, (TOP_TILE - image.height) // 2))
        tiles.append(np.asarray(canvas))
    grid, _ = tile_grid(np.stack(tiles), padding=1, pad_value=(255, 255, 255), columns=len(tiles))
    return embed(encode_png(grid), width=grid.shape[1], height=grid.shape[0])


def _channel_layer(found: ChannelComparison, pictures: dict[int, np.ndarray], drawn: int) -> ChannelLayer:
    rows = []
    for c in range(len(found.correlation)):
        jaccard = found.jaccard[c] if found.jaccard is not None and c < len(found.jaccard) else None
        rows.append(ChannelRow(channel=c, correlation=_value(float(found.correlation[c])),
                               active_a=float(found.active_a[c]), active_b=float(found.active_b[c]),
                               jaccard=_value(float(jaccard)) if jaccard is not None else None))
    defined = [r for r in rows if r.correlation is not None]
    least = sorted(defined, key=lambda r: (r.correlation, r.channel))[:LEAST_CORRELATED]
    jaccards = [r.jaccard for r in rows if r.jaccard is not None]
    return ChannelLayer(
        name=found.key, channels=tuple(rows),
        mean_correlation=float(np.mean([r.correlation for r in defined])) if defined else None,
        least_correlated=tuple(least),
        newly_dead=tuple(r.channel for r in rows if r.active_a > 0 and r.active_b == 0),
        revived=tuple(r.channel for r in rows if r.active_a == 0 and r.active_b > 0),
        mean_jaccard=float(np.mean(jaccards)) if jaccards else None, top_k=found.top_k,
        top_sets=tuple(TopSets(channel=c, jaccard=rows[c].jaccard, correlation=rows[c].correlation, inputs_a=a,
                               inputs_b=b, strip_a=_top_strip(a, pictures), strip_b=_top_strip(b, pictures))
                       for c, a, b in found.top_sets[:drawn] if a and b))


def _weights(analysis: CompareAnalysis, correlations: dict[str, ChannelComparison],
             drawing: Drawing) -> WeightSection | None:
    found = analysis.weights
    if found is None:
        return None
    layers = []
    for layer in found.layers:
        channels = correlations.get(layer.name)
        rows = [FilterRow(channel=c, relative_l2=_value(float(layer.filter_relative_l2[c])),
                          cosine=_value(float(layer.filter_cosine[c])),
                          activation_correlation=_value(float(channels.correlation[c]))
                          if channels is not None and c < len(channels.correlation) else None)
                for c in range(len(layer.filter_relative_l2))]
        rows.sort(key=lambda r: (-(r.relative_l2 if r.relative_l2 is not None else math.inf), r.channel))
        layers.append(WeightLayer(name=layer.name, shape=layer.shape, relative_l2=_value(layer.relative_l2),
                                  cosine=_value(layer.cosine), filters=tuple(rows)))
    return WeightSection(layers=tuple(layers), most_changed=tuple(triple(p) for p in found.most_changed[:drawing.filters]),
                         unmatched=found.unmatched)


def _predictions(found: PredictionComparison, class_names: Sequence[str] | None,
                 drawing: Drawing) -> PredictionSection:
    def name(index: int) -> str:
        return class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)

    flips = tuple(
        FlipCard(index=f.index, name=f.name, label=name(f.label) if f.label is not None else None,
                 top_a=tuple(TopEntry(i, name(i), p) for i, p in f.top_a),
                 top_b=tuple(TopEntry(i, name(i), p) for i, p in f.top_b), thumbnail=_thumbnail(f.thumbnail),
                 cam_a=_cam(f.thumbnail, f.cam_a, f.input_shape), cam_b=_cam(f.thumbnail, f.cam_b, f.input_shape))
        for f in found.flips[:drawing.flips])
    labelled = found.labelled
    return PredictionSection(
        inputs=found.inputs, agreement=_value(found.agreement), flips=flips, flips_total=found.flips_total,
        labelled=labelled, accuracy_a=found.correct_a / labelled if labelled else None,
        accuracy_b=found.correct_b / labelled if labelled else None,
        negative_flip_rate=found.negative_flips / labelled if labelled else None,
        positive_flip_rate=found.positive_flips / labelled if labelled else None,
        per_class=tuple(ClassChange(name=name(c), inputs=n, accuracy_a=a / n, accuracy_b=b / n)
                        for c, n, a, b in found.per_class))


def _settle_lines(found: TrainingRun, names: Sequence[str]) -> EncodedImage | None:
    """CKA to the last checkpoint over time, one line per layer (the last checkpoint itself is 1),
    when there are few enough layers to tell the lines apart."""
    if not found.layers or len(found.layers) > compare_svg.LINE_LAYERS:
        return None
    series = [(layer, [*(_value(float(v)) for v in found.cka_to_last[:, j]), 1.0])
              for j, layer in enumerate(found.layers)]
    return compare_svg.lines(series, names, title=f"CKA of each layer to the same layer of {names[-1]}, over time",
                             y_label=f"CKA to {names[-1]}")


def _run(found: TrainingRun, analysis: CompareAnalysis, drawing: Drawing) -> RunSection:
    names = tuple(c.name for c in analysis.checkpoints)
    settle = compare_svg.matrix(_rows(found.cka_to_last.T), found.layers, names[:-1],
                                title=f"CKA of each layer to the same layer of {names[-1]}",
                                row_title="layer", col_title="checkpoint")
    steps = compare_svg.matrix(_rows(found.weight_step.T), found.weight_layers,
                               [f"{a} → {b}" for a, b in zip(names, names[1:])],
                               title="relative L2 change of each layer's weights per step", row_title="layer",
                               col_title="step", maximum=max(float(np.nanmax(found.weight_step)), 1e-12)
                               if found.weight_step.size and np.isfinite(found.weight_step).any() else 1.0)
    strips = []
    for layer, channel, planes in found.strips[:drawing.strips]:
        image, scale = _strip(planes)
        strips.append(FilterStrip(layer=layer, channel=channel, scale=scale, image=image))
    return RunSection(checkpoints=names, layers=found.layers, cka_to_last=_rows(found.cka_to_last),
                      cka_to_next=_rows(found.cka_to_next), weight_layers=found.weight_layers,
                      weight_step=_rows(found.weight_step), settle_chart=settle, step_chart=steps,
                      settle_lines=_settle_lines(found, names),
                      strips=tuple(strips))
