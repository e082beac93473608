"""The unablated model's side of filter ablation (ablation.py), from the main pass: each input's
target (its label, or the model's own top-1 when no input is labelled), the clean metrics, and
the clean logits of the inputs ablation's first batch checks its expansion against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

import numpy as np
import torch

from reportgen.ablation import Baseline, ForwardArgs, Sums
from reportgen.devices import model_dtype
from reportgen.engine.collector import Batch, Collector
from reportgen.engine.loop import run_batches
from reportgen.errors import ReportError, one_line
from reportgen.inputs import InputSet, call_model
from reportgen.outputs import find_logits


@dataclass
class BaselineState:
    sums: Sums | None = None
    targets: dict[int, tuple[int, bool]] = field(default_factory=dict)  # input -> (target, counts)
    verify: dict[int, np.ndarray] = field(default_factory=dict)  # input -> clean logits
    logits: bool = True

    def merge(self, other: BaselineState) -> None:
        if self.sums is None:
            self.sums = other.sums
        elif other.sums is not None:
            self.sums.merge(other.sums)
        self.targets.update(other.targets)
        self.verify.update(other.verify)
        self.logits = self.logits and other.logits


class AblationBaselineCollector(Collector[BaselineState]):
    """`labelled`: whether any input has a true class (then unlabelled inputs do not count);
    `verify_count` inputs from each of `verify_starts` (where each rank's share begins) keep their
    clean logits: ablation checks its first batch against them."""

    def __init__(self, *, labelled: bool, verify_count: int, verify_starts: tuple[int, ...] = (0,)) -> None:
        super().__init__()
        self.labelled = labelled
        self.verify_count = verify_count
        self.verify_starts = verify_starts

    def empty(self) -> BaselineState:
        return BaselineState()

    def forward_end(self, output: Any) -> None:
        batch = self.batch
        if batch is None or output is None:
            return
        logits = find_logits(output, batch.size)
        staged = self.staged
        if logits is None:
            staged.logits = False
            return
        logits = logits.detach()
        classes = int(logits.shape[1])
        device = logits.device
        if self.labelled:
            valid = torch.tensor([label is not None for label in batch.labels], device=device)
            targets = torch.tensor([label if label is not None and 0 <= label < classes else 0
                                    for label in batch.labels], device=device, dtype=torch.long)
        else:
            valid = torch.ones(batch.size, dtype=torch.bool, device=device)
            targets = logits.argmax(dim=1)
        staged.sums = staged.sums or Sums.zeros(1, classes, device)
        staged.sums.add(slice(0, 1), logits[:, None, :], targets, valid.double())
        for row, (target, counts) in enumerate(zip(targets.tolist(), valid.tolist())):
            staged.targets[batch.start + row] = (int(target), bool(counts))
        rows = [row for row in range(batch.size)
                if any(0 <= batch.start + row - start < self.verify_count for start in self.verify_starts)]
        if rows:
            kept = logits[rows].float().cpu().numpy()
            staged.verify.update((batch.start + row, kept[i]) for i, row in enumerate(rows))

    def result(self) -> Baseline | None:
        """None when the output held no logits (ablation then says it needs a classifier)."""
        state = self.state
        if not state.logits or state.sums is None:
            return None
        count = len(state.targets)
        targets = np.array([state.targets[i][0] for i in range(count)], dtype=np.int64)
        valid = np.array([state.targets[i][1] for i in range(count)], dtype=bool)
        num_classes = int(state.sums.per_class.shape[1])
        class_counts = np.bincount(targets[valid], minlength=num_classes)
        present = np.flatnonzero(class_counts)
        counted = int(valid.sum())
        scores = state.sums.scores(counted, class_counts[present], present)
        verify = {index: logits for index, logits in sorted(state.verify.items())}
        return Baseline(
            targets=targets, valid=valid, labelled=self.labelled, num_classes=num_classes, verify=verify,
            scores=type(scores)(accuracy=scores.accuracy[0], probability=scores.probability[0],
                                loss=scores.loss[0], per_class=scores.per_class[0]),
            classes=tuple(int(c) for c in present), class_counts=tuple(int(c) for c in class_counts[present]),
            counted=counted)


def clean_baseline(model: nn.Module, inputs: InputSet, device: torch.device, batch_size: int,
                   forward_args: ForwardArgs = None) -> Baseline | None:
    """The baseline from a clean pass of its own (ablation called without the main pass's)."""
    collector = AblationBaselineCollector(labelled=any(inputs.label(i) is not None for i in range(len(inputs))),
                                          verify_count=batch_size)

    def step(batch: Batch) -> None:
        try:
            output = call_model(model, batch.tensor, forward_args)
        except ReportError:
            raise
        except Exception as exc:
            raise ReportError(f"ablation: the model failed on inputs {inputs.names[batch.start]}..: "
                              f"{one_line(exc)}") from exc
        collector.forward_end(output)

    run_batches(inputs, step, device=device, dtype=model_dtype(model), batch_size=batch_size, transaction=collector)
    return collector.result()
