"""Every display decision of the compare page: numbers formatted, CSS classes chosen, lists cut.
The template (`compare.html.jinja2`) only loops and prints what `page` returns."""

from __future__ import annotations

from typing import Any

from reportgen.compare_model import ChannelRow, CompareModel, FilterRow, FlipCard, RunSection
from reportgen.encoded_image import EncodedImage
from reportgen.image_view import image_view
from reportgen.view import count, number, percent

WEIGHT_ROWS = 5  # most-changed filters listed per layer
LOW_CORRELATION = 0.5  # a channel below this correlation is highlighted (repurposed or rescaled)
SAME = 0.999  # at or above: the channel is said to be unchanged


def _percent(value: float | None) -> str:
    return "n/a" if value is None else percent(value)


def _signed_points(a: float, b: float) -> str:
    return f"{(b - a) * 100:+.1f} pts"


def _cka_css(value: float | None) -> str:
    if value is None:
        return "cka-na"
    return "cka-low" if value < 0.5 else "cka-mid" if value < 0.9 else "cka-high"


def _channels(found: tuple[int, ...], limit: int = 16) -> str:
    if not found:
        return "none"
    shown = ", ".join(str(c) for c in found[:limit])
    return shown + (f" and {len(found) - limit} more" if len(found) > limit else "")


def _chart(image: EncodedImage | None) -> dict[str, Any] | None:
    """An SVG chart at its own size (it is drawn for it; scaling would blur its text)."""
    return image_view(image, image.width) if image is not None else None


def _least(rows: tuple[ChannelRow, ...]) -> str:
    """The least correlated channels, or one phrase when even the lowest is (almost) 1."""
    if not rows:
        return "n/a (every channel constant in A or B)"
    if all(r.correlation is not None and r.correlation >= SAME for r in rows):
        return f"every channel r ≥ {SAME}"
    return ", ".join(f"{r.channel} (r = {number(r.correlation)})" for r in rows)


def _most_changed(rows: tuple[FilterRow, ...]) -> str:
    moved = [r for r in rows[:WEIGHT_ROWS] if r.relative_l2 != 0]
    if not moved:
        return "unchanged"
    return ", ".join(f"{r.channel} ({number(r.relative_l2)})" for r in moved)


def _flip(card: FlipCard) -> dict[str, Any]:
    def tops(entries: Any) -> list[dict[str, str]]:
        return [{"name": e.name, "pct": percent(e.probability), "width": f"{max(e.probability, 0) * 100:.0f}%",
                 "css": "cls-true" if card.label is not None and e.name == card.label else ""} for e in entries]

    return {"name": card.name, "index": str(card.index), "label": card.label or "unknown",
            "thumbnail": image_view(card.thumbnail, 96) if card.thumbnail is not None else None,
            "cams": [{"image": image_view(image, 96), "alt": f"Grad-CAM of {side}'s top-1 class on {card.name}",
                      "caption": f"Grad-CAM {side}"}
                     for side, image in (("A", card.cam_a), ("B", card.cam_b)) if image is not None],
            "top_a": tops(card.top_a), "top_b": tops(card.top_b),
            "verdict": _verdict(card)}


def _verdict(card: FlipCard) -> str:
    if card.label is None or not card.top_a or not card.top_b:
        return "top-1 changed"
    right_a, right_b = card.top_a[0].name == card.label, card.top_b[0].name == card.label
    if right_a and not right_b:
        return "negative flip: right in A, wrong in B"
    if right_b and not right_a:
        return "positive flip: wrong in A, right in B"
    return "wrong in both, differently"


def _run(found: RunSection) -> dict[str, Any]:
    return {
        "checkpoints": list(found.checkpoints),
        "settle": _chart(found.settle_chart),
        "settle_lines": _chart(found.settle_lines),
        "steps": _chart(found.step_chart),
        "strips": [{"caption": f"{s.layer}, channel {s.channel}: the filter at each checkpoint, left to right "
                               f"(one scale, ±{s.scale:.3g})", "image": image_view(s.image, 60 * len(found.checkpoints))}
                   for s in found.strips],
        "rows": [{"layer": layer,
                  "values": [number(row[j]) for row in found.cka_to_last]}
                 for j, layer in enumerate(found.layers)],
    }


def page(model: CompareModel) -> dict[str, Any]:
    run = model.run
    names = [c.name for c in model.checkpoints]
    first, last = names[0], names[-1]
    cka = model.cka
    sizes = ", ".join(f"{batches} of {size}" for size, batches in cka.batch_sizes) or "none"
    overview = [
        ("Compared", " → ".join(names) + f" (A: {first}, B: {last})" if len(names) > 2 else f"A: {first} · B: {last}"),
        ("Inputs", f"{count(run.inputs)}, batch size {run.batch_size}"),
        ("Device", run.device),
        ("Date", run.date),
        ("Seed", str(run.seed)),
        ("reportgen", run.reportgen_version),
        ("torch", run.torch_version),
    ]
    if run.command:
        overview.append(("Command", run.command))
    checkpoints = [{"label": "A" if i == 0 else "B" if i == len(names) - 1 else str(i), "name": c.name,
                    "source": c.source + (f" — {c.file}" if c.file else ""), "type": c.type,
                    "params": count(c.params), "sha256": c.sha256 or "--"} for i, c in enumerate(model.checkpoints)]
    headline = []
    defined = [layer.value for layer in cka.layers if layer.value is not None]
    if defined:
        lowest = min((layer for layer in cka.layers if layer.value is not None), key=lambda layer: layer.value)  # type: ignore[arg-type,return-value]
        headline.append(f"lowest same-layer CKA {number(lowest.value)} at {lowest.name}")
    predictions = model.predictions
    if predictions is not None:
        headline.append(f"top-1 agreement {_percent(predictions.agreement)} ({count(predictions.flips_total)} flips)")
        if predictions.negative_flip_rate is not None:
            headline.append(f"negative flip rate {_percent(predictions.negative_flip_rate)}")
    weights = model.weights
    if weights is not None and weights.layers:
        moved = max(weights.layers, key=lambda layer: layer.relative_l2 if layer.relative_l2 is not None else -1.0)
        headline.append(f"largest weight change {number(moved.relative_l2)} (relative L2) at {moved.name}")
    nav = [("#cka", "Representation similarity"), ("#channels", "Channels"), ("#weights", "Weights"),
           ("#predictions", "Predictions"), ("#alerts", "Alerts diff")]
    if model.training_run is not None:
        nav.append(("#run", "Training run"))
    return {
        "title": run.title,
        "nav": [{"href": href, "label": label} for href, label in nav],
        "headline": headline,
        "overview": overview,
        "checkpoints": checkpoints,
        "notes": list(model.notes) + ([model.budget] if model.budget else []),
        "cka": {
            "about": (f"{cka.estimator}. Features: each layer's observed output, flattened per input. "
                      f"{count(cka.inputs_used)} inputs in batches of {run.batch_size} ({sizes})"
                      + (f"; {count(cka.inputs_skipped)} inputs in a batch under 4 left out" if cka.inputs_skipped
                         else "") + "."),
            "line": _chart(cka.line),
            "heatmap": _chart(cka.heatmap),
            "rows": [{"name": layer.name, "tap": layer.tap, "value": number(layer.value), "css": _cka_css(layer.value)}
                     for layer in cka.layers],
            "unmatched": not cka.layers,
        },
        "channels": [{
            "name": layer.name,
            "channels": count(len(layer.channels)),
            "mean": number(layer.mean_correlation),
            "least": _least(layer.least_correlated),
            "least_css": "low" if any(r.correlation is not None and r.correlation < LOW_CORRELATION
                                      for r in layer.least_correlated) else "",
            "dead": _channels(layer.newly_dead),
            "revived": _channels(layer.revived),
            "jaccard": number(layer.mean_jaccard) if layer.mean_jaccard is not None else "n/a",
        } for layer in model.channels],
        "top_sets": [{
            "caption": f"{layer.name}, channel {t.channel}: top-{layer.top_k} overlap {number(t.jaccard)}, "
                       f"r = {number(t.correlation)}",
            "a": image_view(t.strip_a, 2 * t.strip_a.width), "b": image_view(t.strip_b, 2 * t.strip_b.width),
            "names_a": ", ".join(str(i) for i in t.inputs_a), "names_b": ", ".join(str(i) for i in t.inputs_b),
        } for layer in model.channels for t in layer.top_sets],
        "top_k": str(max((layer.top_k for layer in model.channels), default=0)),
        "weights": None if weights is None else {
            "layers": [{"name": layer.name, "shape": "x".join(str(d) for d in layer.shape),
                        "relative_l2": number(layer.relative_l2), "cosine": number(layer.cosine),
                        "filters": _most_changed(layer.filters)}
                       for layer in weights.layers],
            "triples": [{"caption": f"{t.layer}, filter {t.channel}: relative L2 {number(t.relative_l2)}, cosine "
                                    f"{number(t.cosine)}; scale ±{t.scale:.3g}",
                         "image": image_view(t.image, 240)} for t in weights.most_changed],
            "unmatched": ", ".join(weights.unmatched),
        },
        "predictions": None if predictions is None else {
            "summary": [
                ("Top-1 agreement", _percent(predictions.agreement)),
                ("Flips (top-1 changed)", f"{count(predictions.flips_total)} of {count(predictions.inputs)}"),
                *([("Accuracy A → B", f"{_percent(predictions.accuracy_a)} → {_percent(predictions.accuracy_b)} "
                                      f"({count(predictions.labelled)} labelled inputs)"),
                   ("Negative flip rate", f"{_percent(predictions.negative_flip_rate)} (right in A, wrong in B)"),
                   ("Positive flip rate", f"{_percent(predictions.positive_flip_rate)} (wrong in A, right in B)")]
                  if predictions.labelled else [("Labels", "none: accuracy and flip direction need true classes "
                                                           "(--dataset or --label-pattern)")]),
            ],
            "flips": [_flip(card) for card in predictions.flips],
            "more": (f"{count(predictions.flips_total - len(predictions.flips))} more flips are counted but not drawn."
                     if predictions.flips_total > len(predictions.flips) else ""),
            "per_class": [{"name": c.name, "inputs": count(c.inputs), "a": percent(c.accuracy_a),
                           "b": percent(c.accuracy_b), "change": _signed_points(c.accuracy_a, c.accuracy_b),
                           "css": "low" if c.accuracy_b < c.accuracy_a else ""} for c in predictions.per_class],
        },
        "run": _run(model.training_run) if model.training_run is not None else None,
        "alerts": None if model.alerts is None else {
            "checked": ", ".join(model.alerts.checked),
            "groups": [{"title": title, "css": css, "empty": empty,
                        "rows": [{"kind": a.kind, "layer": a.layer, "detail": a.detail, "why": a.why} for a in items]}
                       for title, css, empty, items in (
                           (f"In B ({last}), not in A ({first})", "alert-critical", "none", model.alerts.in_b_not_a),
                           (f"In A ({first}), not in B ({last})", "", "none", model.alerts.in_a_not_b))],
        },
    }


def render_html(model: CompareModel) -> str:
    """The compare page, through the one Jinja2 environment (assemble.py)."""
    from reportgen.assemble import environment

    return environment().get_template("compare.html.jinja2").render(page=page(model))
