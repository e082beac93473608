"""Impact and robustness, the render half: an `ImpactRun` (`impact_passes.py`) -> the report
model's `ImpactReport` (`impact_model.py`): numbers as plain values, filter tiles, thumbnails and
probe strips as encoded PNGs.

The passes hand on no pictures; the renderer asks for the few it shows through two callables
(`weights_of`: a layer's filters, `thumbnail_of`: an input as the model saw it), so only what is
drawn is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from reportgen.ablation import AblationResult, LayerAblation, ranking
from reportgen.analysis import LayerWeights
from reportgen.filters import filter_tiles
from reportgen.grids import embed, encode_png, tile_grid
from reportgen.impact_model import (
    AblationLayerReport,
    AblationReport,
    ClassBaseline,
    ClassShare,
    FilterImpact,
    ImpactReport,
    MisfiringChannel,
    MisfiringExample,
    MisfiringLayer,
    MisfiringReport,
    ProbeLayerReport,
    ProbeOutcome,
    ProbeReport,
    ProbeStripRow,
    SkippedLayer,
)
from reportgen.impact_passes import ImpactRun
from reportgen.misfiring import MisfiringResult, flagged
from reportgen.palettes import PAD_INDEX
from reportgen.probes import ProbeResult, layer_summary
from reportgen.report_model import EncodedImage

CLASSES_PER_FILTER = 3  # classes listed in a top filter's breakdown
MISFIRING_SHOWN = 12  # flagged channels shown over all layers


def render_impact(
    run: ImpactRun,
    *,
    top_filters: int,
    anchors: dict[str, str],
    class_names: Sequence[str] | None,
    input_names: Sequence[str],
    first_conv: str | None,
    weights_of: Callable[[str], LayerWeights | None],
    thumbnail_of: Callable[[int], np.ndarray | None] | None = None,
) -> ImpactReport:
    """The impact section's report model; `first_conv` draws its filters in RGB (3 input channels)."""
    renderer = ImpactRenderer(anchors, class_names, input_names, first_conv, weights_of, thumbnail_of)
    return ImpactReport(
        ablation=renderer.ablation(run.ablation, top_filters) if run.ablation is not None else None,
        misfiring=renderer.misfiring(run.misfiring) if run.misfiring is not None else None,
        probes=tuple(renderer.probe(result) for result in run.probes.results) if run.probes is not None else (),
        notes=run.notes,
    )


def _label(index: int | None, class_names: Sequence[str] | None) -> str:
    if index is None:
        return ""
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def _floats(values: np.ndarray | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64))


class ImpactRenderer:
    """Numbers -> impact_model dataclasses; pictures encoded on the way (a handful per layer)."""

    def __init__(self, anchors: dict[str, str], class_names: Sequence[str] | None, input_names: Sequence[str],
                 first_conv: str | None, weights_of: Callable[[str], LayerWeights | None],
                 thumbnail_of: Callable[[int], np.ndarray | None] | None) -> None:
        self.anchors = anchors
        self.class_names = class_names
        self.input_names = input_names
        self.first_conv = first_conv
        self.weights_of = weights_of
        self.thumbnail_of = thumbnail_of
        self._weights: dict[str, LayerWeights | None] = {}
        self._thumbs: dict[int, EncodedImage | None] = {}

    # -- pictures ------------------------------------------------------------------------
    def filter_tile(self, layer: str, channel: int) -> EncodedImage | None:
        """One filter drawn as in the layer's filter grid (per-filter min-max)."""
        name = layer.split("#", 1)[0]
        if name not in self._weights:
            self._weights[name] = self.weights_of(name)
        weights = self._weights[name]
        if weights is None or not 0 <= channel < weights.filters.shape[0]:
            return None
        rgb = name == self.first_conv and weights.in_channels == 3 and weights.groups == 1
        tiles = filter_tiles(weights.filters[channel:channel + 1], rgb_first_layer=rgb)
        picture = tiles.tiles[0]
        return embed(encode_png(picture, tiles.colormap), width=picture.shape[1], height=picture.shape[0])

    def input_thumbnail(self, index: int) -> EncodedImage | None:
        if self.thumbnail_of is None or not 0 <= index < len(self.input_names):
            return None
        if index not in self._thumbs:
            picture = self.thumbnail_of(index)
            self._thumbs[index] = None if picture is None else self._encode_rgb(picture)
        return self._thumbs[index]

    @staticmethod
    def _encode_rgb(picture: np.ndarray) -> EncodedImage:
        return embed(encode_png(picture, None), width=picture.shape[1], height=picture.shape[0])

    # -- ablation ------------------------------------------------------------------------
    def ablation(self, result: AblationResult, top_filters: int) -> AblationReport:
        base = result.baseline
        classes = tuple(
            ClassBaseline(index=c, label=_label(c, self.class_names), count=n, probability=float(p))
            for c, n, p in zip(result.classes, result.class_counts, base.per_class)
        )
        layers = tuple(self._ablation_layer(layer, result, top_filters) for layer in result.layers)
        ablated = sum(len(layer.channels) for layer in result.layers)
        total = sum(layer.channels_total for layer in result.layers)
        return AblationReport(
            inputs=result.inputs,
            targets=result.targets,
            baseline_accuracy=float(base.accuracy),
            baseline_probability=float(base.probability),
            baseline_loss=float(base.loss),
            classes=classes,
            layers=layers,
            skipped=tuple(SkippedLayer(name, reason) for name, reason in result.skipped),
            max_channels=result.max_channels,
            channels_ablated=ablated,
            channels_total=total,
            forward_rows=result.forward_rows,
            coverage=_coverage(result, ablated, total),
        )

    def _ablation_layer(self, layer: LayerAblation, result: AblationResult, top: int) -> AblationLayerReport:
        base = result.baseline
        scores = layer.scores
        d_acc = scores.accuracy - float(base.accuracy)
        d_prob = scores.probability - float(base.probability)
        d_loss = scores.loss - float(base.loss)
        order = ranking(d_loss, layer.channels)
        count = min(top, len(order))
        best = order[:count]
        worst = [i for i in reversed(order) if i not in best][:count]  # never repeats a top filter

        def impact(position: int, with_classes: bool) -> FilterImpact:
            channel = layer.channels[position]
            shares: tuple[ClassShare, ...] = ()
            if with_classes and result.classes:
                drops = scores.per_class[position] - base.per_class
                picks = sorted(range(len(result.classes)), key=lambda k: (float(drops[k]), result.classes[k]))
                shares = tuple(
                    ClassShare(index=result.classes[k], label=_label(result.classes[k], self.class_names),
                               count=result.class_counts[k], baseline_probability=float(base.per_class[k]),
                               delta_probability=float(drops[k]))
                    for k in picks[:CLASSES_PER_FILTER]
                )
            return FilterImpact(
                channel=channel,
                rank=order.index(position) + 1,
                accuracy=float(scores.accuracy[position]),
                probability=float(scores.probability[position]),
                loss=float(scores.loss[position]),
                delta_accuracy=float(d_acc[position]),
                delta_probability=float(d_prob[position]),
                delta_loss=float(d_loss[position]),
                tile=self.filter_tile(layer.name, channel),
                classes=shares,
            )

        return AblationLayerReport(
            name=layer.name,
            anchor=self.anchors.get(layer.name, ""),
            type=layer.type,
            channels_total=layer.channels_total,
            channels=layer.channels,
            delta_accuracy=_floats(d_acc),
            delta_probability=_floats(d_prob),
            delta_loss=_floats(d_loss),
            ranking=tuple(layer.channels[i] for i in order),
            top=tuple(impact(i, True) for i in best),
            bottom=tuple(impact(i, False) for i in worst),
            expanded_at=layer.expanded_at,
        )

    # -- misfiring -----------------------------------------------------------------------
    def misfiring(self, result: MisfiringResult) -> MisfiringReport:
        layers = []
        candidates: list[tuple[float, int, int, str]] = []
        for position, layer in enumerate(result.layers):
            chosen = flagged(layer, result)
            layers.append(MisfiringLayer(
                name=layer.name,
                anchor=self.anchors.get(layer.name, ""),
                effect=_floats(layer.effect),
                mean_correct=_floats(layer.mean_correct),
                mean_wrong=_floats(layer.mean_wrong),
                flagged=tuple(chosen),
            ))
            candidates.extend((-float(layer.effect[c]), position, c, layer.name) for c in chosen)
        channels = []
        for _, position, channel, name in sorted(candidates)[:MISFIRING_SHOWN]:
            layer = result.layers[position]
            examples = []
            for index, value in zip(layer.top_inputs[channel], layer.top_values[channel]):
                if index < 0:
                    continue
                true, predicted = result.predictions.get(int(index), (None, None))
                examples.append(MisfiringExample(
                    index=int(index),
                    input=self.input_names[int(index)],
                    true_label=_label(true, self.class_names),
                    predicted_label=_label(predicted, self.class_names),
                    activation=float(value),
                    thumbnail=self.input_thumbnail(int(index)),
                ))
            channels.append(MisfiringChannel(
                layer=name,
                anchor=self.anchors.get(name, ""),
                channel=channel,
                effect=float(layer.effect[channel]),
                mean_correct=float(layer.mean_correct[channel]),
                mean_wrong=float(layer.mean_wrong[channel]),
                tile=self.filter_tile(name, channel),
                examples=tuple(examples),
            ))
        if result.wrong == 0:
            note = "Every labelled input was classified correctly, so no filter can misfire."
        elif result.wrong < result.min_wrong:
            note = (f"Only {result.wrong} labelled input was misclassified; at least {result.min_wrong} "
                    "are needed before a filter is flagged.")
        elif result.correct < result.min_wrong:
            note = (f"Only {result.correct} labelled input(s) were classified correctly; at least {result.min_wrong} "
                    "are needed to compare against.")
        elif not channels:
            note = f"No channel's activation is {result.threshold:g} pooled standard deviations higher on the misclassified inputs."
        else:
            note = ""
        return MisfiringReport(correct=result.correct, wrong=result.wrong, threshold=result.threshold,
                               min_wrong=result.min_wrong, channels=tuple(channels), layers=tuple(layers), note=note)

    # -- probes --------------------------------------------------------------------------
    def probe(self, result: ProbeResult) -> ProbeReport:
        layers = []
        for layer in result.layers:
            median, stable, rel, defined = layer_summary(layer)
            finite = np.flatnonzero(np.isfinite(layer.correlation))
            order = sorted(finite.tolist(), key=lambda c: (-float(layer.correlation[c]), c))
            layers.append(ProbeLayerReport(
                name=layer.name,
                anchor=self.anchors.get(layer.name, ""),
                channels_total=layer.channels_total,
                channels_defined=defined,
                median_correlation=math.nan if median is None else median,
                stable_fraction=math.nan if stable is None else stable,
                mean_relative_l2=math.nan if rel is None else rel,
                correlation=_floats(layer.correlation),
                relative_l2=_floats(layer.relative_l2),
                most_stable=order[0] if order else None,
                least_stable=order[-1] if order else None,
            ))
        outcomes = []
        for item in result.inputs:
            strip = tuple(
                ProbeStripRow(
                    layer=row.layer,
                    anchor=self.anchors.get(row.layer, ""),
                    most_stable=row.most_stable,
                    least_stable=row.least_stable,
                    most_correlation=row.most_correlation,
                    least_correlation=row.least_correlation,
                    image=self._strip_image(row.tiles),
                )
                for row in item.strip
            )
            flipped = None if item.clean_top is None or item.perturbed_top is None else item.clean_top != item.perturbed_top
            outcomes.append(ProbeOutcome(
                index=item.index,
                input=item.name,
                target=_label(item.target, self.class_names),
                target_is_label=item.target_is_label,
                clean_top=_label(item.clean_top, self.class_names),
                perturbed_top=_label(item.perturbed_top, self.class_names),
                flipped=flipped,
                clean_probability=math.nan if item.clean_probability is None else item.clean_probability,
                perturbed_probability=math.nan if item.perturbed_probability is None else item.perturbed_probability,
                clean_thumbnail=self.input_thumbnail(item.index) if item.strip or item.thumbnail is not None else None,
                perturbed_thumbnail=self._encode_rgb(item.thumbnail) if item.thumbnail is not None else None,
                strip=strip,
            ))
        return ProbeReport(
            kind=result.kind,
            strength=result.strength,
            description=result.description,
            note=result.note,
            inputs_probed=len(result.inputs),
            flips=result.flips,
            layers=tuple(layers),
            outcomes=tuple(outcomes),
            skipped=tuple(SkippedLayer(name, reason) for name, reason in result.skipped_layers),
        )

    @staticmethod
    def _strip_image(tiles: np.ndarray) -> EncodedImage:
        picture, _ = tile_grid(tiles, pad_value=PAD_INDEX, columns=4)
        return embed(encode_png(picture, "viridis"), width=picture.shape[1], height=picture.shape[0])


def _coverage(result: AblationResult, ablated: int, total: int) -> str:
    layers = len(result.layers)
    plural = "s" if layers != 1 else ""
    if ablated == total:
        which = f"every channel of {layers} layer{plural}"
    else:
        which = f"the first {result.max_channels} channels of each of {layers} layer{plural}"
        if any(layer.channels_total < (result.max_channels or 0) for layer in result.layers):
            which += " (all of a layer's channels where it has fewer)"
    over = (f"over {result.inputs:,} labelled inputs" if result.targets == "labels"
            else f"over {result.inputs:,} inputs, against the unablated model's own predictions (no labels)")
    text = f"{ablated:,} of {total:,} filters ablated one at a time: {which}, {over}"
    if result.skipped:
        text += f"; {len(result.skipped)} layer{'s' if len(result.skipped) != 1 else ''} skipped"
    return text + "."
