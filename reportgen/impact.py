"""Impact and robustness (issue 5): which filters matter, and how they react when the input changes.

`build_impact` runs the opt-in passes (`impact_passes.run_impact`: ablation with misfiring in its
unablated pass, probes) and renders what they found (`impact_render.render_impact`) into the
frozen `ImpactReport` (`impact_model.py`). It sits above both stages, like `api.py`, and holds
the model and inputs the renderer draws filters and thumbnails from. `ImpactOptions` is
importable from here (the README's path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from reportgen.analysis import LayerWeights
from reportgen.analyze import layer_weights
from reportgen.analyze import thumbnail as input_thumbnail
from reportgen.ablation import Baseline
from reportgen.impact_model import ImpactReport
from reportgen.impact_passes import ForwardArgs, ImpactOptions, run_impact, validate_impact
from reportgen.impact_render import render_impact
from reportgen.inputs import InputSet
from reportgen.misfiring import MisfiringResult
from reportgen.probes import STABLE_CORRELATION

__all__ = ["STABLE_CORRELATION", "ImpactOptions", "build_impact", "impact_for_report", "validate_impact"]


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
    baseline: Baseline | None = None,
    misfiring: MisfiringResult | None = None,
) -> ImpactReport:
    """Run what `options` asks for and render it (see the module docstring); `seed`: probe noise;
    `baseline`, `misfiring`: what the main pass collected for them (`Analysis`)."""
    run = run_impact(model, inputs, device, options, selected=selected, baseline=baseline, misfiring=misfiring,
                     batch_size=batch_size,
                     max_inputs_shown=max_inputs_shown, forward_args=forward_args, show_progress=show_progress,
                     thumbnail=thumbnail, seed=seed)
    modules = dict(model.named_modules())

    def weights_of(name: str) -> LayerWeights | None:
        module = modules.get(name)
        return layer_weights(module, 1 << 30) if module is not None else None

    def thumbnail_of(index: int) -> np.ndarray | None:
        return thumbnail(inputs.load(index)) if thumbnail is not None else None

    return render_impact(run, top_filters=options.top_filters, anchors=anchors, class_names=class_names,
                         input_names=inputs.names, first_conv=first_conv(model), weights_of=weights_of,
                         thumbnail_of=thumbnail_of if thumbnail is not None else None)


def first_conv(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return name
    return None


def impact_for_report(model: nn.Module, inputs: InputSet, device: torch.device, options: ImpactOptions, *,
                      selected: Sequence[str], anchors: dict[str, str], class_names: Sequence[str] | None,
                      batch_size: int, max_inputs_shown: int, forward_args: ForwardArgs = None,
                      show_progress: bool = False, seed: int = 0, baseline: Baseline | None = None,
                      misfiring: MisfiringResult | None = None) -> ImpactReport:
    """`build_impact` with what `api.build_report` has at hand (the analysis' layers, the sections'
    anchors)."""
    return build_impact(
        model, inputs, device, options,
        selected=selected,
        anchors=anchors,
        class_names=class_names,
        batch_size=batch_size,
        max_inputs_shown=max_inputs_shown,
        forward_args=forward_args,
        show_progress=show_progress,
        thumbnail=lambda sample: input_thumbnail(sample, inputs),
        seed=seed,
        baseline=baseline,
        misfiring=misfiring,
    )
