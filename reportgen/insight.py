"""Insight beyond pictures, the analyze half: the glue between `analyze` and the modules that
compute it.

`collect` (model on its device, hooks already removed): full-weight statistics (`weight_stats`),
receptive fields and top-activation crops (`top_activations`), the Grad-CAM pass (`gradcam`),
the penultimate features (`embedding`, collected during the main pass). It returns
`InsightData` (`analysis.py`: numpy and plain values); `insight_render.py` turns that into the
report model's `LayerInsight` and `ReportInsight`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from reportgen import gradcam
from reportgen.analysis import InputRecord, InsightData, InsightOptions
from reportgen.devices import one_cpu_thread
from reportgen.embedding import Features
from reportgen.errors import ReportError, one_line
from reportgen.faults import is_out_of_memory, release_cached_memory
from reportgen.top_activations import channel_tops, collect_crops, layer_geometry
from reportgen.weight_stats import untrained_test, weight_stats

if TYPE_CHECKING:
    from reportgen.capture import CapturedLayer
    from reportgen.inputs import InputSet
    from reportgen.summary import SummaryTable

__all__ = ["InsightData", "InsightOptions", "collect"]


def collect(
    model: nn.Module,
    inputs: InputSet,
    *,
    device: torch.device,
    dtype: torch.dtype,
    options: InsightOptions,
    keep_inputs: int,
    selected: Sequence[str],
    layers: Sequence[CapturedLayer],
    summary: SummaryTable | None,
    records: Sequence[InputRecord],
    classifier: bool,
    features: Features | None,
    call: Callable[[nn.Module, torch.Tensor], Any] | None = None,
    fused_cam: gradcam.CamResult | None = None,
    rollout: gradcam.CamResult | None = None,
    known_crops: dict[tuple[str, int, int], tuple[tuple[int, ...], np.ndarray]] | None = None,
) -> InsightData:
    """Run after the main pass, inside its `preserved_modes`/`on_device`, model in eval mode."""
    notes: list[str] = []
    modules = dict(model.named_modules())
    with torch.no_grad(), one_cpu_thread(device.type == "cpu"):
        stats = {
            name: found
            for name in selected
            if name in modules
            and (found := weight_stats(modules[name], duplicate_threshold=options.duplicate_threshold)) is not None
        }
        kernels = {name: module.weight for name, module in modules.items()
                   if name and isinstance(module, nn.modules.conv._ConvNd) and isinstance(module.weight, torch.Tensor)
                   and not isinstance(module.weight, nn.parameter.UninitializedParameter)}
        init_test, per_layer = untrained_test(kernels)
        stats = {name: replace(found, init=per_layer.get(name)) for name, found in stats.items()}
    input_spatial = tuple(int(d) for d in records[0].shape[1:]) if records else ()
    geometry = layer_geometry(summary.rows if summary is not None else (), layers, input_spatial) if input_spatial else {}
    names = list(inputs.names)
    tops = {layer.key: channel_tops(layer, names, geometry.get(layer.key), input_spatial) for layer in layers}
    tops = {key: value for key, value in tops.items() if value}
    crops: dict[str, np.ndarray] = {}
    if options.top_k > 0 and len(inputs) > keep_inputs and len(input_spatial) == 2 and tops:
        # Dataset mode: more inputs than feature-map rows, so show who excites each channel.
        crops = collect_crops(tops, inputs, channels=options.top_k_channels,
                              known=known_crops)
    cam = None
    if options.cam and classifier and layers and input_spatial:
        target = options.cam_layer or gradcam.default_cam_layer(model)
        if options.cam_layer is not None:
            gradcam.check_cam_layer(model, options.cam_layer)
        cam = fused_cam
        if cam is None and target is not None:  # no maps from the main pass: a pass of its own
            try:
                # The default layer falls back to the last conv that reaches the output.
                fallbacks = [] if options.cam_layer is not None else gradcam.conv_layers(model)[::-1]
                cam = gradcam.grad_cam(model, inputs, count=min(keep_inputs, len(inputs)), device=device,
                                       dtype=dtype, layer=target, watched=[layer.module_name for layer in layers],
                                       fallbacks=fallbacks, call=call)
            except ReportError:
                raise
            except Exception as exc:  # the main pass worked: report without Grad-CAM, and say why
                if is_out_of_memory(exc):
                    release_cached_memory(device)
                notes.append(f"Grad-CAM was skipped: the model failed in the gradient pass ({one_line(exc)}).")
                cam = None
            if cam is not None and cam.note:
                notes.append(cam.note)
    elif options.cam and not classifier and layers:
        notes.append("Grad-CAM was skipped: the model's output is not a (batch, classes) score.")
    return InsightData(weight_stats=stats, geometry=geometry, input_spatial=input_spatial, tops=tops, crops=crops,
                       cam=cam, rollout=rollout, features=features, notes=tuple(notes), init_test=init_test)
