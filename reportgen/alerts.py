"""Alerts: the conditions a reviewer must not miss, each with why it matters.

Thresholds are options with documented defaults (`AlertThresholds`, CLI `--dead-threshold`,
`--duplicate-threshold`, `--explode-threshold`). Every alert names its layer and links to its
section. Weight alerts come from the FULL weight tensors (`weight_stats`), not only the filters
drawn; activation alerts from statistics over every input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reportgen.report_model import Alert, DuplicatePair, LayerSection, ModelInfo, WeightStats, never_positive_kind

if TYPE_CHECKING:
    from reportgen.analysis import Analysis

# One sentence per kind: why a reviewer should care. Shown next to each alert.
WHY = {
    "random-weights": "Random weights show no learned structure: filters look like noise and predictions mean nothing.",
    "nonfinite-activation": "NaN or Inf in activations poison every layer after them and the model's output.",
    "nonfinite-weight": "NaN or Inf in weights make every output that touches them NaN.",
    "dead-filter": "A channel whose ReLU never fires outputs zero on every input seen and contributes nothing there; many of them waste capacity or signal a training problem.",
    "never-positive": "No ReLU-like activation acts where these channels are observed, so they are not silent: they pass their non-positive values on. This is a sign pattern, not dead filters; it matters where the next layer keeps only positive values.",
    "flat-filter": "An all-zero or constant filter detects nothing: it was pruned, never trained, or collapsed.",
    "duplicate-filter": "Near-duplicate filters compute the same feature twice: wasted capacity that pruning could remove, or a sign of collapsed training.",
    "constant-channel": "A channel with the same value on every input and position seen is saturated or stuck: it carries no information about those inputs.",
    "exploding-activation": "Huge activations overflow in half precision and make training unstable; they usually mean missing normalisation or a bad weight scale.",
    "unreachable-layer": "A layer whose output never reaches the model's output costs compute but cannot change any prediction.",
    "no-conv": "Without convolution layers there are no filters or feature maps to show; the report holds the summary only.",
    "summary-unavailable": "torchinfo could not walk the model, so output shapes and mult-adds are missing.",
}


FEW_INPUTS = 10  # a dead-channel verdict on fewer inputs says it is weak evidence


@dataclass(frozen=True)
class AlertThresholds:
    """When an alert fires. Defaults:

    - `dead_fraction` 0.0: a channel is dead when it is > 0 on at most this fraction of inputs
      (0 = on none of them). `--dead-threshold`.
    - `duplicate_cosine` 0.99: two filters of one layer (and group) are near-duplicates when the
      cosine similarity of their flattened weights is at least this. `--duplicate-threshold`.
    - `explode` 1e4: activations are exploding when a channel's largest magnitude,
      max(|min|, |max|), exceeds this. `--explode-threshold`.
    - `untrained_check` True: flag a model whose conv weights, pooled, are indistinguishable from
      a default initialisation (Kolmogorov-Smirnov, see `weight_stats.untrained_test`).
    """

    dead_fraction: float = 0.0
    duplicate_cosine: float = 0.99
    explode: float = 1e4
    untrained_check: bool = True


# What the pooled test rests on, as measured by benchmarks/init_test_rates.py (numbers in
# benchmarks/README.md); rerun it and update this line when weight_stats.untrained_test changes.
UNTRAINED_RATES = ("Measured: this test flagged 86 of 86 fresh inits (10 architectures) and none of 8 trained "
                   "models, but also a small CNN after only 10 training steps.")


def find_alerts(
    analysis: Analysis,
    sections: Sequence[LayerSection],
    model: ModelInfo,
    thresholds: AlertThresholds = AlertThresholds(),
) -> tuple[Alert, ...]:
    alerts: list[Alert] = []
    insight = getattr(analysis, "insight", None)
    stats: dict[str, WeightStats] = dict(insight.weight_stats) if insight is not None else {}
    init_test = insight.init_test if insight is not None else None
    if model.random_weights:
        how = f" ({model.init})" if model.init else ""
        alerts.append(Alert("random-weights", None, f"The model has random (untrained) weights{how}.", None))
    elif thresholds.untrained_check and init_test is not None and init_test.match:
        alerts.append(Alert(
            "random-weights", None,
            f"The weights of all {init_test.layers} conv layer(s), pooled ({init_test.sample:,} weights), are "
            f"statistically indistinguishable from a fresh initialisation ({init_test.match}; Kolmogorov-Smirnov "
            f"distance {init_test.distance:.3g} < {init_test.critical:.3g}): the model looks untrained. "
            f"{UNTRAINED_RATES}", None))
    if not analysis.selected:
        alerts.append(Alert("no-conv", None, "No convolution layer was found or selected.", None))
    if not analysis.summary.available:
        alerts.append(Alert("summary-unavailable", None, f"torchinfo failed: {analysis.summary.problem}", None))
    for section in sections:
        alerts.extend(_activation_alerts(section, thresholds))
    anchors = {section.name: section.anchor for section in sections}
    for name, weights in analysis.weights.items():
        full = stats.get(name)
        alerts.extend(_weight_alerts(name, anchors.get(name), full, weights.filters))
    return tuple(alerts)


def _activation_alerts(section: LayerSection, thresholds: AlertThresholds) -> list[Alert]:
    alerts = []
    total = section.channels_total
    nonfinite = sum(section.stats.nonfinite)
    seen = _inputs_seen(section)
    where = site_phrase(section.site)
    if nonfinite:
        channels = sum(1 for v in section.stats.nonfinite if v)
        alerts.append(Alert("nonfinite-activation", section.name,
                            f"{nonfinite} NaN/Inf activation values in {channels} channel(s) {where}, "
                            f"{seen}.", section.anchor))
    insight = section.insight
    dead = list(insight.dead_channels) if insight is not None else [
        i for i, f in enumerate(section.stats.fraction_inputs_active) if f <= thresholds.dead_fraction]
    kind = never_positive_kind(section.site_zero_floor, section.token_layer)
    if dead and kind is not None:
        share = len(dead) / total if total else 0.0
        count = section.stats.inputs
        core = (f"never > 0 {where} " + (f"on the {count} input" if count == 1 else f"on any of the {count} inputs")
                if thresholds.dead_fraction == 0
                else f"> 0 {where} on at most {thresholds.dead_fraction:.0%} of the {count} inputs")
        consequence = ("so they output 0 there" if section.site_zero_floor
                       else "no ReLU acts here: they still pass non-positive values on")
        weak = (f" Only {count} input{'s' if count != 1 else ''}: weak evidence, a channel silent on "
                "these may fire on others." if 0 < count < FEW_INPUTS else "")
        alerts.append(Alert(kind, section.name,
                            f"{len(dead)} of {total} channels ({share:.1%}) {core} ({consequence}): {_list(dead)}."
                            f"{weak}", section.anchor))
    if insight is None:
        return alerts
    if insight.constant_channels:
        alerts.append(Alert("constant-channel", section.name,
                            f"{len(insight.constant_channels)} channel(s) hold one constant value at every "
                            f"position {where}, {seen}: {_list(insight.constant_channels)}.", section.anchor))
    if insight.max_abs_activation is not None and insight.max_abs_activation > thresholds.explode:
        alerts.append(Alert("exploding-activation", section.name,
                            f"activations reach {insight.max_abs_activation:.3g} in absolute value {where}, "
                            f"{seen} (threshold {thresholds.explode:.3g}).", section.anchor))
    if insight.reaches_output is False:
        alerts.append(Alert("unreachable-layer", section.name,
                            "its output has no path to the model's output (checked on the autograd graph).",
                            section.anchor))
    return alerts


def _weight_alerts(name: str, anchor: str | None, full: WeightStats | None, shown: np.ndarray) -> list[Alert]:
    alerts = []
    duplicates: tuple[DuplicatePair, ...] = ()
    if full is None:  # no full statistics: judge the filters that are drawn
        bad = int((~np.isfinite(shown)).sum())
        flat = [i for i, f in enumerate(shown.reshape(len(shown), -1)) if np.isfinite(f).all() and np.ptp(f) == 0]
        pairs_total, threshold = 0, 0.0
    else:
        bad = full.nonfinite
        flat = list(full.flat_filters)
        duplicates, pairs_total, threshold = full.duplicates, full.duplicate_pairs, full.duplicate_threshold
    if bad:  # which filters: `weights.filters.nonfinite` in the layer's insight
        alerts.append(Alert("nonfinite-weight", name, f"{bad} NaN/Inf weight values.", anchor))
    if flat:
        alerts.append(Alert("flat-filter", name, f"{len(flat)} all-zero or constant filter(s): {_list(flat)}.", anchor))
    if pairs_total:
        shown_pairs = ", ".join(f"{p.a} ≈ {p.b} (cos {p.cosine:.4f})" for p in duplicates[:6])
        more = f" and {pairs_total - min(len(duplicates), 6)} more" if pairs_total > min(len(duplicates), 6) else ""
        alerts.append(Alert("duplicate-filter", name,
                            f"{pairs_total} pair(s) of near-duplicate filters (cosine >= {threshold:g}): "
                            f"{shown_pairs}{more}.", anchor))
    return alerts


def site_phrase(site: str) -> str:
    """Where a layer was observed, as a phrase: "after layer1.0.bn1 (BatchNorm2d) → ..." or "at
    the raw conv output (...)"."""
    if not site:
        return "at the layer output"
    return site if site.startswith("after ") else f"at {site}"


def _inputs_seen(section: LayerSection) -> str:
    count = section.stats.inputs
    return "on the 1 input seen" if count == 1 else f"on all {count} inputs seen"


def _list(indices: Sequence[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")
