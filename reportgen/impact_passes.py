"""Impact and robustness, the analyze half: the opt-in passes after the main analysis.

`run_impact` runs, on the model the report is about:
- filter ablation (`ablation.py`) over every input, against the unablated model's targets and
  metrics that the main pass collected (`collectors/ablation_baseline.py`), so no clean pass
  runs here; the misfiring filters (`misfiring.py`) were collected in the main pass too;
- perturbation probes (`probes.py`) on the shown inputs;
and hands on an `ImpactRun` of numpy and plain values, which `impact_render.py` turns into the
report model's `ImpactReport`.

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
    Baseline,
    run_ablation,
    select_ablation_layers,
)
from reportgen.collectors.ablation_baseline import AblationBaselineCollector
from reportgen.collectors.misfiring import MisfiringCollector
from reportgen.devices import model_dtype
from reportgen.engine.loop import load_batch
from reportgen.engine.main_pass import MainPass
from reportgen import distributed
from reportgen.distributed import Group
from reportgen.errors import ReportError
from reportgen.inputs import InputSet, call_model
from reportgen.misfiring import MisfiringResult
from reportgen.model_state import on_device, preserved_modes
from reportgen.probes import DEFAULT_FGSM_EPSILON, ProbeOptions, ProbeRun, run_probes
from reportgen.progress import progress_bar
from reportgen.sites import call_key, learn_sites

TOP_FILTERS = 5  # top and bottom filters shown per layer

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


@dataclass(frozen=True)
class ImpactRun:
    """What the impact passes found, before anything is drawn; None: that pass did not run."""

    ablation: AblationResult | None
    misfiring: MisfiringResult | None
    probes: ProbeRun | None
    notes: tuple[str, ...]


def run_impact(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    options: ImpactOptions,
    *,
    selected: Sequence[str],
    baseline: Baseline | None = None,
    misfiring: MisfiringResult | None = None,
    batch_size: int = 16,
    max_inputs_shown: int = 8,
    forward_args: ForwardArgs = None,
    show_progress: bool = False,
    thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None = None,
    seed: int = 0,
    group: Group | None = None,
) -> ImpactRun:
    """Run what `options` asks for (see the module docstring); `seed`: probe noise.

    `baseline` and `misfiring` come from the main pass (`AnalysisOptions.ablation_baseline`,
    `.misfiring`), which collected them: no clean pass runs here. Under torchrun (`group`) every
    rank ablates its share and rank 0 gets the merged result; probes run on rank 0.
    """
    options.check()
    group = group if group is not None else distributed.current()
    if isinstance(model, torch.jit.ScriptModule):
        return ImpactRun(ablation=None, misfiring=None, probes=None, notes=(
            "Ablation, misfiring filters and probes need forward hooks, which TorchScript modules do not "
            "support; pass the Python model instead.",))
    labelled = any(inputs.label(i) is not None for i in range(len(inputs)))
    notes: list[str] = []
    ablation: AblationResult | None = None
    probe_run: ProbeRun | None = None
    want_misfiring = options.misfiring or options.ablation

    if group is None and ((options.ablation and baseline is None) or (want_misfiring and labelled and misfiring is None)):
        # called on its own (not after `analyze`, which collects them): a clean pass of their own
        found_baseline, found_misfiring = clean_pass(model, inputs, device, selected=selected, batch_size=batch_size,
                                                     misfiring=want_misfiring and labelled and misfiring is None,
                                                     ablation=options.ablation and baseline is None,
                                                     forward_args=forward_args)
        baseline = baseline if baseline is not None else found_baseline
        misfiring = misfiring if misfiring is not None else found_misfiring

    with preserved_modes(model), on_device(model, device):
        model.eval()
        if options.ablation:
            ablation_names = select_ablation_layers(model, options.ablation_layers, selected)
            total = len(inputs) * max(1, len(ablation_names))
            with progress_bar(total, "ablation", show_progress) as advance, torch.inference_mode():
                ablation = run_ablation(
                    model, inputs, device, ablation_names,
                    AblationOptions(layers=options.ablation_layers, max_channels=options.ablation_max_channels,
                                    batch_size=batch_size, max_rows=options.ablation_max_rows),
                    baseline=baseline, forward_args=forward_args, progress=advance, group=group,
                )
        if options.probes and (group is None or group.main):  # the shown inputs only: rank 0's work
            probe_options = ProbeOptions(kinds=tuple(options.probes), strength=tuple(options.probe_strength),
                                         fgsm_epsilon=options.fgsm_epsilon, seed=seed)
            probe_run = run_probes(model, inputs, device, selected, probe_options,
                                   count=min(max_inputs_shown, len(inputs)), thumbnail=thumbnail,
                                   forward_args=forward_args)

    if want_misfiring and not labelled:
        notes.append("Misfiring filters need true labels, and none of the inputs has one.")
    elif want_misfiring and misfiring is None:
        notes.append("Misfiring filters need a classifier: the model's output held no (batch, classes) logits.")
    return ImpactRun(ablation=ablation, misfiring=misfiring if want_misfiring else None, probes=probe_run,
                     notes=tuple(notes))


def clean_pass(model: nn.Module, inputs: InputSet, device: torch.device, *, selected: Sequence[str],
               batch_size: int, misfiring: bool, ablation: bool,
               forward_args: ForwardArgs = None) -> tuple[Baseline | None, MisfiringResult | None]:
    """The ablation baseline and the misfiring statistics from a main pass of their own, the
    selected layers observed at their activation sites (as `analyze` does)."""
    labelled = any(inputs.label(i) is not None for i in range(len(inputs)))
    misfiring_collector = MisfiringCollector(tuple(selected)) if misfiring else None
    baseline_collector = AblationBaselineCollector(labelled=labelled, verify_count=batch_size) if ablation else None
    riders = [c for c in (misfiring_collector, baseline_collector) if c is not None]
    dtype = model_dtype(model)
    first = load_batch(inputs, 0, min(batch_size, len(inputs)), device, dtype)
    plan = None
    with preserved_modes(model), on_device(model, device):
        model.eval()
        if selected:
            try:
                plan = learn_sites(model, selected, lambda: call_model(model, first.tensor[:1], forward_args), call_key)
            except Exception:  # observed raw, as analyze does when the trace fails
                plan = None
        main = MainPass(model, riders, observed=selected, plan=plan, raw_reason="its activation could not be traced",
                        forward_args=forward_args)
        with torch.inference_mode():
            main.run(inputs, device=device, dtype=dtype, batch_size=batch_size, preloaded=first)
    return (baseline_collector.result() if baseline_collector is not None else None,
            misfiring_collector.result() if misfiring_collector is not None else None)


def validate_impact(model: nn.Module, options: ImpactOptions) -> None:
    """Option mistakes, found before the long passes run (bad numbers, globs that match nothing)."""
    options.check()
    if options.ablation and options.ablation_layers and not isinstance(model, torch.jit.ScriptModule):
        select_ablation_layers(model, options.ablation_layers, ())
