"""Predictions: per input the top-k classes of the model's output logits, and what the output
was when it held none (outputs.py finds the logits, the same way for every pass): detections or
a segmentation that the dense collector recorded (collectors/dense.py) are named with the section
that draws them; any other output is described by its types and shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reportgen.analysis import PredictionRecord
from reportgen.collectors.dense import DenseOutputCollector
from reportgen.engine.collector import Collector
from reportgen.outputs import describe_output, find_logits

TOP_K = 5
NOT_SHOWN = "No class predictions, accuracy, Grad-CAM or ablation are shown."
# what an output the dense collector recognised is, and where the report draws it (view.outputs_view's titles)
DENSE_OUTPUTS = {
    "detection": ("detections (per input: boxes, labels and scores)",
                  "the highest-scoring boxes of the shown inputs are drawn in the Detections section"),
    "segmentation": ("a segmentation (per-pixel class scores)",
                     "the shown inputs' class maps (the highest-scoring class at each pixel) are drawn in the "
                     "Segmentation section"),
}


@dataclass
class PredictionState:
    records: dict[int, PredictionRecord] = field(default_factory=dict)  # input index -> record
    num_classes: int | None = None
    logits_like: bool = True
    output_description: str = ""  # what the output was, when it held no logits
    nonfinite_inputs: int = 0

    def merge(self, other: PredictionState) -> None:
        self.records.update(other.records)
        self.num_classes = self.num_classes if self.num_classes is not None else other.num_classes
        self.logits_like = self.logits_like and other.logits_like
        self.output_description = self.output_description or other.output_description
        self.nonfinite_inputs += other.nonfinite_inputs


class PredictionCollector(Collector[PredictionState]):
    """Keeps only the top-k classes (and the labelled class's probability) of each input.

    `check_labels(num_classes)` runs when the first batch commits, so a true class the model
    cannot output stops a long run at its start. `dense`: the pass's dense-output collector, read
    (after the pass) to say what an output without logits is and where the report draws it.
    """

    def __init__(self, check_labels: Callable[[int], None] | None = None, *,
                 dense: DenseOutputCollector | None = None) -> None:
        super().__init__()
        self._check_labels = check_labels
        self._dense = dense

    def empty(self) -> PredictionState:
        return PredictionState()

    def forward_end(self, output: Any) -> None:
        batch = self.batch
        if output is None or batch is None:
            return
        staged = self.staged
        tensor = find_logits(output, batch.size)
        if tensor is None:
            staged.logits_like = False
            staged.output_description = describe_output(output)
            return
        staged.nonfinite_inputs += int((~torch.isfinite(tensor)).any(dim=1).sum())
        probabilities = torch.softmax(tensor.detach().float(), dim=1)
        k = min(TOP_K, probabilities.shape[1])
        top = torch.topk(probabilities, k, dim=1)
        indices, values = top.indices.cpu().numpy(), top.values.cpu().numpy()
        labelled = any(label is not None for label in batch.labels)
        full = probabilities.cpu().numpy() if labelled else None
        staged.num_classes = int(tensor.shape[1])
        for row in range(tensor.shape[0]):
            label = batch.labels[row] if row < len(batch.labels) else None
            probability = (float(full[row, label]) if full is not None and label is not None
                           and label < full.shape[1] else None)
            staged.records[batch.start + row] = PredictionRecord(
                index=batch.start + row, top_indices=tuple(int(i) for i in indices[row]),
                top_probabilities=tuple(float(v) for v in values[row]), label=label, label_probability=probability)

    def commit(self) -> None:
        first = self.state.num_classes is None
        super().commit()
        if first and self.state.num_classes is not None and self._check_labels is not None:
            self._check_labels(self.state.num_classes)

    def records(self) -> tuple[PredictionRecord, ...]:
        return tuple(self.state.records[i] for i in sorted(self.state.records)) if self.state.logits_like else ()

    def notes(self) -> tuple[str, ...]:
        state, notes = self.state, []
        kind = self._dense.kind() if self._dense is not None else None
        if not state.logits_like and kind in DENSE_OUTPUTS:
            what, where = DENSE_OUTPUTS[kind]
            notes.append(f"This model's output is {what}, not class logits: {where}. {NOT_SHOWN}")
        elif not state.logits_like:
            notes.append(f"The model's output is not class logits (a floating (batch, classes) tensor, or a "
                         f"'logits' entry): it was {state.output_description}. {NOT_SHOWN}")
        if state.nonfinite_inputs:
            notes.append(f"The model's output held NaN or Inf for {state.nonfinite_inputs} input(s): "
                         "their predictions are not meaningful.")
        return tuple(notes)
