"""The protocol of the analyses that ride a pass (collectors), and the events they are handed.

A collector owns nothing but its state (no hooks, no loop). The engine hands it, per batch:
`begin(batch)`, then during the forward `forward_start()`, `layer_call(call)` for each call of
a module it named in `layers`, `observe(observation)` for each selected layer call (when it sets
`observes`), `forward_end(output)`; and after the batch either `commit()` (the whole batch
succeeded) or `discard()` (it failed and is undone, maybe to run again at half the size).

What a batch adds is staged in a state of its own (`self.staged`, made by `empty()`), and commit
is merge: `self.state.merge(self.staged)`. Every state merges another exactly (counts and sums
add, maxima take the max, top-k lists keep the best with ties broken by input index, per-input
pictures are a union), so a pass split over processes merges to the same result
(`Collector.merge`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from reportgen.capture import RowReductions, Scratch, as_rows, reduce_rows
from reportgen.sites import Site


class State(Protocol):
    def merge(self, other: Any) -> None:
        """Add `other` (a state of the same kind) into this one, exactly."""


S = TypeVar("S", bound=State)


@dataclass(frozen=True)
class Batch:
    """One batch of a pass: global input indices start..stop-1."""

    start: int
    stop: int
    host: torch.Tensor  # as loaded, on the CPU, before any cast
    tensor: torch.Tensor  # on the pass's device, in the model's dtype
    labels: tuple[int | None, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class LayerCall:
    """One call of a hooked module during a forward: its raw arguments and output."""

    name: str
    call_index: int
    key: str  # call_key(name, call_index)
    module: nn.Module
    args: Any
    output: Any
    kwargs: dict[str, Any] = field(default_factory=dict)  # the keyword arguments of the call


@dataclass
class _SharedReductions:
    """One tensor's rows and `reduce_rows`, computed the first time a collector asks, once for
    every layer call observed at it (two convs that share an activation site share them)."""

    tensor: torch.Tensor
    scratch: Scratch | None
    _rows: tuple[torch.Tensor, torch.Tensor] | None = None
    _reduced: RowReductions | None = None

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is None:
            self._rows = as_rows(self.tensor)
        return self._rows

    def reduced(self) -> RowReductions:
        if self._reduced is None:
            self._reduced = reduce_rows(self.rows()[1], self.scratch)
        return self._reduced


@dataclass(frozen=True)
class Observation:
    """A selected layer call observed where the report observes it (its activation site, or the
    raw output and why), with the per-row reductions every collector shares."""

    key: str
    name: str
    call_index: int
    module_type: str
    site: Site
    tensor: torch.Tensor
    shared: _SharedReductions = field(repr=False)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor as float32, and as (N, C, S) rows (capture.as_rows)."""
        return self.shared.rows()

    def reduced(self) -> RowReductions:
        """Per input and channel max, min, sum; per channel count of values > 0 (computed once)."""
        return self.shared.reduced()


class Collector(ABC, Generic[S]):
    """Base of every collector: staging, commit as merge, discard (see the module doc).

    Subclasses define `empty()` (a fresh state) and fill `self.staged` from the events they use.
    """

    layers: tuple[str, ...] = ()  # modules whose every call this collector is handed (`layer_call`)
    observes: bool = False  # handed every selected layer call's `Observation`

    def __init__(self) -> None:
        self.state: S = self.empty()
        self._staged: S | None = None
        self.batch: Batch | None = None  # the batch being staged (None between batches)

    @abstractmethod
    def empty(self) -> S:
        """A fresh state: what a batch is staged in, and what the pass starts from."""

    @property
    def staged(self) -> S:
        if self._staged is None:
            raise RuntimeError(f"{type(self).__name__}: no batch is staged")
        return self._staged

    # -- the engine's calls, in order --
    def begin(self, batch: Batch) -> None:
        self._staged = self.empty()
        self.batch = batch

    def batch_context(self, batch: Batch) -> AbstractContextManager[Any]:
        """Entered around the batch's forward (Grad-CAM leaves inference mode for its batches)."""
        return nullcontext()

    def forward_start(self) -> None:
        """Each forward of the batch starts (a failed torchinfo walk runs the batch again)."""

    def layer_call(self, call: LayerCall) -> None:
        """A call of one of `layers`, with its raw output."""

    def observe(self, observation: Observation) -> None:
        """A selected layer call, observed (only when `observes`)."""

    def forward_end(self, output: Any) -> None:
        """The forward returned `output` (None: it raised)."""

    def commit(self) -> None:
        self.state.merge(self.staged)
        self._staged = None
        self.batch = None

    def discard(self) -> None:
        self._staged = None
        self.batch = None

    def retry(self, exc: BaseException) -> bool:
        """After the batch failed with `exc`: True when this collector switched something off
        (Grad-CAM's autograd) so that the same batch can run again as usual."""
        return False

    # -- after the pass --
    def merge(self, other: Collector[S]) -> None:
        """Add another instance's committed state (another process's share of the pass)."""
        self.merge_state(other.state)

    def merge_state(self, state: S) -> None:
        """Add a committed state (another rank's, received by rank 0)."""
        self.state.merge(state)

    def notes(self) -> tuple[str, ...]:
        """Sentences the report should carry about this collector's pass."""
        return ()
