"""Alerts: the conditions a reviewer must not miss, each with why it matters.

Thresholds are options with documented defaults (`AlertThresholds`). Every alert names its
layer and links to its section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reportgen.analyze import Analysis
from reportgen.report_model import Alert, LayerSection, ModelInfo

# One sentence per kind: why a reviewer should care. Shown next to each alert.
WHY = {
    "random-weights": "Random weights show no learned structure: filters look like noise and predictions mean nothing.",
    "nonfinite-activation": "NaN or Inf in activations poison every layer after them and the model's output.",
    "nonfinite-weight": "NaN or Inf in weights make every output that touches them NaN.",
    "dead-filter": "A filter that never fires on any input contributes nothing; many of them waste capacity or signal a training problem.",
    "flat-filter": "An all-zero or constant filter detects nothing: it was pruned, never trained, or collapsed.",
    "no-conv": "Without convolution layers there are no filters or feature maps to show; the report holds the summary only.",
    "summary-unavailable": "torchinfo could not walk the model, so output shapes and mult-adds are missing.",
}


@dataclass(frozen=True)
class AlertThresholds:
    """Defaults: a channel is dead if it is > 0 on at most `dead_fraction` of inputs (0 = never)."""

    dead_fraction: float = 0.0


def find_alerts(
    analysis: Analysis,
    sections: Sequence[LayerSection],
    model: ModelInfo,
    thresholds: AlertThresholds = AlertThresholds(),
) -> tuple[Alert, ...]:
    alerts: list[Alert] = []
    if model.random_weights:
        alerts.append(Alert("random-weights", None, "The model has random (untrained) weights.", None))
    if not analysis.selected:
        alerts.append(Alert("no-conv", None, "No convolution layer was found or selected.", None))
    if not analysis.summary.available:
        alerts.append(Alert("summary-unavailable", None, f"torchinfo failed: {analysis.summary.problem}", None))
    for section in sections:
        nonfinite = sum(section.stats.nonfinite)
        if nonfinite:
            channels = sum(1 for v in section.stats.nonfinite if v)
            alerts.append(Alert("nonfinite-activation", section.name,
                                f"{nonfinite} NaN/Inf activation values in {channels} channel(s).", section.anchor))
        dead = [i for i, f in enumerate(section.stats.fraction_inputs_active) if f <= thresholds.dead_fraction]
        if dead:
            alerts.append(Alert("dead-filter", section.name,
                                f"{len(dead)} of {section.channels_total} channels never active: {_list(dead)}.",
                                section.anchor))
    weights_by_layer = analysis.weights
    anchors = {section.name: section.anchor for section in sections}
    for name, weights in weights_by_layer.items():
        bad = int((~np.isfinite(weights.filters)).sum())
        if bad:
            alerts.append(Alert("nonfinite-weight", name, f"{bad} NaN/Inf weight values.", anchors.get(name)))
        flat = [i for i, f in enumerate(weights.filters.reshape(len(weights.filters), -1))
                if np.isfinite(f).all() and np.ptp(f) == 0]
        if flat:
            alerts.append(Alert("flat-filter", name,
                                f"{len(flat)} all-zero or constant filter(s): {_list(flat)}.", anchors.get(name)))
    return tuple(alerts)


def _list(indices: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")
