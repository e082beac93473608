"""Penultimate features (embedding.py): the input of the last Linear layer, or the pooled output
of the last conv, of the first `max_points` inputs, copied to the host batch by batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from reportgen.capture import first_tensor
from reportgen.embedding import MAX_POINTS, Features, feature_layer
from reportgen.engine.collector import Collector, LayerCall


@dataclass
class FeatureState:
    chunks: dict[int, np.ndarray] = field(default_factory=dict)  # first input index -> (rows, dim)
    total: int = 0  # inputs seen

    def merge(self, other: FeatureState) -> None:
        self.chunks.update(other.chunks)
        self.total = max(self.total, other.total)

    def kept(self) -> int:
        return sum(len(rows) for rows in self.chunks.values())


class FeatureCollector(Collector[FeatureState]):
    """At most `max_points` feature vectors, the first inputs' (memory bounded by it)."""

    def __init__(self, model: nn.Module, *, max_points: int = MAX_POINTS, enabled: bool = True) -> None:
        super().__init__()
        self.max_points = max_points
        found = feature_layer(model) if enabled else None
        self.layer: str | None = found[0] if found is not None else None
        self.how = found[1] if found is not None else ""
        self.layers = (self.layer,) if self.layer is not None else ()

    def empty(self) -> FeatureState:
        return FeatureState()

    def layer_call(self, call: LayerCall) -> None:
        if call.call_index != 0:  # one capture per forward: the module's first call
            return
        tensor = first_tensor(call.args) if self.how == "input" else first_tensor(call.output)
        if tensor is None or tensor.dim() < 2 or not tensor.is_floating_point():
            return
        staged, offset = self.staged, self.batch.start if self.batch is not None else 0
        staged.total = max(staged.total, offset + int(tensor.shape[0]))
        room = self.max_points - self.state.kept()
        if room <= 0:
            return
        values = tensor.detach()[:room]
        if self.how == "input":
            values = values.reshape(values.shape[0], -1)
        else:
            values = values.float().flatten(2).mean(dim=2) if values.dim() > 2 else values
        staged.chunks[offset] = values.float().cpu().numpy()

    def merge_state(self, state: FeatureState) -> None:
        super().merge_state(state)  # then the first max_points by input index stay
        room, kept = self.max_points, {}
        for offset in sorted(self.state.chunks):
            rows = self.state.chunks[offset][:max(room, 0)]
            if len(rows):
                kept[offset] = rows
            room -= len(rows)
        self.state.chunks = kept

    def result(self) -> Features | None:
        chunks = self.state.chunks
        if self.layer is None or not chunks:
            return None
        offsets = sorted(chunks)
        if len({chunks[offset].shape[1] for offset in offsets}) != 1:
            return None
        source = (f"input of {self.layer} (the last Linear layer)" if self.how == "input"
                  else f"global-average-pooled output of {self.layer} (the last convolution)")
        vectors = np.concatenate([chunks[offset] for offset in offsets])
        indices = np.concatenate([np.arange(offset, offset + len(chunks[offset])) for offset in offsets])
        return Features(source=source, vectors=vectors, indices=indices, total=self.state.total)
