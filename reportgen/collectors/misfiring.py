"""Misfiring filters in the main pass (misfiring.py has the statistics): per labelled input and
observed channel, the mean activation at the layer's observed site (after BN and the activation;
the raw conv output with `--tap conv`), split by whether the model got the input right.

The per-input means are the shared row sums divided by the positions: no pass of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from reportgen.engine.collector import Batch, Collector, Observation
from reportgen.misfiring import TOP_INPUTS, LayerSums, MisfiringResult, layer_result
from reportgen.outputs import find_logits


@dataclass
class MisfiringState:
    sums: dict[str, LayerSums] = field(default_factory=dict)  # layer name -> sums
    correct: int = 0
    wrong: int = 0
    predictions: dict[int, tuple[int, int]] = field(default_factory=dict)  # wrong input -> (true, predicted)
    logits: bool = True

    def merge(self, other: MisfiringState) -> None:
        for name, theirs in other.sums.items():
            mine = self.sums.get(name)
            if mine is None:
                self.sums[name] = theirs
            else:
                mine.merge(theirs)
        self.correct += other.correct
        self.wrong += other.wrong
        self.predictions.update(other.predictions)
        self.logits = self.logits and other.logits


class MisfiringCollector(Collector[MisfiringState]):
    observes = True

    def __init__(self, layer_names: tuple[str, ...], k: int = TOP_INPUTS) -> None:
        super().__init__()
        self.layer_names = layer_names
        self.k = k
        self._pending: dict[str, torch.Tensor] = {}

    def empty(self) -> MisfiringState:
        return MisfiringState()

    def begin(self, batch: Batch) -> None:
        super().begin(batch)
        self._pending.clear()

    def observe(self, observation: Observation) -> None:
        # a module called twice: its first call counts; an unlabelled batch adds nothing
        if observation.call_index != 0 or observation.name not in self.layer_names or self.batch is None \
                or all(label is None for label in self.batch.labels):
            return
        reduced = observation.reduced()
        positions = max(observation.rows()[1].shape[2], 1)
        self._pending[observation.name] = reduced.sum / positions  # (B, C) float64 means

    def forward_end(self, output: Any) -> None:
        batch, pending, self._pending = self.batch, self._pending, {}
        if batch is None or output is None or not pending:
            return
        logits = find_logits(output, batch.size)
        if logits is None:
            self.staged.logits = False
            return
        device = logits.device
        raw = batch.labels
        valid = torch.tensor([label is not None for label in raw], device=device)
        targets = torch.tensor([label if label is not None and 0 <= label < logits.shape[1] else 0 for label in raw],
                               device=device)
        predicted = logits.detach().argmax(dim=1)
        correct = predicted == targets
        staged = self.staged
        staged.correct += int((correct & valid).sum())
        staged.wrong += int((~correct & valid).sum())
        for row in torch.nonzero(~correct & valid).flatten().tolist():
            staged.predictions[batch.start + row] = (int(targets[row]), int(predicted[row]))
        for name, means in pending.items():
            sums = staged.sums.get(name)
            if sums is None:
                sums = staged.sums[name] = LayerSums(means.shape[1], means.device, self.k)
            sums.add(means.to(device), correct, valid, batch.start)

    def discard(self) -> None:
        super().discard()
        self._pending.clear()

    def result(self) -> MisfiringResult | None:
        """None when the output held no logits (the report says so elsewhere)."""
        state = self.state
        if not state.logits:
            return None
        layers = tuple(layer_result(name, state.sums[name], state.correct, state.wrong)
                       for name in self.layer_names if name in state.sums)
        return MisfiringResult(correct=state.correct, wrong=state.wrong, layers=layers,
                               predictions=dict(sorted(state.predictions.items())))
