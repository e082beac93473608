"""Every display decision, made in Python: the report model -> strings and CSS classes.

Templates only loop and print what this module produces (coverage.py's rule). Numbers are
formatted here, lists are sorted here, and anything that reaches HTML is a plain string that
Jinja2 autoescapes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reportgen.alerts import WHY, site_phrase
from reportgen.image_view import image_view
from reportgen.impact_view import impact_page
from reportgen.insight_view import layer_view, nav_entries, report_view
from reportgen.report_model import (
    DenseInput,
    DenseItem,
    DenseOutputs,
    LayerSection,
    ModelInfo,
    Prediction,
    ReportModel,
    TileGrid,
    TokenPictures,
    ZoomMap,
)

THUMB_DISPLAY_WIDTH = 96
TOKEN_DISPLAY_WIDTH = 128  # CSS px a token picture is scaled up to (by whole factors)
OPEN_SECTIONS = 4  # the first few layer sections start expanded
SUMMARY_LEGEND = ("Σ: a container's parameters and mult-adds summed over the layers inside it (torchinfo "
                  "prints -- there); the totals count every layer once.")


def _summed(value: int, container: bool) -> str:
    """A summary cell: "--" for 0, a container's sum marked with Σ (see SUMMARY_LEGEND)."""
    if not value:
        return "--"
    return f"Σ {count(value)}" if container else count(value)


def count(value: int) -> str:
    return f"{value:,}"


def megabytes(value: float) -> str:
    return f"{value:,.2f} MB"


def shape(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]" if dims else "--"


def kernel(dims: Sequence[int]) -> str:
    return "x".join(str(d) for d in dims) if dims else "--"


def percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def compact(value: float | None) -> float | None:
    """4 significant digits for numbers the page's script shows (the JSON export keeps all)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def byte_size(value: int) -> str:
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.0f} kB"


def channel_stats_json(section: LayerSection) -> str:
    """The shown channels' statistics (over all inputs) for the tile zoom, as compact JSON."""
    stats = section.stats
    shown = [c for c in section.channels_shown if 0 <= c < len(stats.mean)]
    data = {
        "channels": shown,
        "mean": [compact(stats.mean[c]) for c in shown],
        "max": [compact(stats.max[c]) for c in shown],
        "active": [compact(stats.fraction_active[c]) for c in shown],
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _hidden_inputs(hidden: int) -> str:
    """The sentence for inputs drawn nowhere: no thumbnail and no feature maps."""
    if not hidden:
        return ""
    verb = "input contributes" if hidden == 1 else "inputs contribute"
    return (f"{count(hidden)} more {verb} to the statistics but {'is' if hidden == 1 else 'are'} drawn nowhere "
            "(no thumbnail, no feature maps).")


# What the zoom says a tile's colours mean, by the grid's colormap (None: RGB first-layer filters).
# Feature maps are always viridis, per-filter kernels gray, the shared filter scale RdBu_r.
ZOOM_SCALES: dict[str | None, str] = {
    "viridis": "viridis: this tile's min (dark) to its max (bright)",
    "gray": "gray: this filter's min (black) to its max (white), mean over input channels",
    "RdBu_r": "RdBu_r: one symmetric scale for the layer, min (blue) to 0 (white) to max (red)",
    None: "RGB: this filter's min (black) to its max (white) over its 3 input channels",
}


def grid_view(grid: TileGrid, alt: str, heading: str, unit: str = "channel", *, zoom_key: str = "",
              resolution: str = "") -> dict[str, Any]:
    """A tile grid for the template; `meta_json` carries what the tile zoom shows, formatted:
    `heading` (layer and input), the tile `unit` ("channel"/"filter"), each tile's min and max
    (4 significant digits, "n/a" when not finite), and the colour scale (its words, and which
    colour bar of the page's dialog goes with it)."""
    meta = {
        "columns": grid.columns,
        "rows": grid.rows,
        "tileWidth": grid.tile_width,
        "tileHeight": grid.tile_height,
        "padding": grid.padding,
        "channels": list(grid.channels),
        # one space-separated string each: a list of strings costs two escaped quotes a tile
        "minText": " ".join(number(v) for v in grid.tile_min),
        "maxText": " ".join(number(v) for v in grid.tile_max),
        "heading": heading,
        "unit": unit,
        "colormap": grid.colormap or "",
        "scale": ZOOM_SCALES.get(grid.colormap, ""),
        "zoomKey": zoom_key,  # a larger map of these tiles, when the page holds one (zoom_maps_view)
        "resolution": resolution,
    }
    flat = ", ".join(str(c) for c in grid.flat_channels)
    return {
        **image_view(grid.image),
        "alt": alt,
        "legend": grid.legend,
        "flat_note": f"flat tiles (magenta): channel {flat}" if flat else "",
        "meta_json": json.dumps(meta, sort_keys=True, separators=(",", ":")),
    }


def outputs_view(outputs: DenseOutputs | None) -> dict[str, Any] | None:
    """Detection boxes or segmentation maps on the thumbnails, with their legends."""
    if outputs is None:
        return None
    detection = outputs.kind == "detection"

    def item_text(item: DenseItem) -> str:
        return f"{item.label} {item.value:.2f}" if detection else f"{item.label} {percent(item.value)}"

    def more(entry: DenseInput) -> str:
        if detection:
            return f"{len(entry.items)} of {entry.total} boxes" if entry.total > len(entry.items) else \
                f"{entry.total} box{'es' if entry.total != 1 else ''}"
        return f"{len(entry.items)} of {entry.total} classes" if entry.total > len(entry.items) else ""

    return {
        "title": "Detections" if detection else "Segmentation",
        "note": outputs.note,
        "inputs": [
            {"name": entry.input_name,
             "image": {**image_view(entry.image, 2 * THUMB_DISPLAY_WIDTH),
                       "alt": f"{outputs.kind} output of {entry.input_name}"}
             if entry.image is not None else None,
             "legend": [{"text": item_text(item), "style": f"background: {item.colour}"} for item in entry.items],
             "more": more(entry)}
            for entry in outputs.inputs
        ],
    }


def stats_line(section: LayerSection) -> str:
    stats = section.stats
    if not stats.mean:
        return ""
    total = len(stats.mean)
    mean = sum(stats.mean) / total
    active = sum(stats.fraction_active) / total
    never = sum(1 for f in stats.fraction_inputs_active if f == 0)
    inputs = "the 1 input" if stats.inputs == 1 else f"all {stats.inputs} inputs"
    observed = f"Observed {site_phrase(section.site)}. " if section.site else ""
    return (f"{observed}Over {inputs}: mean activation {mean:.4g}, {percent(active)} of positions > 0, "
            f"{never} of {total} channels never > 0")


def zoom_resolution(grid: TileGrid, zoom: ZoomMap | None, full_shape: tuple[int, ...], input_index: int) -> str:
    """What the zoom draws for a feature-map grid, in words: the full map, or why only the tile."""
    full = "x".join(str(d) for d in full_shape)
    drawn = f"{grid.tile_height}x{grid.tile_width}"
    if zoom is None:
        if drawn == full:
            return f"the full-resolution {full} map"
        why = ("its full-resolution map did not fit the zoom's share of --max-size" if input_index == 0
               else "the full-resolution maps are kept for the first input only")
        return f"the {drawn} tile as drawn, average-pooled from {full}: {why}"
    zoomed = f"{zoom.grid.tile_height}x{zoom.grid.tile_width}"
    if zoomed == full:
        return f"the full-resolution {full} map (the page draws it pooled to {drawn})"
    return f"the map at {zoomed}, average-pooled from {full} (the page draws {drawn})"


def zoom_maps_view(report: ReportModel) -> list[dict[str, str]]:
    """The zoom's larger maps, found by `data-key` (section anchor and input index)."""
    return [{"key": f"{z.anchor}:{z.input_index}", "src": z.grid.image.data_uri,
             "meta_json": json.dumps({"columns": z.grid.columns, "tileWidth": z.grid.tile_width,
                                      "tileHeight": z.grid.tile_height, "padding": z.grid.padding,
                                      "channels": list(z.grid.channels)}, sort_keys=True, separators=(",", ":"))}
            for z in report.zoom_maps]


def section_view(section: LayerSection, position: int, alert_kinds: dict[str, list[str]],
                 zooms: dict[tuple[str, int], ZoomMap] | None = None) -> dict[str, Any]:
    filters = grid_view(section.filters, f"filters of {section.name}", f"layer {section.name} · filters",
                        "filter") if section.filters else None
    return {
        "anchor": section.anchor,
        "name": section.name,
        "type": section.type,
        "open": position < OPEN_SECTIONS,
        "stats_json": channel_stats_json(section),
        "facts": " · ".join(part for part in (
            section.type,
            f"weight {shape(section.weight_shape)}" if section.weight_shape else "",
            f"output {shape(section.output_shape)}",
            f"{section.channels_total} channels",
        ) if part),
        "badges": sorted(set(alert_kinds.get(section.name, []))),
        "filters": filters,
        "filter_note": section.filter_note,
        "selection_note": section.selection_note,
        "stats_line": stats_line(section),
        "feature_maps": [
            {"input_name": fm.input_name, **grid_view(
                fm.grid, f"feature maps of {section.name} for {fm.input_name}",
                f"layer {section.name} · input {fm.input_name}",
                zoom_key=f"{section.anchor}:{fm.input_index}",
                resolution=zoom_resolution(fm.grid, (zooms or {}).get((section.anchor, fm.input_index)),
                                           section.output_shape[-2:], fm.input_index)
                if len(section.output_shape) >= 4 else "")}
            for fm in section.feature_maps
        ],
        "insight": layer_view(section),
        "tokens": tokens_view(section),
    }


def tokens_view(section: LayerSection) -> dict[str, Any] | None:
    """A transformer layer's token pictures per shown input: captions, notes and one legend
    stating both normalisations (collectors/token_pictures.py)."""
    if not section.token_pictures:
        return None
    first = section.token_pictures[0]
    grid = "x".join(str(d) for d in first.grid)
    drawn = f"{first.norm.height}x{first.norm.width}"
    pooled = f"; {grid} average-pooled to {drawn}" if drawn != grid else ""
    legend = (f"Token norm: each token's L2 norm over its {first.channels} channels on the {grid} grid, from this "
              f"input's smallest (dark) to its largest (bright) on {first.colormap}; magenta = flat (all equal, "
              "NaN or Inf). PCA: the tokens minus their mean token, projected on their first three principal "
              "components as red, green and blue, each stretched from its min (0) to its max (255) over this "
              "input's tokens, its sign chosen so that the token farthest from the mean along it is bright; a "
              "component that does not exist or does not vary is 0. The share of the token variance the "
              f"components explain says how much of the tokens the picture shows{pooled}.")
    return {"legend": legend, "inputs": [_token_input_view(section.name, item) for item in section.token_pictures]}


def _token_input_view(layer: str, item: TokenPictures) -> dict[str, Any]:
    norm = {**image_view(item.norm, TOKEN_DISPLAY_WIDTH), "alt": f"token-norm map of {layer} for {item.input_name}"}
    span = f"{number(item.norm_min)} to {number(item.norm_max)}" if item.norm_min is not None else "not finite"
    pca = None
    caption, note = "", ""
    if item.pca is None:
        note = "no principal components: a token holds NaN or Inf"
    else:
        pca = {**image_view(item.pca, TOKEN_DISPLAY_WIDTH),
               "alt": f"first three principal components of the tokens of {layer} for {item.input_name} as RGB"}
        drawn = item.components
        share = percent(sum(item.explained_variance[:drawn]))
        parts = ", ".join(f"PC{i + 1} {percent(v)}" for i, v in enumerate(item.explained_variance[:drawn]))
        if drawn == 0:
            note = "the tokens are all equal: no component to draw (black)"
        elif drawn == 1:
            caption = f"PC1 explains {share} of the token variance"
        else:
            caption = f"PC1-{drawn} explain {share} of the token variance ({parts})"
        if 0 < drawn < 3:
            note = f"the tokens vary along {drawn} direction{'s' if drawn > 1 else ''} only: the other colours are 0"
    return {"input_name": item.input_name, "norm": norm, "norm_caption": f"token norm {span}", "pca": pca,
            "pca_caption": caption, "note": note}


def prediction_view(prediction: Prediction) -> dict[str, Any]:
    verdict = "" if prediction.correct is None else ("correct" if prediction.correct else "wrong")
    return {
        "input": prediction.input,
        "true_label": prediction.true_label or "",
        "verdict": verdict,
        "top": [
            {"label": top.label, "index": top.index, "percent": percent(top.probability),
             "bar": f"width: {max(top.probability * 100, 0.5):.1f}%"}
            for top in prediction.top
        ],
    }


def section_bytes(section: LayerSection) -> int:
    """Bytes the section's pictures take in the HTML (their data: URIs)."""
    total = len(section.filters.image.data_uri) if section.filters else 0
    return total + sum(len(fm.grid.image.data_uri) for fm in section.feature_maps)


def largest_sections(model: ReportModel, count: int = 5) -> list[tuple[LayerSection, int]]:
    """The `count` sections with the most picture bytes, largest first (ties: report order)."""
    sized = [(section, section_bytes(section)) for section in model.sections]
    order = sorted(range(len(sized)), key=lambda i: (-sized[i][1], i))
    return [sized[i] for i in order[:count] if sized[i][1] > 0]


def largest_sections_view(report: ReportModel) -> list[dict[str, str]]:
    """The layer sections that weigh most in the file (their pictures), largest first."""
    return [
        {"label": section.name, "href": f"#{section.anchor}", "size": byte_size(size)}
        for section, size in largest_sections(report)
    ]


def reproduce_view(report: ReportModel) -> dict[str, Any]:
    """The command and the input files (path, sha256) a reviewer needs to make this report again."""
    from reportgen.metadata import SHOWN_FILES

    files = report.input_files
    rest = len(files) - SHOWN_FILES
    return {
        "command": report.run.command or "",
        "files": [
            {"name": f.name, "path": f.path, "sha256": f.sha256, "size": byte_size(f.byte_size)}
            for f in files[:SHOWN_FILES]
        ],
        "more_files": f"and {count(rest)} more files (all listed in the --json export)" if rest > 0 else "",
    }


def weights_text(model: ModelInfo) -> str:
    """'loaded', or how the random weights were made ('random (factory default init, seed 0)')."""
    if not model.random_weights:
        if model.left_at_init:
            return f"partly loaded: {count(len(model.left_at_init))} tensor(s) left at their init (--weights-partial)"
        return "loaded"
    return f"random ({model.init})" if model.init else "RANDOM (untrained)"


LISTED_TENSORS = 6  # tensor names the overview's Checkpoint row lists before "and N more"


def checkpoint_text(model: ModelInfo) -> str:
    """How the checkpoint was read: the entry (and the others there were), the prefix stripped,
    the tensors --weights-partial left at init or did not use; "" when there is nothing to say."""
    parts = []
    if model.checkpoint_key:
        others = [e for e in model.checkpoint_entries if e != model.checkpoint_key.split("/")[0]]
        parts.append(f"entry {model.checkpoint_key}" + (f" (also in the file: {', '.join(others)}; "
                                                         "--weights-key picks)" if others else ""))
    if model.checkpoint_prefix:
        parts.append(f"prefix {model.checkpoint_prefix!r} stripped from every key")
    for names, what in ((model.left_at_init, "left at init"), (model.unused_tensors, "in the file, not used")):
        if names:
            more = len(names) - LISTED_TENSORS
            parts.append(f"{count(len(names))} {what}: {', '.join(names[:LISTED_TENSORS])}"
                         + (f" and {count(more)} more" if more > 0 else ""))
    return "; ".join(parts)


HEADLINE_WRONG = 5  # misclassified inputs named in the overview's headline


def alert_css(kind: str) -> str:
    return "alert-critical" if kind.startswith("nonfinite") or kind == "random-weights" else "alert-warning"


def headline_view(report: ReportModel) -> list[dict[str, str]]:
    """What a reviewer reads first: accuracy (when labelled), the alert count, the misclassified
    inputs, each linking to where the page shows it in full."""
    items = []
    per_class = report.insight.per_class if report.insight is not None else None
    if per_class is not None:
        items.append({"text": f"Accuracy {percent(per_class.accuracy)}: {count(per_class.correct)} of "
                              f"{count(per_class.labelled)} labelled inputs correct",
                      "href": "#per-class", "css": "headline-ok" if per_class.correct == per_class.labelled
                      else "headline-bad"})
    critical = sum(1 for alert in report.alerts if alert_css(alert.kind) == "alert-critical")
    if report.alerts:
        text = f"{count(len(report.alerts))} alert{'s' if len(report.alerts) != 1 else ''}"
        items.append({"text": text + (f" ({count(critical)} critical)" if critical else ""), "href": "#alerts",
                      "css": "headline-bad" if critical else "headline-warn"})
    else:
        items.append({"text": "No alerts", "href": "", "css": "headline-ok"})
    if per_class is not None and per_class.correct < per_class.labelled:
        wrong_total = per_class.labelled - per_class.correct
        named = "; ".join(f"{w.input_name} (true {w.true_label}, predicted {w.top[0].label if w.top else 'n/a'})"
                          for w in per_class.wrong[:HEADLINE_WRONG])
        rest = wrong_total - min(len(per_class.wrong), HEADLINE_WRONG)
        more = f"; and {count(rest)} more" if rest else ""
        items.append({"text": f"Misclassified {count(wrong_total)}: {named}{more}", "href": "#per-class",
                      "css": "headline-bad"})
    return items


def colorbars_view(report: ReportModel) -> list[dict[str, str]]:
    """One colour bar per colormap the page's tile grids use, for the zoom to show (sorted)."""
    from reportgen.grids import colorbar

    grids = [s.filters for s in report.sections if s.filters is not None]
    grids += [fm.grid for s in report.sections for fm in s.feature_maps]
    used = sorted({g.colormap for g in grids if g.colormap})
    return [{"name": name, "src": colorbar(name).data_uri} for name in used]


def page(report: ReportModel) -> dict[str, Any]:
    """The whole page as plain strings, lists and dicts, ready for the template."""
    run, model, totals = report.run, report.model, report.totals
    alert_kinds: dict[str, list[str]] = {}
    for alert in report.alerts:
        if alert.layer:
            alert_kinds.setdefault(alert.layer, []).append(alert.kind)

    overview = [
        ("Model", f"{model.name} ({model.type})"),
        ("Source", model.source + (f" — {model.file}" if model.file and Path(model.file).name not in model.source
                                   else "")),
        ("Weights", weights_text(model)),
        ("Device", run.device),
        ("Inputs", f"{count(len(report.inputs))}, batch size {run.batch_size}"),
        ("Date", run.date),
        ("Seed", str(run.seed)),
        ("reportgen", run.reportgen_version),
        ("torch / torchvision", f"{run.torch_version} / {run.torchvision_version}"),
    ]
    if model.sha256:
        overview.insert(2, ("Checkpoint sha256", model.sha256))
    if checkpoint_text(model):
        overview.insert(2, ("Checkpoint", checkpoint_text(model)))
    if run.command:
        overview.append(("Command", run.command))

    totals_rows = [
        ("Total params", count(totals.total_params)),
        ("Trainable params", count(totals.trainable_params)),
        ("Non-trainable params", count(totals.non_trainable_params)),
    ]
    if totals.available:
        totals_rows += [
            ("Mult-adds (one input)", count(totals.mult_adds)),
            ("Input size", megabytes(totals.input_mb)),
            ("Forward/backward pass size", megabytes(totals.forward_backward_mb)),
            ("Params size", megabytes(totals.params_mb)),
            ("Estimated total size", megabytes(totals.total_mb)),
        ]

    layer_rows = [
        {
            "name": row.name,
            "href": f"#{row.anchor}" if row.visualized else "",
            "indent": f"padding-left: {0.3 + 1.1 * max(row.depth - 1, 0):.1f}em",
            "type": row.type,
            "shape": shape(row.output_shape),
            "params": _summed(row.params, row.container),
            "kernel": kernel(row.kernel_size),
            "mult_adds": _summed(row.mult_adds, row.container),
            "trainable": row.trainable,
            "css": "visualized" if row.visualized else "",
        }
        for row in report.layers
        if row.depth > 0
    ]

    # listed: every input drawn somewhere (a thumbnail, or feature maps where it has no picture)
    mapped = {maps.input_index for section in report.sections for maps in section.feature_maps}
    inputs = [
        {
            "name": item.name,
            "shape": shape(item.shape),
            "label": item.label or "",
            "thumb": image_view(item.thumbnail, THUMB_DISPLAY_WIDTH) if item.thumbnail else None,
            "spectrogram": image_view(item.spectrogram, THUMB_DISPLAY_WIDTH) if item.spectrogram else None,
            "notes": list(item.notes),
        }
        for item in report.inputs
        if item.thumbnail is not None or item.index in mapped
    ]
    hidden_inputs = len(report.inputs) - len(inputs)

    alerts = [
        {
            "kind": alert.kind,
            "layer": alert.layer or "",
            "href": f"#{alert.anchor}" if alert.anchor else "",
            "message": alert.message,
            "why": WHY.get(alert.kind, ""),
            "css": alert_css(alert.kind),
        }
        for alert in report.alerts
    ]

    zooms = {(z.anchor, z.input_index): z for z in report.zoom_maps}
    sections = [section_view(s, i, alert_kinds, zooms) for i, s in enumerate(report.sections)]
    nav = [{"href": "#overview", "label": "Overview"}]
    if alerts:
        nav.append({"href": "#alerts", "label": f"Alerts ({len(alerts)})"})
    nav.append({"href": "#summary", "label": "Summary"})
    nav.append({"href": "#inputs", "label": "Inputs"})
    if report.predictions:
        nav.append({"href": "#predictions", "label": "Predictions"})
    outputs = outputs_view(report.outputs)
    if outputs is not None:
        nav.append({"href": "#outputs", "label": outputs["title"]})
    if report.impact is not None:
        nav.append({"href": "#impact", "label": "Impact"})
    nav.extend(nav_entries(report))
    nav.append({"href": "#layers", "label": "Layers"})
    reproduce = reproduce_view(report)
    if reproduce["command"] or reproduce["files"]:
        nav.append({"href": "#reproduce", "label": "Reproduce"})

    return {
        "colorbars": colorbars_view(report),
        "zoom_maps": zoom_maps_view(report),
        "headline": headline_view(report),
        "title": run.title,
        "random_weights": model.random_weights,
        "overview": overview,
        "totals": totals_rows,
        "notes": list(report.notes),
        "preprocessing": list(run.preprocessing),
        "alerts": alerts,
        "layer_rows": layer_rows,
        "summary_legend": SUMMARY_LEGEND if any(row.container and row.depth > 0 for row in report.layers) else "",
        "inputs": inputs,
        "hidden_inputs": _hidden_inputs(hidden_inputs),
        "predictions": [prediction_view(p) for p in report.predictions[: len(inputs) or 16]],
        "outputs": outputs,
        "sections": sections,
        "insight": report_view(report),
        "layer_nav": [{"href": f"#{s['anchor']}", "label": s["name"], "type": s["type"], "badges": s["badges"]} for s in sections],
        "nav": nav,
        "no_sections": "" if sections else "No convolution layer was hooked: this report holds the summary only.",
        "footer": f"Generated by reportgen {run.reportgen_version} on {run.date}.",
        "budget": report.budget.message if report.budget else "",
        "budget_css": "note budget" if report.budget is None or report.budget.fits else "note budget over",
        "largest_sections": largest_sections_view(report),
        "reproduce": reproduce,
        "impact": impact_page(report.impact),
    }
