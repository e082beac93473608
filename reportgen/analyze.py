"""The analyze stage: which layers, which collectors, one main pass (engine/), the hand-off.

The loop, the hooks and the recovery from failures live in the engine; what is computed lives
in the collectors (collectors/). Output is an `Analysis` of numpy arrays and plain values; no
torch object leaves this module.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen import distributed
from reportgen import insight as insight_stage
from reportgen import thumbnails
from reportgen.analysis import Analysis, InsightOptions, LayerWeights
from reportgen.collectors import PassWants, main_collectors
from reportgen.devices import model_dtype
from reportgen.engine.collector import Batch, Collector
from reportgen.engine.loop import load_batch
from reportgen.engine.main_pass import MainPass
from reportgen.errors import ReportError, one_line
from reportgen.inputs import InputSet, call_model
from reportgen.model_state import on_device, preserved_modes
from reportgen.sites import RAW_BY_REQUEST, Plan, call_key, learn_sites
from reportgen.summary import fallback_summary
from reportgen.tokens import transformer_blocks

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
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
    misfiring: bool = False  # misfiring filters, collected in the main pass (needs labels)
    ablation_baseline: bool = False  # the unablated side of ablation, collected in the main pass
    workers: int = 0  # processes decoding the next batches while the model runs (engine/prefetch.py)

    def wants(self) -> PassWants:
        return PassWants(max_channels=self.max_channels, tile_size=self.tile_size, keep_inputs=self.keep_inputs,
                         insight=self.insight, misfiring=self.misfiring, ablation_baseline=self.ablation_baseline,
                         ablation_batch_size=self.batch_size)


def select_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Qualified names to hook: by default every conv and every transformer block (tokens.py:
    their tokens are drawn as maps), in definition order; or names matching any glob in `patterns`."""
    named = [(name, module) for name, module in model.named_modules() if name]
    if not patterns:
        blocks = set(transformer_blocks(model))
        return [name for name, module in named if isinstance(module, CONV_TYPES) or name in blocks]
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
    check_labels: Callable[[int], None] | None = None,
) -> Analysis:
    """Run every input through the model once (`engine.MainPass`), with the collectors the
    options ask for riding the pass, and hand on what they found.

    A batch that runs out of memory is undone (every collector's staged part discarded) and run
    again at half the size; the smaller size is kept for the rest of the run, and the report
    says so. `check_labels(num_classes)` runs after the first batch.
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
    group = distributed.current()
    share = group.share(len(inputs), batch_size) if group is not None else (0, len(inputs))
    if group is not None and inputs.skippable:
        inputs.skippable = []  # leaving a file out would shift every later rank's share
        notes.append("Under torchrun an unreadable input file is an error (as with --strict): leaving it out "
                     "would move every later input to another rank's share.")
    # the first batch is loaded once: its first input also learns the activation sites
    first = load_batch(inputs, share[0], min(share[0] + batch_size, share[1]), device, dtype) \
        if share[1] > share[0] else None
    # transformer blocks are observed at their own output (tokens.py), not followed to a site
    blocks = transformer_blocks(model) if hookable and not options.layers else []
    plan, raw_reason = learn_plan(model, first.tensor[:1], [n for n in selected if n not in blocks], device,
                                  options) if hookable and first is not None else (None, "")

    with preserved_modes(model), on_device(model, device), torch.inference_mode():
        model.eval()
        main: MainPass | None = None
        collectors = main_collectors(model, inputs, options.wants(), selected=selected, hookable=hookable,
                                     summary_rows=lambda: main.summary.rows if main and main.summary else (),
                                     check_labels=check_labels,
                                     verify_starts=tuple(start for start, _ in group.shares(len(inputs), batch_size))
                                     if group is not None else (0,))
        main = MainPass(model, collectors.all(), observed=selected, plan=plan, raw_reason=raw_reason,
                        forward_args=options.forward_args, hookable=hookable,
                        token_blocks=blocks)
        if group is None:
            main.run(inputs, device=device, dtype=dtype, batch_size=batch_size, progress=progress, preloaded=first,
                     workers=options.workers)
            order = main.layer_order()
        else:
            order = _run_share(group, main, collectors.all(), inputs, device=device, dtype=dtype,
                               batch_size=batch_size, share=share, progress=progress, preloaded=first,
                               workers=options.workers)
            baseline = collectors.ablation_baseline.result() \
                if group.main and collectors.ablation_baseline is not None else None
            if options.ablation_baseline:  # every rank ablates its share against the merged baseline
                baseline = group.broadcast(baseline)
            if not group.main:
                return _worker_analysis(model, device, main, selected, baseline)
            notes.append(group.describe())
        summary = main.summary
        assert summary is not None
        notes.extend(main.notes)
        layers = collectors.activations.results(order)
        modules = dict(model.named_modules())
        weights = {
            name: found
            for name in selected
            if (found := layer_weights(modules[name], options.max_channels)) is not None
        }
        if hookable:
            notes.extend(_unhooked_notes(model, selected, main.fired, explicit=bool(options.layers)))
        for collector in collectors.all():
            notes.extend(collector.notes())
        records = collectors.records.records()
        predictions = collectors.predictions
        classifier = predictions.state.logits_like and predictions.state.num_classes is not None
        insight = insight_stage.collect(
            model, inputs, device=device, dtype=dtype, options=options.insight, keep_inputs=options.keep_inputs,
            selected=selected, layers=layers, summary=summary, records=records, classifier=classifier,
            features=collectors.features.result(), call=lambda m, b: call_model(m, b, options.forward_args),
            fused_cam=collectors.cam.result(len(inputs)) if collectors.cam is not None else None,
            rollout=collectors.rollout.result(len(inputs)) if collectors.rollout is not None else None,
            known_crops=collectors.crops.crops if collectors.crops is not None else None,
        ) if hookable else None
    return Analysis(
        model_type=type(model).__name__,
        summary=summary,
        layers=tuple(layers),
        weights=weights,
        selected=tuple(selected),
        inputs=records,
        predictions=predictions.records(),
        num_classes=predictions.state.num_classes if predictions.state.logits_like else None,
        device=str(device),
        notes=tuple(notes),
        insight=insight,
        misfiring=collectors.misfiring.result() if collectors.misfiring is not None else None,
        ablation_baseline=collectors.ablation_baseline.result() if collectors.ablation_baseline is not None else None,
        dense=collectors.dense.records() if collectors.dense is not None else (),
        token_pictures=collectors.token_pictures.result() if collectors.token_pictures is not None else {},
    )


def _run_share(group: distributed.Group, main: MainPass, collectors: Sequence[Collector[Any]], inputs: InputSet, *,
               device: torch.device, dtype: torch.dtype, batch_size: int, share: tuple[int, int],
               progress: Callable[[int], None] | None, preloaded: Batch | None, workers: int) -> dict[str, int]:
    """This rank's share of the main pass; then every rank's collector states merged into rank
    0's (`distributed.py`). Returns the merged order of the observed layer calls."""
    error: BaseException | None = None
    try:
        main.run(inputs, device=device, dtype=dtype, batch_size=batch_size, progress=progress, preloaded=preloaded,
                 first=share[0], count=share[1], workers=workers)
    except Exception as exc:  # told to every rank before anything else is exchanged
        error = exc
    group.agree(error)
    shares = group.gather(([c.state for c in collectors], sorted(main.fired), main.layer_order(), main.notes))
    if shares is None:
        return main.layer_order()
    for rank, (states, fired, _, notes) in enumerate(shares[1:], start=1):
        for collector, state in zip(collectors, states):
            collector.merge_state(distributed.move(state, device))
        main.fired.update(fired)
        main.notes.extend(f"On rank {rank}: {note}" for note in notes)
    return distributed.merged_order([order for _, _, order, _ in shares])


def _worker_analysis(model: nn.Module, device: torch.device, main: MainPass, selected: Sequence[str],
                     baseline: Any) -> Analysis:
    """What a rank other than 0 hands on: nothing to draw (rank 0 has the merged states), only
    the merged ablation baseline its share of the ablation needs."""
    return Analysis(model_type=type(model).__name__, summary=main.summary or fallback_summary(model, "not rank 0"),
                    layers=(), weights={}, selected=tuple(selected), inputs=(), predictions=(), num_classes=None,
                    device=str(device), notes=(), ablation_baseline=baseline)


def learn_plan(model: nn.Module, sample: torch.Tensor, selected: Sequence[str], device: torch.device,
                 options: AnalysisOptions) -> tuple[Plan | None, str]:
    """Where each selected conv's activation acts on it, learnt from a forward of the first input
    alone, before the pass; and why raw outputs are observed where there is no plan (`--tap
    conv`, or that forward failed: the pass then reports the failure, or observes raw outputs)."""
    if options.tap == "conv" or not selected:
        return None, RAW_BY_REQUEST
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
    """The shape of a module's own conv-like weight (3 to 5 dims), if it has one. Only parameters
    named like weights count: a ViT's (1, 197, 768) position embedding or class token is 3D too,
    and is not a kernel."""
    for name, parameter in module.named_parameters(recurse=False):
        if isinstance(parameter, nn.parameter.UninitializedParameter) or not ("weight" in name or "kernel" in name):
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
