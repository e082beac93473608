"""Grad-CAM and reachability inside the main pass, for its first `count` inputs (gradcam.py has
the maps and the fallback pass).

The batches holding those inputs run outside inference mode (`batch_context`), and the forward
of each runs with autograd on: `forward_start` turns it on (torchinfo runs its pass under
`no_grad`) and `forward_end` (called also when the forward raises) turns it off. Autograd keeps
no tensor from before the target layer (`saved_tensors_hooks` drops them), so memory stays that
of an inference pass; the backward (`autograd.grad` to the target's gradient edge) runs only the
layers after it. Running a model with autograd on is how most models are used: nothing here
mixes inference tensors into autograd, which could fail.

When anything goes wrong (a frozen model without a graph, a failing backward, an in-place op
that invalidated a saved tensor), `result()` is None and the caller runs `gradcam.grad_cam`
instead. Every `p.grad` is checked and put back after each armed batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reportgen.capture import first_tensor
from reportgen.engine.collector import Batch, Collector, LayerCall
from reportgen.errors import one_line
from reportgen.faults import is_out_of_memory
from reportgen.gradcam import (
    AUTOGRAD_ERROR,
    CamRecord,
    CamResult,
    Captured,
    has_map_axes,
    maps,
    messages,
    reachability,
    saved_grads,
)
from reportgen.inputs import InputSet
from reportgen.outputs import find_logits


@dataclass
class CamState:
    records: dict[tuple[int, str], CamRecord] = field(default_factory=dict)
    reaches: dict[str, bool] | None = None
    failure: str = ""

    def merge(self, other: CamState) -> None:
        self.records.update(other.records)
        self.reaches = self.reaches if self.reaches is not None else other.reaches
        self.failure = self.failure or other.failure


class FusedCamCollector(Collector[CamState]):
    """See the module doc. `layer`: the Grad-CAM layer; `watched`: layers whose reachability
    of the output is asked."""

    def __init__(self, model: nn.Module, inputs: InputSet, *, count: int, layer: str,
                 watched: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.count = count
        self.layer = layer
        self.layers = tuple(dict.fromkeys([layer, *watched]))
        self._aborted = False  # a forward failed with autograd on: this batch is to be run again
        self._disabled = False
        self._armed = False
        self._offset = 0
        self._stack: ExitStack | None = None
        self._after = False
        self._captured = Captured()

    def empty(self) -> CamState:
        return CamState()

    def batch_context(self, batch: Batch) -> AbstractContextManager[Any]:
        """Outside inference mode when the batch holds inputs that get a map, else a no-op."""
        if batch.start >= self.count or self._disabled:
            return nullcontext()

        @contextmanager
        def context() -> Iterator[None]:
            self._armed, self._offset = True, batch.start
            saved = list(saved_grads(self.model))
            try:
                # normal tensors (no inference tensors), no autograd unless `forward_start` turns it on
                with torch.inference_mode(False), torch.no_grad():
                    yield
            finally:
                self._armed = False
                self._close()
                for parameter, grad in saved:
                    if parameter.grad is not grad:
                        parameter.grad = grad

        return context()

    def retry(self, exc: BaseException) -> bool:
        """True (once) when the batch failed with autograd on and the error names autograd
        (grad, in-place, leaf, inference tensors, backward, version): the fused pass is switched
        off and the batch can run again as usual. Anything else takes the loop's usual way."""
        aborted, self._aborted = self._aborted, False
        if not aborted or is_out_of_memory(exc) or not AUTOGRAD_ERROR.search(messages(exc)):
            return False
        self._disabled = True
        self.state.records.clear()
        return True

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor if self._after else None  # before the target: never needed by the backward

    @staticmethod
    def _unpack(packed: torch.Tensor | None) -> torch.Tensor:
        if packed is None:
            raise RuntimeError("a tensor from before the Grad-CAM layer was needed")
        return packed

    def forward_start(self) -> None:
        if not self._armed or self._stack is not None:
            return
        stack = ExitStack()
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        self._stack, self._after, self._captured = stack, False, Captured()

    def _close(self) -> None:
        self._captured = Captured()  # drop the graph with its references
        self._after = False
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def layer_call(self, call: LayerCall) -> None:
        tensor = first_tensor(call.output)
        if self._stack is None or tensor is None or not tensor.is_floating_point():
            return
        edge = torch.autograd.graph.get_gradient_edge(tensor) if tensor.requires_grad else None
        if call.name == self.layer:
            self._captured.keep(call.module, tensor)
            self._captured.edge = edge
            self._after = True
        self._captured.edges.setdefault(call.name, []).append(edge)

    def forward_end(self, output: Any) -> None:
        if self._stack is None:
            return
        staged = self.staged
        try:
            if output is None:  # the forward raised: maybe because autograd was on
                self._aborted = True
                staged.failure = "the model's forward failed with autograd on"
                return
            anchor = first_tensor(output)
            if anchor is None:
                return
            captured = self._captured
            activation = captured.activation
            logits = find_logits(output, activation.shape[0] if activation is not None else None)
            reaches = self.state.reaches if self.state.reaches is not None else staged.reaches
            if reaches is None:  # reaching any output counts, logits or not
                reaches = staged.reaches = reachability(logits if logits is not None else anchor, captured.edges)
            if logits is None:
                staged.failure = staged.failure or "the model's output holds no (batch, classes) logits"
                return
            usable = (logits.dim() == 2 and logits.shape[1] >= 2 and logits.grad_fn is not None
                      and activation is not None and captured.edge is not None
                      and has_map_axes(activation) and reaches.get(self.layer) is not False)
            if not usable:
                staged.failure = staged.failure or "no gradient path from the Grad-CAM layer to a (batch, classes) output"
                return
            stop = self._offset + logits.shape[0]
            for record in maps(logits, captured, self.inputs, self._offset, stop):
                if record.input_index < self.count:
                    staged.records[(record.input_index, record.kind)] = record
        except Exception as exc:  # the main pass must go on: the caller falls back to grad_cam
            staged.failure = one_line(exc)
        finally:
            self._close()

    def result(self, total: int) -> CamResult | None:
        """The maps of inputs 0..min(count, total)-1, or None when they are not all there."""
        state = self.state
        wanted = min(self.count, total)
        if state.failure or state.reaches is None or any((i, "predicted") not in state.records for i in range(wanted)):
            return None
        ordered = tuple(state.records[key] for key in sorted(state.records))
        return CamResult(self.layer, ordered, dict(state.reaches))
