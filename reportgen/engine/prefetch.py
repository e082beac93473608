"""Decoding off the critical path: the inputs of the next batches are decoded and preprocessed in
`torch.utils.data.DataLoader` worker processes while the model runs the current one.

The input set's own loader is what the workers run (inherited by fork, never pickled), so each
input is made by the same function as with no workers: the same bytes. The workers decode the
pass's inputs in the order the pass will ask for them, a batch's worth per item (one transfer
between processes per batch), and keep at most `lookahead` inputs decoded ahead, so memory stays
flat. A failure is not raised in the worker: it comes back with its input and is raised in the
main process at the moment that input is asked for. That keeps leaving out an unreadable file
where it was (inputs.py): it is the main process that asks for inputs in order and changes the
input set, exactly as with no workers. An input asked for out of the workers' order (a batch
run again after running out of memory) is loaded in the main process.

Processes, not threads: a worker's Python work (opening files, PIL calls, each preprocessing
step) never takes the GIL from the thread that runs the model and its collectors. They are
forked, which keeps the loader's closures and needs no pickling; where fork is unavailable
(not on Linux), inputs decode in the main process.
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

# (loader ids decoded, their inputs (stacked when of one shape), the failures by loader id)
Chunk = tuple[tuple[int, ...], "torch.Tensor | list[torch.Tensor]", "dict[int, BaseException]"]


def default_workers() -> int:
    """One decoding process per core beyond the first, at most 4 (0 on one core). Under
    torchrun the cores are shared by the node's ranks (LOCAL_WORLD_SIZE): each rank counts its
    share, so 2 ranks on 2 cores decode on their own threads instead of crowding 4 processes
    onto 2 cores."""
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(4, (os.cpu_count() or 1) // ranks_here - 1))


def decoding_workers(requested: int | None) -> int:
    """`requested` decoding processes, or `default_workers()` when none was asked for."""
    return default_workers() if requested is None else requested


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class _Decoding(Dataset):
    """Item k: the k-th chunk of the plan (`chunk` inputs in a row), each input decoded by the
    set's loader or with why it failed. The inputs of a chunk that decoded to one shape travel
    stacked in one tensor: one transfer between processes per chunk, not per input (each costs
    ~2 ms: 1 s over 512 inputs)."""

    def __init__(self, load: Callable[[int], torch.Tensor], plan: Sequence[int], chunk: int) -> None:
        self.load = load
        self.plan = list(plan)
        self.chunk = chunk

    def __len__(self) -> int:
        return math.ceil(len(self.plan) / self.chunk)

    def __getitem__(self, index: int) -> Chunk:
        raws = self.plan[index * self.chunk:(index + 1) * self.chunk]
        decoded: dict[int, torch.Tensor] = {}
        failures: dict[int, BaseException] = {}
        for raw in raws:
            try:
                decoded[raw] = self.load(raw)
            except Exception as exc:  # raised in the main process when this input is asked for
                failures[raw] = _portable(exc)
        shapes = {(tensor.shape, tensor.dtype) for tensor in decoded.values()}
        if len(shapes) == 1:
            return tuple(decoded), torch.stack(list(decoded.values())), failures
        return tuple(decoded), list(decoded.values()), failures


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (it crosses to the main process), else a RuntimeError
    that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _as_is(item: Chunk) -> Chunk:
    return item


class Prefetcher:
    """Hands out inputs of `plan` (loader ids, in the order the pass asks for them) decoded by
    worker processes, `chunk` at a time; anything else is loaded here."""

    def __init__(self, inputs: InputSet, plan: Sequence[int], workers: int, lookahead: int, chunk: int) -> None:
        self._load = inputs.loader
        self._chunk = max(1, chunk)
        self._position = {raw: k for k, raw in enumerate(plan)}
        self._pulled = 0  # chunks taken from the workers so far
        self._ready: dict[int, torch.Tensor | BaseException] = {}
        self._ahead = max(1, math.ceil(lookahead / self._chunk))  # chunks decoded ahead, all workers
        loader = DataLoader(_Decoding(self._load, plan, self._chunk), batch_size=None, shuffle=False,
                            num_workers=workers, collate_fn=_as_is,
                            prefetch_factor=max(1, math.ceil(self._ahead / workers)), multiprocessing_context="fork")
        self._stream: Iterator[Chunk] | None = iter(loader)

    def load(self, raw: int) -> torch.Tensor:
        found = self._ready.pop(raw, None)
        if found is None and self._pull_until(raw):
            found = self._ready.pop(raw, None)
        if found is None:
            return self._load(raw)
        if isinstance(found, BaseException):
            raise found
        return found

    def _pull_until(self, raw: int) -> bool:
        """Take decoded chunks from the workers up to the one holding `raw`; False when `raw`
        is not coming (not in the plan, already taken, or further ahead than the lookahead)."""
        position = self._position.get(raw)
        if self._stream is None or position is None:
            return False
        wanted = position // self._chunk
        if not 0 <= wanted - self._pulled < self._ahead:
            return False
        while self._pulled <= wanted:
            raws, tensors, failures = next(self._stream)
            self._pulled += 1
            self._ready.update(zip(raws, tensors))  # a stacked chunk gives views of its rows
            self._ready.update(failures)
        return True

    def close(self) -> None:
        self._stream = None  # the iterator's finaliser stops the workers
        self._ready.clear()


@contextmanager
def prefetching(inputs: InputSet, workers: int, lookahead: int, first: int, stop: int,
                chunk: int = 1) -> Iterator[bool]:
    """While inside, inputs first..stop-1 (the pass's, in order) decode in `workers` processes;
    yields whether they do. Inputs that are not files (tensors in memory) have nothing to decode
    and load as before. The set's loader is put back on exit."""
    plan = [inputs.loader_index[i] if inputs.loader_index else i for i in range(first, min(stop, len(inputs)))]
    if workers <= 0 or not plan or not can_fork() or not any(inputs.paths):
        yield False
        return
    prefetcher = Prefetcher(inputs, plan, workers, lookahead, chunk)
    original = inputs.loader
    inputs.loader = prefetcher.load
    try:
        yield True
    finally:
        inputs.loader = original
        prefetcher.close()
