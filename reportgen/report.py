"""`Report`: what `generate_report` returns. Render to HTML, dump to JSON, save both atomically."""

from __future__ import annotations

from abc import ABC, abstractmethod

import html
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from reportgen.report_model import ReportModel, to_plain


def contract_dict(model: ReportModel) -> dict[str, Any]:
    """The `--json` document: the report's numbers (no pictures), NaN/Inf as null."""
    visualized = [
        {
            "name": s.name,
            "anchor": s.anchor,
            "type": s.type,
            "channels_shown": len(s.channels_shown),
            "channel_indices": list(s.channels_shown),
            "channels_total": s.channels_total,
            "output_shape": list(s.output_shape),
            "weight_shape": list(s.weight_shape),
            "site": s.site,
            "token_pictures": to_plain(s.token_pictures, images=False),
            "stats": to_plain(s.stats, images=False),
            "insight": _layer_insight(s),
        }
        for s in model.sections
    ]
    return to_plain(
        {
            "reportgen_version": model.run.reportgen_version,
            "run": model.run,
            "model": model.model,
            "totals": model.totals,
            "layers": [
                {k: v for k, v in to_plain(row, images=False).items() if k != "anchor"} for row in model.layers
            ],
            "visualized": visualized,
            "inputs": [{"index": i.index, "name": i.name, "shape": list(i.shape), "label": i.label} for i in model.inputs],
            "predictions": model.predictions,
            "alerts": model.alerts,
            "notes": list(model.notes),
            "input_files": model.input_files,
            "size_budget": model.budget,
            "impact": model.impact,
            "insight": _report_insight(model),
            "outputs": model.outputs,
        },
        images=False,
    )


def _layer_insight(section: Any) -> dict[str, Any] | None:
    """A layer's insight numbers (weight statistics, dead fraction, top activations); pictures
    only as their sha256."""
    if section.insight is None:
        return None
    plain: dict[str, Any] = to_plain(section.insight, images=False)
    return plain


def _report_insight(model: ReportModel) -> dict[str, Any] | None:
    """Grad-CAM, embedding and per-class numbers, plus totals a CI job can gate on:
    `dead_fraction` (dead channels over all channels of all drawn layers), `duplicate_pairs`,
    `nonfinite_weights`, `flat_filters`, `unreachable_layers`, `looks_untrained`."""
    if model.insight is None:
        return None
    insights = [(s, s.insight) for s in model.sections if s.insight is not None]
    channels = sum(s.channels_total for s, _ in insights)
    dead = sum(len(i.dead_channels) for _, i in insights)
    weights = [i.weights for _, i in insights if i.weights is not None]
    totals = {
        "channels": channels,
        "dead_channels": dead,
        "dead_fraction": dead / channels if channels else 0.0,
        "duplicate_pairs": sum(w.duplicate_pairs for w in weights),
        "nonfinite_weights": sum(w.nonfinite for w in weights),
        "flat_filters": sum(len(w.flat_filters) for w in weights),
        "unreachable_layers": [s.name for s, i in insights if i.reaches_output is False],
        "looks_untrained": any(a.kind == "random-weights" for a in model.alerts),
    }
    plain: dict[str, Any] = to_plain(model.insight, images=False)
    plain["totals"] = totals
    return plain


class PageReport(ABC):
    """What every report object shares (`Report`, `compare_report.CompareReport`): a model of
    plain values, its page rendered once when first asked for (`_render`), the JSON of
    `to_dict`, and the notebook view of the page."""

    def __init__(self, model: Any, *, html: str | None = None) -> None:
        self.model = model
        if html is not None:  # already rendered (the size budget measured this very page)
            self.__dict__["_html"] = html

    @abstractmethod
    def _render(self) -> str:
        """The page's HTML."""

    @cached_property
    def _html(self) -> str:
        return self._render()

    def to_html(self) -> str:
        return self._html

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The JSON document, as plain values."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, indent=1) + "\n"

    def _repr_html_(self) -> str:
        # An iframe with srcdoc isolates the report's CSS and ids from the notebook's page.
        return (
            '<iframe style="width:100%;height:720px;border:1px solid #ccc" '
            'sandbox="allow-scripts allow-same-origin" '
            f'srcdoc="{html.escape(self.to_html(), quote=True)}"></iframe>'
        )


class Report(PageReport):
    """A finished report. Nothing is rendered until asked for."""

    model: ReportModel

    def _render(self) -> str:
        from reportgen.assemble import render_html

        return render_html(self.model)

    def to_dict(self) -> dict[str, Any]:
        return contract_dict(self.model)

    def save(self, path: str | Path, *, json_path: str | Path | None = None,
             images_dir: str | Path | None = None) -> Path:
        """Write the HTML (and the JSON, and every grid as a PNG into `images_dir`, if asked)
        together, atomically. Returns the HTML path."""
        from reportgen.exports import created_folders, image_outputs
        from reportgen.write import check_distinct, write_atomically

        outputs = {Path(path): self.to_html().encode("utf-8")}
        if json_path is not None:
            check_distinct([Path(path), Path(json_path)])  # one dict key would silently drop the HTML
            outputs[Path(json_path)] = self.to_json().encode("utf-8")
        folder = Path(images_dir) if images_dir is not None else None
        with created_folders((folder, "--images")):
            if folder is not None:
                outputs.update(image_outputs(self.model, folder))
            write_atomically(outputs)
        self._saved = Path(path)
        return Path(path)

    def show(self) -> Path:
        """Open the saved report in the default browser (saving to a temp file first if needed)."""
        import tempfile
        import webbrowser

        path = getattr(self, "_saved", None)
        if path is None:
            handle = tempfile.NamedTemporaryFile(prefix="reportgen-", suffix=".html", delete=False)
            handle.close()
            path = self.save(handle.name)
        webbrowser.open(Path(path).resolve().as_uri())
        return Path(path)
