"""The one batch loop of every pass over the inputs.

`run_batches` loads inputs start..stop-1, casts them to the pass's device and the model's dtype,
hands each `Batch` to a step function (the main pass's forward with its collectors, one ablation
round, one probe round, the Grad-CAM fallback), reports progress, and recovers from running out
of memory: when the pass's work is transactional (`transaction`: the collectors' staging), a
batch that runs out of memory is undone and run again at half the size, and the smaller size is
kept for the rest of the pass (`notes` says so). A batch whose failure a collector can avoid
(`Transaction.retry`: Grad-CAM switching autograd off) is undone and run again as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from reportgen.engine.collector import Batch
from reportgen.engine.prefetch import prefetching
from reportgen.errors import ReportError
from reportgen.faults import is_out_of_memory, release_cached_memory
from reportgen.inputs import InputSet


class Transaction(Protocol):
    def begin(self, batch: Batch) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...
    def retry(self, exc: BaseException) -> bool: ...


Step = Callable[[Batch], None]


class StopPass(Exception):
    """Raised by a step to end its pass early; `run_batches` returns normally."""


def load_batch(inputs: InputSet, start: int, stop: int, device: torch.device, dtype: torch.dtype,
               host: torch.Tensor | None = None) -> Batch:
    """Inputs start..stop-1 as a `Batch` (`host`: already loaded, e.g. to learn the sites)."""
    loaded = host if host is not None else inputs.batch(start, stop)
    tensor = loaded.to(device=device, dtype=dtype if loaded.is_floating_point() else None)
    return Batch(start, stop, loaded, tensor, tuple(inputs.label(i) for i in range(start, stop)))


def run_batches(
    inputs: InputSet,
    step: Step,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
    first: int = 0,
    count: int | None = None,
    transaction: Transaction | None = None,
    progress: Callable[[int], None] | None = None,
    notes: list[str] | None = None,
    preloaded: Batch | None = None,
    workers: int = 0,
) -> None:
    """Run `step` over inputs first..count-1 (count: all by default) in batches of `batch_size`.

    `first`: where a share of the inputs starts (a process's shard; indices stay global).
    `preloaded`: the first batch, already loaded (used when it has the same bounds).
    `workers`: processes that decode the next batches while this one runs (engine/prefetch.py).
    """
    stop = len(inputs) if count is None else min(count, len(inputs))
    decode_from = preloaded.stop if preloaded is not None and preloaded.start == first else first
    with prefetching(inputs, workers, lookahead=2 * max(1, batch_size), first=decode_from, stop=stop,
                     chunk=max(1, batch_size)):
        _run(inputs, step, device=device, dtype=dtype, batch_size=batch_size, first=first, count=count,
             transaction=transaction, progress=progress, notes=notes, preloaded=preloaded)


def _run(inputs: InputSet, step: Step, *, device: torch.device, dtype: torch.dtype, batch_size: int, first: int,
         count: int | None, transaction: Transaction | None, progress: Callable[[int], None] | None,
         notes: list[str] | None, preloaded: Batch | None) -> None:
    size = max(1, batch_size)
    start = first
    # the end is asked again each batch: an unreadable file left out (inputs.py) shortens the set
    while start < (total := len(inputs) if count is None else min(count, len(inputs))):
        stop = min(start + size, total)
        if preloaded is not None and (preloaded.start, preloaded.stop) == (start, stop):
            batch = preloaded
        else:
            batch = load_batch(inputs, start, stop, device, dtype)
        if transaction is not None:
            transaction.begin(batch)
        try:
            step(batch)
        except StopPass:
            if transaction is not None:
                transaction.commit()
            return
        except Exception as exc:
            if transaction is None:
                raise
            transaction.discard()
            if transaction.retry(exc):
                continue
            if not is_out_of_memory(exc) or stop - start == 1:
                if is_out_of_memory(exc):
                    hint = "smaller inputs" if device.type == "cpu" else "--device cpu or smaller inputs"
                    raise ReportError(f"out of memory on input {inputs.names[start]} even with a batch of 1 "
                                      f"on {device}: try {hint}") from exc
                raise
            release_cached_memory(device)
            size = max(1, (stop - start) // 2)
            if notes is not None:
                notes.append(f"Out of memory on a batch of {stop - start} input(s) starting at "
                             f"{inputs.names[start]}: that batch's partial results were discarded and the "
                             f"run went on with batches of {size}.")
            continue
        if transaction is not None:
            transaction.commit()
        if progress is not None:
            progress(stop - start)
        start = stop
