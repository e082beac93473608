"""What a detection or segmentation model outputs, for the inputs whose thumbnails are drawn.

- Detection (torchvision's detection models in eval mode): a list with one mapping per input
  holding `boxes` (K, 4) as (x1, y1, x2, y2) in the input's pixels, `scores` (K,) and `labels`
  (K,). The `MAX_BOXES` highest scores are kept (ties: the model's order).
- Segmentation: a mapping with an `out` entry (torchvision's segmentation models), or a floating
  (N, K, H, W) output with K >= 2 at the input's own height and width: per-pixel class scores.
  The argmax class map (the first class on a tie, as torch.argmax) and each class's fraction of
  the pixels are kept.
Per input, so merging is a union. Anything else is not a dense output and is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reportgen.analysis import DenseRecord
from reportgen.engine.collector import Collector

MAX_BOXES = 5


@dataclass
class DenseState:
    records: dict[int, DenseRecord] = field(default_factory=dict)

    def merge(self, other: DenseState) -> None:
        self.records.update(other.records)


def detections(output: Any, batch_size: int) -> list[Mapping[str, torch.Tensor]] | None:
    """The per-input detection mappings of `output`, or None when it is not one."""
    if not isinstance(output, Sequence) or isinstance(output, (str, torch.Tensor)) or len(output) != batch_size:
        return None
    for item in output:
        if not isinstance(item, Mapping) or not all(isinstance(item.get(key), torch.Tensor)
                                                    for key in ("boxes", "scores", "labels")):
            return None
        if item["boxes"].dim() != 2 or item["boxes"].shape[-1] != 4:
            return None
    return list(output)


def segmentation(output: Any, batch: torch.Tensor) -> torch.Tensor | None:
    """The (N, K, H, W) per-pixel class scores in `output`, or None."""
    found = output.get("out") if isinstance(output, Mapping) else output
    if not isinstance(found, torch.Tensor) or not found.is_floating_point() or found.dim() != 4:
        return None
    if found.shape[0] != batch.shape[0] or found.shape[1] < 2:
        return None
    if not isinstance(output, Mapping) and tuple(found.shape[2:]) != tuple(batch.shape[2:]):
        return None  # a plain 4D output is only taken for class scores at the input's own size
    return found


class DenseOutputCollector(Collector[DenseState]):
    """See the module doc: records for inputs 0..keep_inputs-1."""

    def __init__(self, *, keep_inputs: int) -> None:
        super().__init__()
        self.keep_inputs = keep_inputs

    def empty(self) -> DenseState:
        return DenseState()

    def forward_end(self, output: Any) -> None:
        batch = self.batch
        if output is None or batch is None or batch.start >= self.keep_inputs:
            return
        rows = range(min(batch.size, self.keep_inputs - batch.start))
        found = detections(output, batch.size)
        if found is not None:
            for row in rows:
                self.staged.records[batch.start + row] = _detection(batch.start + row, found[row])
            return
        scores = segmentation(output, batch.tensor)
        if scores is not None:
            classes = scores[: len(rows)].detach().float().argmax(dim=1)  # (n, H, W)
            counts = torch.stack([torch.bincount(c.flatten(), minlength=scores.shape[1]) for c in classes])
            host, count_host = classes.cpu().numpy().astype(np.int32), counts.cpu().numpy()
            pixels = float(classes.shape[1] * classes.shape[2])
            for row in rows:
                fractions = {int(k): float(count_host[row, k]) / pixels for k in np.nonzero(count_host[row])[0]}
                self.staged.records[batch.start + row] = DenseRecord(
                    index=batch.start + row, kind="segmentation", classes=host[row], fractions=fractions,
                    num_classes=int(scores.shape[1]))

    def records(self) -> tuple[DenseRecord, ...]:
        return tuple(self.state.records[i] for i in sorted(self.state.records))

    def kind(self) -> str | None:
        """"detection" or "segmentation" when this pass recorded such outputs (the report then
        draws them in its Detections or Segmentation section), else None."""
        return self.state.records[min(self.state.records)].kind if self.state.records else None


def _detection(index: int, found: Mapping[str, torch.Tensor]) -> DenseRecord:
    scores = found["scores"].detach().float().cpu()
    order = torch.sort(scores, descending=True, stable=True).indices[:MAX_BOXES]
    return DenseRecord(
        index=index, kind="detection",
        boxes=found["boxes"].detach().float().cpu()[order].numpy().astype(np.float64),
        scores=scores[order].numpy().astype(np.float64),
        labels=found["labels"].detach().cpu()[order].numpy().astype(np.int64),
        total_boxes=int(scores.numel()),
    )
