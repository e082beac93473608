"""Display decisions for the insight parts of the page (templates/insight*.html.jinja2).

Like `view.py`: every number is formatted and every CSS class chosen here; the templates only
loop and print. Everything returned is plain strings, lists and dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from reportgen.report_model import EncodedImage, GradCam, LayerSection, ReportModel, WeightStats
from reportgen.top_activations import CROP_LEGEND

THUMB_WIDTH = 96
STRIP_WIDTH = 260  # CSS px of a top-activation strip (k crops wide): crops shown at 2x
MAX_TOP_LINES = 8  # channels whose top inputs are listed in words under the strip
MAX_WRONG_SHOWN = 24
# Scores closer than this are one score (float32 maxima of the same values, computed in batches
# of different shapes, can differ in the last bits).
TIE_REL, TIE_ABS = 1e-6, 1e-9


def _number(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _image(image: EncodedImage | None, width: int | None = None) -> dict[str, Any] | None:
    """Natural size, or about `width` CSS px: small pictures scale up by a whole factor (crisp
    pixels), large ones scale down to it."""
    if image is None:
        return None
    natural = max(image.width, 1)
    shown = natural if width is None else (natural * max(1, width // natural) if natural < width else width)
    return {"src": image.data_uri, "width": shown, "height": max(1, round(image.height * shown / natural))}


def _bars(image: EncodedImage | None, width: int = 320, height: int = 32) -> dict[str, Any] | None:
    """The per-channel bars stretched to width x height CSS px (channels wide, whatever the count)."""
    if image is None:
        return None
    return {"src": image.data_uri, "width": width, "height": height}


def _init_line(weights: WeightStats) -> str:
    """What the layer's Kolmogorov-Smirnov test against each default init says, at its n."""
    test = weights.init
    if test is None:
        return "not tested: NaN/Inf weights" if weights.nonfinite else "not tested: not a torch.nn conv layer"
    distances = ", ".join(f"{_number(d.distance)} to {d.init}" for d in test.distances)
    sampled = f" (a seeded sample of the {weights.count:,})" if test.sample < weights.count else ""
    where = f"KS distance {distances}; 5 % critical value at n={test.sample:,}{sampled}: {_number(test.critical)}"
    if test.verdict == "differs":
        return (f"{where}: differs from each (a fresh layer with one of these inits is this far from it "
                "in fewer than 1 case in 20)")
    if test.verdict == "matches":
        return (f"{where}: matches {test.match}, as a fresh layer does (a trained layer "
                f"{_number(test.trained_closest)} from it would differ at this n)")
    return (f"{where}: cannot tell at n={test.sample:,} (trained layers were measured as close as "
            f"{_number(test.trained_closest)} to an init)")


def tie_note(scores: Sequence[float]) -> str:
    """Say when several of a channel's top-k scores (strongest first) are equal: their order
    then comes from the inputs' order, not from the model."""
    groups: list[list[float]] = []  # [score, count], equal scores are adjacent in rank order
    for score in scores:
        if groups and math.isclose(score, groups[-1][0], rel_tol=TIE_REL, abs_tol=TIE_ABS):
            groups[-1][1] += 1
        else:
            groups.append([score, 1])
    tied = [f"{int(n)} inputs at {_number(score)}" for score, n in groups if n > 1]
    return f"tied scores: {', '.join(tied)} — ranking among them is by input order" if tied else ""


def layer_view(section: LayerSection) -> dict[str, Any] | None:
    """The statistics block of one layer section, or None when there is nothing to show."""
    insight = section.insight
    if insight is None:
        return None
    weight_rows: list[tuple[str, str]] = []
    weights = insight.weights
    if weights is not None:
        weight_rows = [
            ("weights", f"{weights.count:,} values, shape [{', '.join(str(d) for d in weights.shape)}]"),
            ("norm / mean / std", f"{_number(weights.norm)} / {_number(weights.mean)} / {_number(weights.std)}"),
            ("min / max", f"{_number(weights.min)} / {_number(weights.max)}"),
            ("sparsity (exact 0)", _percent(weights.sparsity)),
            ("NaN/Inf", f"{weights.nonfinite:,}"),
            ("flat filters", ", ".join(str(i) for i in weights.flat_filters[:12]) or "none"),
            ("near-duplicate pairs", f"{weights.duplicate_pairs} (cosine >= {weights.duplicate_threshold:g})"
             + (": " + ", ".join(f"{p.a}≈{p.b}" for p in weights.duplicates[:6]) if weights.duplicates else "")),
            ("vs. default inits", _init_line(weights)),
        ]
    activity_rows = [
        ("dead channels" if section.site_zero_floor else "channels never > 0",
         f"{len(insight.dead_channels)} of {section.channels_total} ({_percent(insight.dead_fraction)})"),
        ("constant channels", f"{len(insight.constant_channels)}"),
        ("largest |activation|", _number(insight.max_abs_activation)),
        ("reaches the output", {True: "yes", False: "NO", None: "not checked"}[insight.reaches_output]),
    ]
    if insight.receptive_whole_input:
        activity_rows.append(("receptive field", "the whole input: attention over all tokens ran before this layer; "
                              "one cell per " + "x".join(str(v) for v in insight.stride) + " px patch"))
    elif insight.receptive_field:
        activity_rows.append(("receptive field",
                              "x".join(str(v) for v in insight.receptive_field) + " px, stride "
                              + "x".join(str(v) for v in insight.stride) + ", the first cell's window starts at ("
                              + ", ".join(str(v) for v in insight.first_pixel) + ")"
                              + (" in the padding" if min(insight.first_pixel) < 0 else "")))
    elif insight.geometry_unknown:
        activity_rows.append(("receptive field", f"unknown: {insight.geometry_unknown}"))
    top_lines = []
    for channel_top in insight.top_activations[:MAX_TOP_LINES]:
        entries = ", ".join(f"{name} ({_number(score)})" for name, score in zip(channel_top.names, channel_top.scores))
        ties = tie_note(channel_top.scores)
        top_lines.append(f"channel {channel_top.channel}: {entries}" + (f"; {ties}" if ties else ""))
    strip_channels = ", ".join(str(c) for c in insight.top_strip_channels)
    strip_ties = [f"channel {t.channel}: {note}" for t in insight.top_activations[:len(insight.top_strip_channels)]
                  if (note := tie_note(t.scores))] if insight.top_strip is not None else []
    return {
        "histogram": _image(insight.weight_histogram),
        "activity": _bars(insight.activity_chart),
        "activity_legend": (f"fraction of positions > 0 per channel (0..{section.channels_total - 1}, left to right; "
                            "red = dead)"),
        "weight_rows": weight_rows,
        "activity_rows": activity_rows,
        "strip": _image(insight.top_strip, STRIP_WIDTH),
        "strip_legend": (f"top-{len(insight.top_activations[0].inputs) if insight.top_activations else 0} inputs per "
                         f"channel (rows: channels {strip_channels}); {CROP_LEGEND}"
                         if insight.top_strip is not None else ""),
        "strip_ties": strip_ties,
        "top_lines": top_lines,
    }


def report_view(report: ReportModel) -> dict[str, Any] | None:
    """Grad-CAM, embedding and per-class blocks, or None when none exists."""
    insight = report.insight
    if insight is None or (insight.gradcam is None and insight.rollout is None and insight.embedding is None
                           and insight.per_class is None and not insight.notes):
        return None
    gradcam = _cam_view(insight.gradcam)
    rollout = _cam_view(insight.rollout)
    embedding = None
    if insight.embedding is not None:
        emb = insight.embedding
        variance = " and ".join(_percent(v) for v in emb.explained_variance)
        embedding = {
            "chart": _image(emb.chart),
            "caption": (f"PCA of the {emb.dimension}-dimensional {emb.source}: {len(emb.points):,} of "
                        f"{emb.total_inputs:,} inputs; the axes hold {variance} of the variance"
                        + (f"; coloured by {emb.colour_by}" if emb.colour_by else "")),
            "legend": [{"label": label, "style": f"background: {colour}"} for label, colour in emb.legend],
            "outliers": [p.input_name for p in emb.points if p.outlier],
        }
    per_class = None
    if insight.per_class is not None:
        pc = insight.per_class
        wrong_total = pc.labelled - pc.correct
        per_class = {
            "summary": f"accuracy {_percent(pc.accuracy)}: {pc.correct:,} of {pc.labelled:,} labelled inputs correct",
            "chart": _image(pc.chart),
            "classes": [{"label": c.label, "count": f"{c.count:,}", "accuracy": _percent(c.accuracy),
                         "css": "" if c.accuracy >= 0.5 else "low"} for c in pc.classes],
            "wrong": [
                {"name": w.input_name, "true": w.true_label,
                 "top": ", ".join(f"{t.label} {_percent(t.probability)}" for t in w.top)}
                for w in pc.wrong[:MAX_WRONG_SHOWN]
            ],
            "wrong_note": (f"{wrong_total:,} misclassified; the first {MAX_WRONG_SHOWN} are listed."
                           if wrong_total > MAX_WRONG_SHOWN else
                           (f"{wrong_total:,} misclassified." if wrong_total else "No input was misclassified.")),
        }
    cams = [{**view, "id": anchor, "title": title} for anchor, title, view in
            (("gradcam", "Grad-CAM", gradcam), ("rollout", "Attention rollout", rollout)) if view is not None]
    return {"gradcam": gradcam, "rollout": rollout, "cams": cams, "embedding": embedding, "per_class": per_class,
            "notes": list(insight.notes)}


def _cam_view(cam: GradCam | None) -> dict[str, Any] | None:
    """Grad-CAM or attention rollout overlays, one figure per map."""
    if cam is None:
        return None

    def caption(kind: str, label: str) -> str:
        return "attention rollout" if kind == "rollout" else f"{kind}: {label}"

    def alt(name: str, kind: str, label: str) -> str:
        return f"attention rollout of {name}" if kind == "rollout" else f"Grad-CAM of {name} for {kind} class {label}"

    return {
        "layer": cam.layer,
        "href": f"#{cam.anchor}" if cam.anchor else "",
        "note": cam.note,
        "inputs": [
            {"name": entry.input_name,
             "maps": [{"image": _image(m.overlay, THUMB_WIDTH), "caption": caption(m.kind, m.target_label),
                       "alt": alt(entry.input_name, m.kind, m.target_label)} for m in entry.maps]}
            for entry in cam.inputs
        ],
    }


def nav_entries(report: ReportModel) -> list[dict[str, str]]:
    insight = report.insight
    entries = []
    if insight is not None:
        if insight.gradcam is not None:
            entries.append({"href": "#gradcam", "label": "Grad-CAM"})
        if insight.rollout is not None:
            entries.append({"href": "#rollout", "label": "Attention rollout"})
        if insight.embedding is not None:
            entries.append({"href": "#embedding", "label": "Embedding"})
        if insight.per_class is not None:
            entries.append({"href": "#per-class", "label": "Per class"})
    return entries
