"""`CompareReport`: what `compare_reports` returns, with the same surface as `Report`:
`to_html`, `to_dict` (the `--json` document, `data/compare.schema.json`), `save`, `_repr_html_`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reportgen.compare_model import CompareModel
from reportgen.report import PageReport
from reportgen.report_model import to_plain


def compare_dict(model: CompareModel) -> dict[str, Any]:
    """The comparison's numbers (no pictures), NaN/Inf as null."""
    channels = {layer.name: layer for layer in model.channels}
    layers = []
    if model.weights is not None:
        for layer in model.weights.layers:
            layers.append({"name": layer.name, "shape": list(layer.shape),
                           "weight_change": {"relative_l2": layer.relative_l2, "cosine": layer.cosine},
                           "filters": [to_plain(row, images=False) for row in layer.filters]})
    cka = model.cka
    run = model.training_run
    predictions = model.predictions
    return to_plain({
        "reportgen_version": model.run.reportgen_version,
        "kind": "compare",
        "run": model.run,
        "checkpoints": [{"name": c.name, "sha256": c.sha256, "source": c.source, "type": c.type, "file": c.file,
                         "params": c.params} for c in model.checkpoints],
        "cka": {"estimator": cka.estimator, "batch_size": cka.batch_size,
                "batch_sizes": [{"size": size, "batches": batches} for size, batches in cka.batch_sizes],
                "inputs_used": cka.inputs_used, "inputs_skipped": cka.inputs_skipped, "layers": cka.layers,
                "matrix": {"rows": cka.matrix.rows, "cols": cka.matrix.cols, "values": cka.matrix.values}},
        "layers": layers,
        "unmatched_layers": model.weights.unmatched if model.weights is not None else [],
        "channels": [{"name": name, "mean_correlation": layer.mean_correlation, "newly_dead": layer.newly_dead,
                      "revived": layer.revived, "mean_jaccard": layer.mean_jaccard, "top_k": layer.top_k,
                      "channels": layer.channels,
                      "top_sets": [{"channel": t.channel, "jaccard": t.jaccard, "inputs_a": t.inputs_a,
                                    "inputs_b": t.inputs_b} for t in layer.top_sets]}
                     for name, layer in channels.items()],
        "predictions": None if predictions is None else {
            "inputs": predictions.inputs, "agreement": predictions.agreement, "flips_total": predictions.flips_total,
            "flips": [{"index": f.index, "name": f.name, "label": f.label, "top_a": f.top_a, "top_b": f.top_b}
                      for f in predictions.flips],
            "labelled": predictions.labelled, "accuracy_a": predictions.accuracy_a,
            "accuracy_b": predictions.accuracy_b, "negative_flip_rate": predictions.negative_flip_rate,
            "positive_flip_rate": predictions.positive_flip_rate, "per_class": predictions.per_class},
        "training_run": None if run is None else {
            "checkpoints": run.checkpoints, "layers": run.layers, "cka_to_last": run.cka_to_last,
            "cka_to_next": run.cka_to_next, "weight_layers": run.weight_layers, "weight_step": run.weight_step},
        "notes": list(model.notes),
        "size_budget": model.budget,
        "alerts_diff": None if model.alerts is None else {
            "in_b_not_a": [{"kind": a.kind, "layer": a.layer, "detail": a.detail} for a in model.alerts.in_b_not_a],
            "in_a_not_b": [{"kind": a.kind, "layer": a.layer, "detail": a.detail} for a in model.alerts.in_a_not_b],
            "checked": model.alerts.checked},
    }, images=False)


class CompareReport(PageReport):
    """A finished comparison. Nothing is rendered until asked for."""

    model: CompareModel

    def _render(self) -> str:
        from reportgen.compare_view import render_html

        return render_html(self.model)

    def to_dict(self) -> dict[str, Any]:
        return compare_dict(self.model)

    def save(self, path: str | Path, *, json_path: str | Path | None = None) -> Path:
        """Write the HTML (and the JSON, if asked) together, atomically. Returns the HTML path."""
        from reportgen.write import check_distinct, write_atomically

        outputs = {Path(path): self.to_html().encode("utf-8")}
        if json_path is not None:
            check_distinct([Path(path), Path(json_path)])
            outputs[Path(json_path)] = self.to_json().encode("utf-8")
        write_atomically(outputs)
        return Path(path)
