"""Decoding off the critical path: the inputs of the next batches are loaded (decoded and
preprocessed) on worker threads while the model runs the current one.

The input set's own loader is wrapped, so everything it does stays where it was: the same
function loads each input (same bytes), exceptions reach the caller at the moment the input is
asked for, and an unreadable file is still left out in order (inputs.py), because the order in
which inputs are taken is the main thread's. Threads, not processes: leaving a file out changes
the input set itself, which a worker process could not tell the main one. Decoding (PIL, torch
ops) runs outside the GIL. At most `lookahead` inputs wait decoded, so memory stays flat.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

from reportgen.inputs import InputSet


def default_workers() -> int:
    """One decoding thread per core beyond the first, at most 4 (0 on one core)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class Prefetcher:
    def __init__(self, inputs: InputSet, workers: int, lookahead: int) -> None:
        self.inputs = inputs
        self.lookahead = max(1, lookahead)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reportgen-decode")
        self._waiting: dict[int, Future[torch.Tensor]] = {}  # loader id -> its decode
        self._load = inputs.loader

    def load(self, raw: int) -> torch.Tensor:
        waiting = self._waiting.pop(raw, None)
        return waiting.result() if waiting is not None else self._load(raw)

    def ahead(self, start: int, stop: int) -> None:
        """Start decoding inputs start..stop-1 (input indices of the set as it is now)."""
        for index in range(start, min(stop, len(self.inputs))):
            if len(self._waiting) >= self.lookahead:
                return
            raw = self.inputs.loader_index[index] if self.inputs.loader_index else index
            if raw not in self._waiting:
                self._waiting[raw] = self._pool.submit(self._load, raw)

    def close(self) -> None:
        for waiting in self._waiting.values():
            waiting.cancel()
        self._pool.shutdown(wait=True)
        self._waiting.clear()


@contextmanager
def prefetching(inputs: InputSet, workers: int, lookahead: int) -> Iterator[Callable[[int, int], None] | None]:
    """Yields `ahead(start, stop)` that starts decoding those inputs (None with no workers);
    the set's loader is put back on exit."""
    if workers <= 0:
        yield None
        return
    prefetcher = Prefetcher(inputs, workers, lookahead)
    original = inputs.loader
    inputs.loader = prefetcher.load
    try:
        yield prefetcher.ahead
    finally:
        inputs.loader = original
        prefetcher.close()
