"""Attention rollout inside the main pass, for its first `count` inputs (rollout.py has the maths).

Every call of every `nn.MultiheadAttention` is handed over (`layer_call`, with the query it was
called with); the attention probabilities are recomputed from the query and the module's
projection weights for the batch rows that get a map, fused and multiplied onto the running
product of the forward. At `forward_end` each of those rows' rollout becomes a map on the token
grid. The state is per input, so merging is a union.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reportgen.engine.collector import Collector, LayerCall
from reportgen.gradcam import CamRecord, CamResult
from reportgen.rollout import attention_probabilities, call_arguments, fused, rollout_map, usable
from reportgen.tokens import is_attention, square_grid

KIND = "rollout"


@dataclass
class RolloutState:
    records: dict[int, CamRecord] = field(default_factory=dict)
    failure: str = ""
    layers: int = 0  # attention calls per forward
    prefix: int = 0

    def merge(self, other: RolloutState) -> None:
        self.records.update(other.records)
        self.failure = self.failure or other.failure
        self.layers = self.layers or other.layers
        self.prefix = self.prefix or other.prefix


def attention_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and isinstance(module, nn.MultiheadAttention)]


def other_attention(model: nn.Module) -> list[str]:
    """Attention modules that are not nn.MultiheadAttention (and not inside one): not rolled out."""
    return [name for name, module in model.named_modules()
            if name and is_attention(module) and not isinstance(module, nn.MultiheadAttention)]


class RolloutCollector(Collector[RolloutState]):
    """See the module doc. `heads`: "mean" or "max". Made for any model with attention; without
    nn.MultiheadAttention it only says why there is no rollout."""

    def __init__(self, model: nn.Module, *, count: int, heads: str = "mean") -> None:
        super().__init__()
        self.layers = tuple(attention_layers(model))
        self.others = [] if self.layers else other_attention(model)
        self.count = count
        self.heads = heads
        self._rolled: torch.Tensor | None = None
        self._rows: range = range(0)
        self._calls = 0

    def empty(self) -> RolloutState:
        return RolloutState()

    def forward_start(self) -> None:
        self._rolled = None
        self._calls = 0
        start = self.batch.start if self.batch is not None else 0
        stop = self.batch.stop if self.batch is not None else 0
        self._rows = range(0, max(0, min(stop, self.count) - start))  # batch rows that get a map

    def layer_call(self, call: LayerCall) -> None:
        if not self._rows or self.staged.failure:
            return
        self._calls += 1
        arguments = call_arguments(tuple(call.args), dict(call.kwargs))
        problem = usable(call.module, arguments)
        if problem:
            self.staged.failure = f"{call.key}: {problem}"
            return
        query = arguments["query"]
        assert isinstance(query, torch.Tensor)
        rows = query[: len(self._rows)] if call.module.batch_first else query[:, : len(self._rows)]
        with torch.no_grad():
            step = fused(attention_probabilities(call.module, rows.detach()), self.heads)
            if self._rolled is not None and self._rolled.shape != step.shape:
                self.staged.failure = f"{call.key}: its token count differs from the attention before it"
                return
            self._rolled = step if self._rolled is None else step @ self._rolled

    def forward_end(self, output: Any) -> None:
        rolled, self._rolled = self._rolled, None
        if output is None or rolled is None or self.staged.failure or self.batch is None:
            return
        found = square_grid(int(rolled.shape[-1]))
        if found is None:
            self.staged.failure = (f"its {rolled.shape[-1]} tokens form no square grid of patches "
                                   "(after at most a few leading tokens)")
            return
        prefix, grid = found
        maps = rollout_map(rolled, prefix, grid).float().cpu().numpy()
        staged = self.staged
        staged.layers, staged.prefix = self._calls, prefix
        for row in self._rows:
            index = self.batch.start + row
            staged.records[index] = CamRecord(input_index=index, kind=KIND, target=-1, cam=maps[row])

    def result(self, total: int) -> CamResult | None:
        state = self.state
        wanted = min(self.count, total)
        if state.failure or not state.records or any(i not in state.records for i in range(wanted)):
            return None
        return CamResult(layer=f"{state.layers} attention layer(s)",
                         records=tuple(state.records[i] for i in sorted(state.records)), reaches_output={},
                         note=note(state.layers, state.prefix, self.heads))

    def notes(self) -> tuple[str, ...]:
        if not self.layers:
            return (f"Attention rollout was skipped: it reads nn.MultiheadAttention layers, and this model's "
                    f"attention ({', '.join(self.others[:3])}) computes its weights its own way (e.g. in windows).",)
        if self.state.failure:
            return (f"Attention rollout was skipped: {self.state.failure}.",)
        return ()


def note(layers: int, prefix: int, heads: str) -> str:
    source = ("the class token's row of the product over the patch tokens" if prefix
              else "the mean of all rows of the product (the model has no class token)")
    return (f"Attention rollout (Abnar & Zuidema 2020) over the model's {layers} attention layer(s): per layer the "
            f"attention probabilities, recomputed from the layer's input and its query/key projections, heads "
            f"fused by their {heads}, the identity (the residual path) added and each row renormalised; the "
            f"product from the first layer to the last, {source}, scaled to its own max and laid over the input "
            "like Grad-CAM. It shows where information flows from, not what the class depends on.")
