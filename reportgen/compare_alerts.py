"""The alerts diff of a comparison: which alert conditions (alerts.py's kinds) hold for a layer
in B and not in A, and the reverse, judged from what the compare pass collected for both (the
activation statistics over every input at the observed site, and the full weights)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from reportgen.capture import CapturedLayer
from reportgen.compare_data import AlertFound, AlertsDiff
from reportgen.report_model import never_positive_kind
from reportgen.weight_change import filters_of

ALERT_KINDS = ("nonfinite-activation", "dead-filter", "never-positive", "constant-channel", "exploding-activation",
               "nonfinite-weight", "flat-filter")


def layer_alerts(layers: Sequence[CapturedLayer], model: nn.Module, selected: Sequence[str], *,
                 explode: float = 1e4) -> dict[tuple[str, str], str]:
    """The alert conditions of alerts.py that the compare pass can judge for one model, per
    layer: (kind, layer) -> what it rests on. Activation kinds from the statistics over every
    input at the observed site (dead, or never-positive where no ReLU-like activation acts: > 0 on
    no input; constant: max == min; exploding:
    max(|min|, |max|) > `explode`); weight kinds from the full weights (NaN/Inf, a constant filter)."""
    found: dict[tuple[str, str], str] = {}
    for layer in layers:
        name = layer.key
        bad = int(np.asarray(layer.nonfinite).sum())
        if bad:
            found["nonfinite-activation", name] = f"{bad} NaN/Inf values"
        dead = [c for c, f in enumerate(layer.fraction_inputs_active) if f <= 0]
        kind = never_positive_kind(layer.site.zero_floor, bool(layer.site.grid))
        if dead and kind is not None:
            found[kind, name] = f"{len(dead)} of {layer.channels_total} channels never > 0"
        constant = [c for c in range(layer.channels_total)
                    if c not in dead and np.isfinite(layer.max[c]) and layer.max[c] == layer.min[c]]
        if constant:
            found["constant-channel", name] = f"{len(constant)} constant channel(s)"
        with np.errstate(invalid="ignore"):
            peak = float(np.nanmax(np.maximum(np.abs(layer.max), np.abs(layer.min)))) if layer.channels_total else 0.0
        if peak > explode:
            found["exploding-activation", name] = f"|activation| up to {peak:.3g}"
    modules = dict(model.named_modules())
    for name in selected:
        weights = filters_of(modules[name])
        if weights is None:
            continue
        bad = int((~torch.isfinite(weights)).sum())
        if bad:
            found["nonfinite-weight", name] = f"{bad} NaN/Inf weights"
        rows = weights.reshape(weights.shape[0], -1)
        flat = int(((rows.amax(dim=1) == rows.amin(dim=1)) & torch.isfinite(rows).all(dim=1)).sum())
        if flat:
            found["flat-filter", name] = f"{flat} constant filter(s)"
    return found


def alerts_diff(first: dict[tuple[str, str], str], second: dict[tuple[str, str], str]) -> AlertsDiff:
    def rows(mine: dict[tuple[str, str], str], theirs: dict[tuple[str, str], str]) -> tuple[AlertFound, ...]:
        return tuple(AlertFound(kind, layer, mine[kind, layer]) for kind, layer in mine if (kind, layer) not in theirs)

    return AlertsDiff(in_b_not_a=rows(second, first), in_a_not_b=rows(first, second), checked=ALERT_KINDS)
