"""Impact and robustness (issue 5): which filters matter, and how they react when the input changes.

`build_impact` runs, on the model the report is about:
- filter ablation (`ablation.py`) over every input, with the misfiring-filter statistics
  (`misfiring.py`) collected in the same unablated pass;
- perturbation probes (`probes.py`) on the shown inputs;
and renders the results into the frozen `ImpactReport` (`impact_model.py`): numbers as plain
values, filter tiles, thumbnails and probe strips as encoded PNGs.

The model is left as it was: every pass runs in eval mode inside `preserved_modes` and
`on_device`, hooks live in context managers, ablation and misfiring run under
`torch.inference_mode()`, and the one FGSM pass takes its input gradient with
`torch.autograd.grad` (no `.grad` on parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from reportgen.ablation import (
    DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_ROWS,
    AblationOptions,
    AblationResult,
    LayerAblation,
    ranking,
    run_ablation,
    select_ablation_layers,
)
from reportgen.errors import ReportError
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
from reportgen.inputs import InputSet, call_model
from reportgen.misfiring import MisfiringResult, MisfiringTracker, find_misfiring, flagged
from reportgen.model_state import on_device, preserved_modes
from reportgen.palettes import PAD_INDEX
from reportgen.probes import (
    DEFAULT_FGSM_EPSILON,
    STABLE_CORRELATION,
    ProbeOptions,
    ProbeResult,
    ProbeRun,
    layer_summary,
    run_probes,
)
from reportgen.progress import progress_bar
from reportgen.report_model import EncodedImage

TOP_FILTERS = 5  # top and bottom filters shown per layer
CLASSES_PER_FILTER = 3  # classes listed in a top filter's breakdown
MISFIRING_SHOWN = 12  # flagged channels shown over all layers

ForwardArgs = Optional[Callable[[torch.Tensor], Any]]


@dataclass(frozen=True)
class ImpactOptions:
    """Which impact analyses run, and their bounds. Nothing runs by default."""

    ablation: bool = False
    ablation_layers: tuple[str, ...] = ()  # globs; empty: the report's layers
    ablation_max_channels: int | None = DEFAULT_MAX_CHANNELS  # None: every channel
    ablation_max_rows: int = DEFAULT_MAX_ROWS
    misfiring: bool = False  # also on with ablation (it shares the unablated pass)
    probes: tuple[str, ...] = ()
    probe_strength: tuple[tuple[str, float], ...] = ()
    fgsm_epsilon: float = DEFAULT_FGSM_EPSILON
    top_filters: int = TOP_FILTERS

    @property
    def enabled(self) -> bool:
        return self.ablation or self.misfiring or bool(self.probes)

    def check(self) -> None:
        if self.ablation_max_channels is not None and self.ablation_max_channels < 1:
            raise ReportError(f"--ablation-max-channels must be at least 1, got {self.ablation_max_channels}")
        if self.ablation_max_rows < 1:
            raise ReportError(f"ablation rows per pass must be at least 1, got {self.ablation_max_rows}")
        if not (math.isfinite(self.fgsm_epsilon) and self.fgsm_epsilon >= 0):
            raise ReportError(f"--fgsm-epsilon must be a number >= 0, got {self.fgsm_epsilon:g}")
        if self.top_filters < 1:
            raise ReportError(f"top filters must be at least 1, got {self.top_filters}")


def build_impact(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    options: ImpactOptions,
    *,
    selected: Sequence[str],
    anchors: dict[str, str],
    class_names: Sequence[str] | None,
    batch_size: int = 16,
    max_inputs_shown: int = 8,
    forward_args: ForwardArgs = None,
    show_progress: bool = False,
    thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None = None,
    seed: int = 0,
) -> ImpactReport:
    """Run what `options` asks for and render it (see the module docstring); `seed`: probe noise."""
    options.check()
    if isinstance(model, torch.jit.ScriptModule):
        return ImpactReport(ablation=None, misfiring=None, probes=(), notes=(
            "Ablation, misfiring filters and probes need forward hooks, which TorchScript modules do not "
            "support; pass the Python model instead.",))
    labelled = any(inputs.label(i) is not None for i in range(len(inputs)))
    notes: list[str] = []
    ablation: AblationResult | None = None
    misfiring: MisfiringResult | None = None
    probe_run: ProbeRun | None = None
    want_misfiring = options.misfiring or options.ablation
    ablation_names: list[str] = []
    if options.ablation:
        ablation_names = select_ablation_layers(model, options.ablation_layers, selected)

    with preserved_modes(model), on_device(model, device):
        model.eval()
        tracker = MisfiringTracker(model, selected) if want_misfiring and labelled else None
        if options.ablation:
            def clean_forward(batch: torch.Tensor) -> Any:
                if tracker is None:
                    return call_model(model, batch, forward_args)
                with tracker.hooks():
                    return call_model(model, batch, forward_args)

            total = len(inputs) * max(1, len(ablation_names))
            with progress_bar(total, "ablation", show_progress) as advance, torch.inference_mode():
                ablation = run_ablation(
                    model, inputs, device, ablation_names,
                    AblationOptions(layers=options.ablation_layers, max_channels=options.ablation_max_channels,
                                    batch_size=batch_size, max_rows=options.ablation_max_rows),
                    clean_forward=clean_forward,
                    on_clean_batch=tracker.add_batch if tracker is not None else None,
                    forward_args=forward_args,
                    progress=advance,
                )
            misfiring = tracker.result() if tracker is not None else None
        elif tracker is not None:
            with progress_bar(len(inputs), "misfiring", show_progress) as advance, torch.inference_mode():
                misfiring = find_misfiring(model, inputs, device, selected, batch_size=batch_size,
                                           forward_args=forward_args, progress=advance)
        if options.probes:
            probe_options = ProbeOptions(kinds=tuple(options.probes), strength=tuple(options.probe_strength),
                                         fgsm_epsilon=options.fgsm_epsilon, seed=seed)
            probe_run = run_probes(model, inputs, device, selected, probe_options,
                                   count=min(max_inputs_shown, len(inputs)), thumbnail=thumbnail,
                                   forward_args=forward_args)

    if want_misfiring and not labelled:
        notes.append("Misfiring filters need true labels, and none of the inputs has one.")
    renderer = _ImpactRenderer(model, inputs, anchors, class_names, thumbnail)
    return ImpactReport(
        ablation=renderer.ablation(ablation, options) if ablation is not None else None,
        misfiring=renderer.misfiring(misfiring) if misfiring is not None else None,
        probes=tuple(renderer.probe(result) for result in probe_run.results) if probe_run is not None else (),
        notes=tuple(notes),
    )


def _label(index: int | None, class_names: Sequence[str] | None) -> str:
    if index is None:
        return ""
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def _floats(values: np.ndarray | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64))


def first_conv(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return name
    return None


class _ImpactRenderer:
    """Numbers -> impact_model dataclasses; pictures encoded on the way (a handful per layer)."""

    def __init__(self, model: nn.Module, inputs: InputSet, anchors: dict[str, str],
                 class_names: Sequence[str] | None,
                 thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None) -> None:
        self.modules = dict(model.named_modules())
        self.inputs = inputs
        self.anchors = anchors
        self.class_names = class_names
        self.thumbnail = thumbnail
        self.first_conv = first_conv(model)
        self._weights: dict[str, Any] = {}
        self._thumbs: dict[int, EncodedImage | None] = {}

    # -- pictures ------------------------------------------------------------------------
    def filter_tile(self, layer: str, channel: int) -> EncodedImage | None:
        """One filter drawn as in the layer's filter grid (per-filter min-max)."""
        from reportgen.analyze import layer_weights

        name = layer.split("#", 1)[0]
        if name not in self._weights:
            module = self.modules.get(name)
            self._weights[name] = layer_weights(module, 1 << 30) if module is not None else None
        weights = self._weights[name]
        if weights is None or not 0 <= channel < weights.filters.shape[0]:
            return None
        rgb = name == self.first_conv and weights.in_channels == 3 and weights.groups == 1
        tiles = filter_tiles(weights.filters[channel:channel + 1], rgb_first_layer=rgb)
        picture = tiles.tiles[0]
        return embed(encode_png(picture, tiles.colormap), width=picture.shape[1], height=picture.shape[0])

    def input_thumbnail(self, index: int) -> EncodedImage | None:
        if self.thumbnail is None or not 0 <= index < len(self.inputs):
            return None
        if index not in self._thumbs:
            picture = self.thumbnail(self.inputs.load(index))
            self._thumbs[index] = None if picture is None else self._encode_rgb(picture)
        return self._thumbs[index]

    @staticmethod
    def _encode_rgb(picture: np.ndarray) -> EncodedImage:
        return embed(encode_png(picture, None), width=picture.shape[1], height=picture.shape[0])

    # -- ablation ------------------------------------------------------------------------
    def ablation(self, result: AblationResult, options: ImpactOptions) -> AblationReport:
        base = result.baseline
        classes = tuple(
            ClassBaseline(index=c, label=_label(c, self.class_names), count=n, probability=float(p))
            for c, n, p in zip(result.classes, result.class_counts, base.per_class)
        )
        layers = tuple(self._ablation_layer(layer, result, options.top_filters) for layer in result.layers)
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
                    input=self.inputs.names[int(index)],
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


__all__ = ["STABLE_CORRELATION", "ImpactOptions", "build_impact"]


def validate_impact(model: nn.Module, options: ImpactOptions) -> None:
    """Option mistakes, found before the long passes run (bad numbers, globs that match nothing)."""
    options.check()
    if options.ablation and options.ablation_layers and not isinstance(model, torch.jit.ScriptModule):
        select_ablation_layers(model, options.ablation_layers, ())


def impact_for_report(model: nn.Module, inputs: InputSet, device: torch.device, options: ImpactOptions, *,
                      selected: Sequence[str], anchors: dict[str, str], class_names: Sequence[str] | None,
                      batch_size: int, max_inputs_shown: int, forward_args: ForwardArgs = None,
                      show_progress: bool = False, seed: int = 0) -> ImpactReport:
    """`build_impact` with what `api.build_report` has at hand (the analysis' layers, the sections'
    anchors)."""
    from reportgen.analyze import thumbnail

    return build_impact(
        model, inputs, device, options,
        selected=selected,
        anchors=anchors,
        class_names=class_names,
        batch_size=batch_size,
        max_inputs_shown=max_inputs_shown,
        forward_args=forward_args,
        show_progress=show_progress,
        thumbnail=lambda sample: thumbnail(sample, inputs),
        seed=seed,
    )
