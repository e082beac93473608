"""The analyze stage: one pass over the inputs in batches, hooks reducing on the device.

Output is an `Analysis` of numpy arrays and plain values; no torch object leaves this module.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen import insight as insight_stage
from reportgen import thumbnails
from reportgen.analysis import Analysis, InputRecord, InsightOptions, LayerWeights, PredictionRecord
from reportgen.capture import ActivationCapture, call_key
from reportgen.devices import model_dtype
from reportgen.embedding import FeatureCollector
from reportgen.errors import ReportError, one_line
from reportgen.faults import is_out_of_memory, release_cached_memory
from reportgen.inputs import InputSet, call_model
from reportgen.model_state import on_device, preserved_modes
from reportgen.outputs import describe_output, find_logits
from reportgen.sites import RAW_BY_REQUEST, Plan, learn_sites
from reportgen.summary import SummaryTable, fallback_summary, summarize

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
TOP_K = 5
TAPS = ("activation", "conv")  # where a conv is observed: its activation site, or its raw output


@dataclass(frozen=True)
class AnalysisOptions:
    layers: tuple[str, ...] = ()
    max_channels: int = 64
    batch_size: int = 16
    tile_size: int = 32
    keep_inputs: int = 8  # inputs whose feature maps are drawn; statistics use all inputs
    # batch -> the model's arguments (tuple: positional, dict: keyword), for models that take
    # several inputs or a dict; None calls model(batch).
    forward_args: Callable[[torch.Tensor], Any] | None = None
    # "activation": each conv observed where its activation acts on it (sites.py); "conv": the
    # raw conv output, before any normalisation or activation.
    tap: str = "activation"
    insight: InsightOptions = InsightOptions()  # statistics, Grad-CAM, top-k


def select_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Qualified names to hook: every conv by default, or names matching any glob in `patterns`."""
    named = [(name, module) for name, module in model.named_modules() if name]
    if not patterns:
        return [name for name, module in named if isinstance(module, CONV_TYPES)]
    chosen = [name for name, _ in named if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        sample = ", ".join(name for name, _ in named[:8]) or "(the model has no submodules)"
        raise ReportError(f"--layers {' '.join(patterns)} matches no layer; names look like: {sample}")
    return chosen


def layer_weights(module: nn.Module, max_channels: int) -> LayerWeights | None:
    """The filters of a conv-like module, output channel first, or None if it has no kernel."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 3:
        return None
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return None
    groups = int(getattr(module, "groups", 1))
    transposed = bool(getattr(module, "transposed", False))
    with torch.no_grad():
        tensor = weight.detach()
        if transposed:
            # ConvTranspose stores (in, out/groups, *k); with one group, filter j is column j.
            tensor = tensor.transpose(0, 1) if groups == 1 else tensor
        total = tensor.shape[0]
        array = tensor[:max_channels].float().cpu().numpy().copy()
    return LayerWeights(
        filters=array,
        filters_total=int(total),
        in_channels=int(getattr(module, "in_channels", array.shape[1])),
        groups=groups,
        transposed=transposed,
        weight_shape=tuple(int(d) for d in weight.shape),
    )


class _OutputCollector:
    """Root forward hook: keeps only top-k classes (and the labelled class's probability)."""

    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []
        self.num_classes: int | None = None
        self.offset = 0
        self.labels: list[int | None] = []
        self.logits_like = True
        self.output_description = ""  # what the output was, when it held no logits
        self.nonfinite_inputs = 0

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        tensor = find_logits(output, len(self.labels))
        if tensor is None:
            self.logits_like = False
            self.output_description = self.output_description or describe_output(output)
            return
        self.nonfinite_inputs += int((~torch.isfinite(tensor)).any(dim=1).sum())
        probabilities = torch.softmax(tensor.detach().float(), dim=1)
        k = min(TOP_K, probabilities.shape[1])
        top = torch.topk(probabilities, k, dim=1)
        indices = top.indices.cpu().numpy()
        values = top.values.cpu().numpy()
        full = probabilities.cpu().numpy() if any(lbl is not None for lbl in self.labels) else None
        self.num_classes = int(tensor.shape[1])
        for row in range(tensor.shape[0]):
            index = self.offset + row
            label = self.labels[row] if row < len(self.labels) else None
            label_probability = (
                float(full[row, label]) if full is not None and label is not None and label < full.shape[1] else None
            )
            self.records.append(
                PredictionRecord(
                    index=index,
                    top_indices=tuple(int(i) for i in indices[row]),
                    top_probabilities=tuple(float(v) for v in values[row]),
                    label=label,
                    label_probability=label_probability,
                )
            )


def thumbnail(sample: torch.Tensor, inputs: InputSet) -> np.ndarray | None:
    """`thumbnails.draw`'s picture: uint8 (H, W, 3) or (H, W); images, waveforms, clip strips."""
    return thumbnails.draw(sample, inputs.preprocessing).picture


def analyze(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    options: AnalysisOptions,
    *,
    progress: Callable[[int], None] | None = None,
) -> Analysis:
    """Run every input through the model once, with the hooks attached, and collect the results.

    A batch that runs out of memory is undone (its partial capture discarded) and re-run at half
    the size; the smaller size is kept for the rest of the run, and the report says so.
    """
    if len(inputs) == 0:
        raise ReportError("no inputs to analyse")
    notes: list[str] = []
    # PyTorch refuses forward hooks on ScriptModules: run them plainly, predictions only.
    hookable = not isinstance(model, torch.jit.ScriptModule)
    selected = select_layers(model, options.layers) if hookable else []
    if not hookable:
        notes.append(_scripted_note(options.layers))
    dtype = model_dtype(model)
    batch_size = max(1, options.batch_size)
    # the first batch is loaded once: its first input also learns the activation sites
    preloaded = (0, min(batch_size, len(inputs)), inputs.batch(0, min(batch_size, len(inputs))))
    plan, raw_reason = _learn_sites(model, preloaded[2][:1], selected, device, dtype, options) \
        if hookable else (None, "")
    collector = _OutputCollector()
    records: list[InputRecord] = []
    summary: SummaryTable | None = None

    with preserved_modes(model), on_device(model, device), torch.inference_mode():
        model.eval()
        capture = ActivationCapture(
            model,
            selected,
            max_channels=options.max_channels,
            tile_size=options.tile_size,
            keep_inputs=options.keep_inputs,
            top_k=options.insight.top_k,
            peak_channels=options.insight.top_k_channels,
            plan=plan,
            raw_reason=raw_reason,
        )
        features = FeatureCollector(model, enabled=hookable and options.insight.embedding,
                                    offset=lambda: capture.offset)
        fused = insight_stage.fused_cam(model, inputs, options.insight, keep_inputs=options.keep_inputs,
                                        selected=selected, hookable=hookable)
        cropper = insight_stage.crop_collector(model, inputs, options.insight, keep_inputs=options.keep_inputs,
                                               hookable=hookable)
        output_hook = model.register_forward_hook(collector) if hookable else None
        try:
            with capture if hookable else contextlib.nullcontext(capture), features, \
                    fused if fused is not None else contextlib.nullcontext():
                start = 0
                while start < len(inputs):
                    stop = min(start + batch_size, len(inputs))
                    mark = capture.mark()
                    kept = (len(records), len(collector.records))
                    try:
                        with fused.armed(start) if fused is not None else contextlib.nullcontext():
                            summary, batch = _run_batch(model, inputs, start, stop, device, dtype, options,
                                                        capture, collector, records, summary, notes, hookable,
                                                        preloaded[2] if preloaded[:2] == (start, stop) else None)
                    except Exception as exc:
                        if fused is not None and fused.abandon(exc):  # failed with autograd on: again without
                            capture.rollback(mark, start)
                            del records[kept[0]:]
                            del collector.records[kept[1]:]
                            continue
                        if not is_out_of_memory(exc) or stop - start == 1:
                            if is_out_of_memory(exc):
                                hint = "smaller inputs" if device.type == "cpu" else "--device cpu or smaller inputs"
                                raise ReportError(
                                    f"out of memory on input {inputs.names[start]} even with a batch of 1 "
                                    f"on {device}: try {hint}"
                                ) from exc
                            raise
                        capture.rollback(mark, start)
                        del records[kept[0]:]
                        del collector.records[kept[1]:]
                        release_cached_memory(device)
                        smaller = max(1, (stop - start) // 2)
                        notes.append(
                            f"Out of memory on a batch of {stop - start} input(s) starting at "
                            f"{inputs.names[start]}: that batch's partial results were discarded and the "
                            f"run went on with batches of {smaller}."
                        )
                        batch_size = smaller
                        continue
                    if cropper is not None:
                        cropper.update(capture.winners(cropper.channels), summary.rows, batch, start)
                    if progress is not None:
                        progress(stop - start)
                    start = stop
            layers = capture.results()
        finally:
            if output_hook is not None:
                output_hook.remove()
        modules = dict(model.named_modules())
        weights = {
            name: found
            for name in selected
            if (found := layer_weights(modules[name], options.max_channels)) is not None
        }
        if hookable:
            notes.extend(_unhooked_notes(model, selected, capture.fired, explicit=bool(options.layers)))
        if not collector.logits_like:
            notes.append(f"The model's output is not class logits (a floating (batch, classes) tensor, or a "
                         f"'logits' entry): it was {collector.output_description}. No predictions, accuracy, "
                         "Grad-CAM or ablation are shown.")
        if collector.nonfinite_inputs:
            notes.append(f"The model's output held NaN or Inf for {collector.nonfinite_inputs} input(s): "
                         "their predictions are not meaningful.")
        insight = insight_stage.collect(
            model, inputs, device=device, dtype=dtype, options=options.insight, keep_inputs=options.keep_inputs,
            selected=selected, layers=layers, summary=summary, records=records,
            classifier=collector.logits_like and collector.num_classes is not None,
            features=features.result(), call=lambda m, b: call_model(m, b, options.forward_args), fused=fused,
            cropper=cropper,
        ) if hookable else None
    assert summary is not None
    return Analysis(
        model_type=type(model).__name__,
        summary=summary,
        layers=tuple(layers),
        weights=weights,
        selected=tuple(selected),
        inputs=tuple(records),
        predictions=tuple(collector.records) if collector.logits_like else (),
        num_classes=collector.num_classes if collector.logits_like else None,
        device=str(device),
        notes=tuple(notes),
        insight=insight,
    )


def _run_batch(
    model: nn.Module,
    inputs: InputSet,
    start: int,
    stop: int,
    device: torch.device,
    dtype: torch.dtype,
    options: AnalysisOptions,
    capture: ActivationCapture,
    collector: _OutputCollector,
    records: list[InputRecord],
    summary: SummaryTable | None,
    notes: list[str],
    hookable: bool,
    preloaded: torch.Tensor | None = None,
) -> tuple[SummaryTable, torch.Tensor]:
    """Load (unless `preloaded`), record and run inputs start..stop-1; the first batch also
    yields the summary. Returns the summary and the batch as loaded (host, before any cast)."""
    loaded = batch = preloaded if preloaded is not None else inputs.batch(start, stop)
    for offset in range(stop - start):
        index = start + offset
        shown = index < options.keep_inputs
        drawn = thumbnails.draw(batch[offset], inputs.preprocessing) if shown else None
        records.append(
            InputRecord(
                index=index,
                name=inputs.names[index],
                shape=tuple(int(d) for d in batch.shape[1:]),
                label=inputs.label(index),
                thumbnail=drawn.picture if drawn is not None else None,
                notes=(*inputs.notes_for(index), *([drawn.note] if drawn is not None and drawn.note else [])),
            )
        )
    batch = batch.to(device=device, dtype=dtype if batch.is_floating_point() else None)
    capture.start_batch(start)
    collector.offset = start
    collector.labels = [inputs.label(i) for i in range(start, stop)]
    if not hookable:
        output = _forward(model, batch, inputs, start, stop, options.forward_args)
        collector(model, (batch,), output)
        return summary or fallback_summary(model, "PyTorch cannot attach hooks to a TorchScript module"), loaded
    if summary is None:
        summary = _first_pass(model, batch, capture, collector, inputs, start, stop, options.forward_args)
        if not summary.available:
            notes.append(f"torchinfo could not walk this model ({summary.problem}); "
                         "the table lists parameters only.")
        return summary, loaded
    _forward(model, batch, inputs, start, stop, options.forward_args)
    return summary, loaded


def _learn_sites(model: nn.Module, sample: torch.Tensor, selected: Sequence[str], device: torch.device,
                 dtype: torch.dtype, options: AnalysisOptions) -> tuple[Plan | None, str]:
    """Where each selected conv's activation acts on it, learnt from a forward of the first input
    alone, before the pass; and why raw outputs are observed where there is no plan (`--tap
    conv`, or that forward failed: the pass then reports the failure, or observes raw outputs)."""
    if options.tap == "conv" or not selected:
        return None, RAW_BY_REQUEST
    sample = sample.to(device=device, dtype=dtype if sample.is_floating_point() else None)
    try:
        with preserved_modes(model), on_device(model, device):
            model.eval()
            plan = learn_sites(model, selected, lambda: call_model(model, sample, options.forward_args), call_key)
    except Exception as exc:
        return None, f"its activation could not be traced: {one_line(exc)}"
    return plan, "its activation could not be traced"


def _scripted_note(layers: Sequence[str]) -> str:
    note = ("TorchScript model: PyTorch cannot attach forward hooks to a ScriptModule, so no feature "
            "maps or activation statistics were captured; the summary lists parameters only and the "
            "predictions come from plain forward passes.")
    if layers:
        note += f" --layers {' '.join(layers)} was ignored."
    return note


def conv_shaped(module: nn.Module) -> tuple[int, ...] | None:
    """The shape of a module's own conv-like weight (3 to 5 dims), if it has one."""
    for parameter in module.parameters(recurse=False):
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            continue
        if 3 <= parameter.dim() <= 5:
            return tuple(int(d) for d in parameter.shape)
    return None


def _unhooked_notes(model: nn.Module, selected: Sequence[str], fired: set[str], *, explicit: bool) -> list[str]:
    """Name the layers the hooks could not see, instead of leaving them silently out."""
    from torch.nn.utils import parametrize

    notes = []
    silent = [name for name in selected if name not in fired]
    if silent:
        modules = dict(model.named_modules())
        convs = [n for n in silent if isinstance(modules[n], CONV_TYPES)]
        others = [n for n in silent if n not in convs]
        if convs:
            notes.append(
                f"Conv layer(s) never called through their own forward, so their hooks never fired and "
                f"no feature maps were captured: {_names(convs)}. The model probably applies their "
                "weights directly (e.g. F.conv2d(x, self.conv.weight)), which hooks cannot see."
            )
        if others:
            notes.append(f"Selected layer(s) that never ran in the forward pass: {_names(others)}.")
    if not explicit:
        hidden = [
            name
            for name, module in model.named_modules()
            if name
            and name not in selected
            and not isinstance(module, (parametrize.ParametrizationList, CONV_TYPES))
            and ".parametrizations." not in f".{name}."
            and conv_shaped(module) is not None
        ]
        if hidden:
            notes.append(
                f"Module(s) that own conv-shaped weights but are not torch conv layers, so they are not "
                f"drawn by default: {_names(hidden)}; pass --layers NAME to draw one."
            )
    return notes


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _forward(model: nn.Module, batch: torch.Tensor, inputs: InputSet, start: int, stop: int,
             forward_args: Callable[[torch.Tensor], Any] | None = None) -> Any:
    try:
        return call_model(model, batch, forward_args)
    except ReportError:
        raise
    except Exception as exc:
        raise _model_failure(exc, batch, inputs, start, stop) from exc


def _model_failure(exc: BaseException, batch: torch.Tensor, inputs: InputSet, start: int, stop: int) -> ReportError:
    where = inputs.names[start] if stop - start == 1 else f"{inputs.names[start]} .. {inputs.names[stop - 1]}"
    return ReportError(
        f"the model failed on input batch {where} of shape {list(batch.shape)}: {one_line(exc)}"
    )


def _first_pass(
    model: nn.Module,
    batch: torch.Tensor,
    capture: ActivationCapture,
    collector: _OutputCollector,
    inputs: InputSet,
    start: int,
    stop: int,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
) -> SummaryTable:
    """The first batch runs inside torchinfo, so the summary costs no forward pass of its own."""
    try:
        if forward_args is not None:
            return summarize(model, batch, input_data=forward_args(batch))
        return summarize(model, batch)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise  # the caller halves the batch and runs this again
        cause = exc.__cause__ or exc
        capture.discard()
        collector.records.clear()
        model.eval()
        try:
            call_model(model, batch, forward_args)
        except Exception as plain_exc:
            raise _model_failure(plain_exc, batch, inputs, start, stop) from plain_exc
        return fallback_summary(model, one_line(cause))
