"""Display decisions for the impact section: the `ImpactReport` -> plain strings for the template.

Like `view.py`: numbers are formatted and CSS classes chosen here; `impact.html.jinja2` only
loops and prints.
"""

from __future__ import annotations

import math
from typing import Any

from reportgen.image_view import image_view
from reportgen.impact_model import (
    AblationLayerReport,
    AblationReport,
    FilterImpact,
    ImpactReport,
    MisfiringReport,
    ProbeReport,
)
from reportgen.probes import STABLE_CORRELATION

TILE_DISPLAY_WIDTH = 40  # CSS px for one filter tile (scaled up by whole factors)
THUMB_WIDTH = 64
STRIP_DISPLAY_WIDTH = 240

ABLATION_METHOD = (
    "Each filter's output channel is set to zero, one at a time, and every input goes through the "
    "rest of the network again; Δ is the change against the unablated model (Δ loss: mean "
    "cross-entropy, Δ p: mean probability of the true class, Δ acc: accuracy). Filters are ranked by "
    "Δ loss. Ablations run batched: the batch is expanded at the layer (or the block around it), so "
    "only that part of the network and what follows it is recomputed."
)
MISFIRING_METHOD = (
    "A filter misfires when its mean activation is much higher on the misclassified inputs than on "
    "the correct ones: d = (mean on wrong - mean on correct) / pooled standard deviation."
)
PROBE_METHOD = (
    "Each shown input is perturbed and run again. Per filter, the perturbed feature map is compared "
    "with the clean one: r = correlation over positions (1 = same pattern), rel. L2 = "
    "||perturbed - clean|| / ||clean||. A filter counts as stable when its mean r over the inputs is "
    f"at least {STABLE_CORRELATION:g}. Strips show the clean and perturbed maps of the most and the "
    "least stable filter of each layer for that input, each pair on one shared min-max scale (viridis)."
)


def signed(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:+.{digits}f}"
    return "±0" if float(text) == 0 else text


def fixed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def share(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value * 100:.1f}%"


def _tile(image: Any, alt: str, width: int = TILE_DISPLAY_WIDTH) -> dict[str, Any] | None:
    return {**image_view(image, width), "alt": alt} if image is not None else None


def _delta_css(value: float, harmful_if_positive: bool = True) -> str:
    """Coloured only when the shown (3-decimal) value is not zero."""
    if not math.isfinite(value):
        return "delta-bad"
    if abs(value) < 0.0005:
        return "delta-none"
    return "delta-bad" if (value > 0) == harmful_if_positive else "delta-good"


def _filter_row(layer: AblationLayerReport, item: FilterImpact) -> dict[str, Any]:
    carries = ", ".join(f"{c.label} ({signed(c.delta_probability)})" for c in item.classes
                        if c.delta_probability <= -0.0005)
    return {
        "rank": str(item.rank),
        "channel": str(item.channel),
        "tile": _tile(item.tile, f"filter {item.channel} of {layer.name}"),
        "delta_loss": signed(item.delta_loss),
        "delta_probability": signed(item.delta_probability),
        "delta_accuracy": signed(item.delta_accuracy),
        "css": _delta_css(item.delta_loss),
        "classes": carries,
    }


def ablation_view(report: AblationReport) -> dict[str, Any]:
    baseline = [
        ("Inputs", f"{report.inputs:,}" + ("" if report.targets == "labels" else " (targets: the model's own predictions)")),
        ("Accuracy", share(report.baseline_accuracy)),
        ("Mean true-class probability", fixed(report.baseline_probability)),
        ("Mean loss (cross-entropy)", fixed(report.baseline_loss)),
        ("Forward rows run", f"{report.forward_rows:,}"),
    ]
    layers = []
    for position, layer in enumerate(report.layers):
        biggest = layer.top[0] if layer.top else None
        layers.append({
            "name": layer.name,
            "href": f"#{layer.anchor}" if layer.anchor else "",
            "open": position < 4,
            "facts": (f"{len(layer.channels)} of {layer.channels_total} channels ablated"
                      + (f" · largest Δ loss {signed(biggest.delta_loss)} (channel {biggest.channel})" if biggest else "")
                      + f" · batch expanded at {layer.expanded_at or 'the model input'}"),
            "tables": [
                {"caption": caption, "rows": [_filter_row(layer, item) for item in items]}
                for caption, items in (("Most impact", layer.top), ("Least impact", layer.bottom))
                if items
            ],
        })
    return {
        "coverage": report.coverage,
        "method": ABLATION_METHOD,
        "baseline": baseline,
        "layers": layers,
        "skipped": [f"{s.name}: {s.reason}" for s in report.skipped],
    }


def misfiring_view(report: MisfiringReport) -> dict[str, Any]:
    channels = []
    for item in report.channels:
        channels.append({
            "layer": item.layer,
            "href": f"#{item.anchor}" if item.anchor else "",
            "channel": str(item.channel),
            "tile": _tile(item.tile, f"filter {item.channel} of {item.layer}"),
            "effect": fixed(item.effect, 2),
            "means": f"mean {item.mean_wrong:.4g} on wrong vs {item.mean_correct:.4g} on correct",
            "examples": [
                {
                    "input": ex.input,
                    "thumb": _tile(ex.thumbnail, f"input {ex.input}", THUMB_WIDTH),
                    "caption": f"true {ex.true_label}, predicted {ex.predicted_label}; activation {ex.activation:.4g}",
                }
                for ex in item.examples
            ],
        })
    return {
        "method": MISFIRING_METHOD,
        "summary": (f"{report.correct:,} labelled inputs classified correctly, {report.wrong:,} wrongly; a filter is "
                    f"flagged at d ≥ {report.threshold:g} with at least {report.min_wrong} misclassified inputs."),
        "note": report.note,
        "channels": channels,
    }


def probe_view(report: ProbeReport) -> dict[str, Any]:
    layers = [
        {
            "name": layer.name,
            "href": f"#{layer.anchor}" if layer.anchor else "",
            "median": fixed(layer.median_correlation),
            "stable": share(layer.stable_fraction),
            "rel_l2": fixed(layer.mean_relative_l2),
            "most": "--" if layer.most_stable is None else f"{layer.most_stable} (r {fixed(layer.correlation[layer.most_stable])})",
            "least": "--" if layer.least_stable is None else f"{layer.least_stable} (r {fixed(layer.correlation[layer.least_stable])})",
            "css": "delta-bad" if math.isfinite(layer.stable_fraction) and layer.stable_fraction < 0.5 else "",
        }
        for layer in report.layers
    ]
    outcomes = []
    for item in report.outcomes:
        if item.flipped is None:
            verdict, css = "", ""
        elif item.flipped:
            verdict, css = f"prediction flipped: {item.clean_top} → {item.perturbed_top}", "wrong"
        else:
            verdict, css = f"prediction kept: {item.clean_top}", "correct"
        target = ("true class" if item.target_is_label else "predicted class") + f" {item.target}"
        probability = (f"p({target}) {fixed(item.clean_probability)} → {fixed(item.perturbed_probability)}"
                       if math.isfinite(item.clean_probability) else "")
        outcomes.append({
            "input": item.input,
            "verdict": verdict,
            "css": css,
            "probability": probability,
            "clean": _tile(item.clean_thumbnail, f"input {item.input}", THUMB_WIDTH),
            "perturbed": _tile(item.perturbed_thumbnail, f"input {item.input}, perturbed ({report.kind})", THUMB_WIDTH),
            "rows": [
                {
                    "layer": row.layer,
                    "href": f"#{row.anchor}" if row.anchor else "",
                    "image": _tile(row.image, f"{row.layer}: clean and perturbed maps of channels "
                                               f"{row.most_stable} and {row.least_stable}", STRIP_DISPLAY_WIDTH),
                    "caption": (f"most stable: channel {row.most_stable} (r {fixed(row.most_correlation)}); "
                                f"least stable: channel {row.least_stable} (r {fixed(row.least_correlation)})"),
                }
                for row in item.strip
            ],
        })
    flips = (f"{report.flips} of {report.inputs_probed} predictions flipped"
             if any(o.flipped is not None for o in report.outcomes) else "")
    return {
        "anchor": f"probe-{report.kind}",
        "kind": report.kind,
        "description": report.description,
        "note": report.note,
        "flips": flips,
        "layers": layers,
        "outcomes": [o for o in outcomes if o["rows"] or o["perturbed"]],
        "skipped": [f"{s.name}: {s.reason}" for s in report.skipped],
    }


def impact_page(impact: ImpactReport | None) -> dict[str, Any] | None:
    """The impact section for the template, or None when no impact analysis ran."""
    if impact is None:
        return None
    return {
        "notes": list(impact.notes),
        "ablation": ablation_view(impact.ablation) if impact.ablation is not None else None,
        "misfiring": misfiring_view(impact.misfiring) if impact.misfiring is not None else None,
        "probes": [probe_view(p) for p in impact.probes],
        "probe_method": PROBE_METHOD,
    }
