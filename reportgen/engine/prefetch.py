"""Decoding off the critical path: the inputs of the next batches are decoded and preprocessed in
`torch.utils.data.DataLoader` worker processes while the model runs the current one.

The input set's own loader is what the workers run (inherited by fork, never pickled), so each
input is made by the same function as with no workers: the same bytes. The workers decode the
pass's inputs in the order the pass will ask for them, one input per item, and keep at most
`lookahead` inputs decoded ahead, so memory stays flat. A failure is not raised in the worker:
it comes back with its input and is raised in the main process at the moment that input is
asked for. That keeps leaving out an unreadable file where it was (inputs.py): it is the main
process that asks for inputs in order and changes the input set, exactly as with no workers.
An input asked for out of the workers' order (a batch run again after running out of memory)
is loaded in the main process.

Processes, not threads: decoding holds the GIL for much of its Python work, and a worker
process takes it off the core that runs the model. They are forked, which keeps the loader's
closures and needs no pickling; where fork is unavailable (not on Linux), inputs decode in the
main process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset

from reportgen.inputs import InputSet

Decoded = tuple[int, "torch.Tensor | None", "BaseException | None"]  # (loader id, input, its failure)


def default_workers() -> int:
    """One decoding process per core beyond the first, at most 4 (0 on one core)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class _Decoding(Dataset):
    """Item k: the k-th input of the plan, decoded by the set's loader, or why it failed."""

    def __init__(self, load: Callable[[int], torch.Tensor], plan: Sequence[int]) -> None:
        self.load = load
        self.plan = list(plan)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, position: int) -> Decoded:
        raw = self.plan[position]
        try:
            return raw, self.load(raw), None
        except Exception as exc:  # raised in the main process when this input is asked for
            return raw, None, _portable(exc)


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (it crosses to the main process), else a RuntimeError
    that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _as_is(item: Decoded) -> Decoded:
    return item


class Prefetcher:
    """Hands out inputs of `plan` (loader ids, in the order the pass asks for them) decoded by
    worker processes; anything else is loaded here."""

    def __init__(self, inputs: InputSet, plan: Sequence[int], workers: int, lookahead: int) -> None:
        self._load = inputs.loader
        self._position = {raw: k for k, raw in enumerate(plan)}
        self._pulled = 0  # items of the plan taken from the workers so far
        self._ready: dict[int, Decoded] = {}
        self._lookahead = max(1, lookahead)
        loader = DataLoader(_Decoding(self._load, plan), batch_size=None, shuffle=False, num_workers=workers,
                            collate_fn=_as_is, prefetch_factor=max(2, math.ceil(self._lookahead / workers)),
                            multiprocessing_context="fork")
        self._stream: Iterator[Decoded] | None = iter(loader)

    def load(self, raw: int) -> torch.Tensor:
        item = self._ready.pop(raw, None) or self._pull_until(raw)
        if item is None:
            return self._load(raw)
        _, tensor, failure = item
        if failure is not None:
            raise failure
        assert tensor is not None
        return tensor

    def _pull_until(self, raw: int) -> Decoded | None:
        """Take decoded inputs from the workers up to `raw`, keeping those before it; None when
        `raw` is not coming (not in the plan, already taken, or further ahead than the lookahead)."""
        position = self._position.get(raw)
        if self._stream is None or position is None or not 0 <= position - self._pulled < self._lookahead:
            return None
        while self._pulled <= position:
            item = next(self._stream)
            self._pulled += 1
            if item[0] == raw:
                return item
            self._ready[item[0]] = item
        return None

    def close(self) -> None:
        self._stream = None  # the iterator's finaliser stops the workers
        self._ready.clear()


@contextmanager
def prefetching(inputs: InputSet, workers: int, lookahead: int, first: int, stop: int) -> Iterator[bool]:
    """While inside, inputs first..stop-1 (the pass's, in order) decode in `workers` processes;
    yields whether they do. Inputs that are not files (tensors in memory) have nothing to decode
    and load as before. The set's loader is put back on exit."""
    plan = [inputs.loader_index[i] if inputs.loader_index else i for i in range(first, min(stop, len(inputs)))]
    if workers <= 0 or not plan or not can_fork() or not any(inputs.paths):
        yield False
        return
    prefetcher = Prefetcher(inputs, plan, workers, lookahead)
    original = inputs.loader
    inputs.loader = prefetcher.load
    try:
        yield True
    finally:
        inputs.loader = original
        prefetcher.close()
