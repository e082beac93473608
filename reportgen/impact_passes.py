"""Impact and robustness, the analyze half: the opt-in passes after the main analysis.

`run_impact` runs, on the model the report is about:
- filter ablation (`ablation.py`) over every input, with the misfiring-filter statistics
  (`misfiring.py`) collected in the same unablated pass;
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
    run_ablation,
    select_ablation_layers,
)
from reportgen.errors import ReportError
from reportgen.inputs import InputSet, call_model
from reportgen.misfiring import MisfiringResult, MisfiringTracker, find_misfiring
from reportgen.model_state import on_device, preserved_modes
from reportgen.probes import DEFAULT_FGSM_EPSILON, ProbeOptions, ProbeRun, run_probes
from reportgen.progress import progress_bar

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
    batch_size: int = 16,
    max_inputs_shown: int = 8,
    forward_args: ForwardArgs = None,
    show_progress: bool = False,
    thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None = None,
    seed: int = 0,
) -> ImpactRun:
    """Run what `options` asks for (see the module docstring); `seed`: probe noise."""
    options.check()
    if isinstance(model, torch.jit.ScriptModule):
        return ImpactRun(ablation=None, misfiring=None, probes=None, notes=(
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
    return ImpactRun(ablation=ablation, misfiring=misfiring, probes=probe_run, notes=tuple(notes))


def validate_impact(model: nn.Module, options: ImpactOptions) -> None:
    """Option mistakes, found before the long passes run (bad numbers, globs that match nothing)."""
    options.check()
    if options.ablation and options.ablation_layers and not isinstance(model, torch.jit.ScriptModule):
        select_ablation_layers(model, options.ablation_layers, ())
