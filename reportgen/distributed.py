"""Runs under torchrun: the process group, each rank's share of the inputs, and the exchanges.

`start()` sees torchrun's environment (WORLD_SIZE > 1 with RANK, LOCAL_RANK and the rendezvous
variables) and joins the process group: gloo on the CPU, NCCL when every rank has a CUDA device
of its own (`LOCAL_RANK`). Each rank takes a contiguous run of whole batches (`Group.share`):
no input is duplicated or dropped (no DistributedSampler padding), and the batches are the ones
a single process would run, so every per-batch result is the same. After a pass the ranks first
agree that all of them succeeded (`Group.agree`: a failure on any rank ends the run on every
rank, with one error line on rank 0), then rank 0 receives every rank's collector states and
merges them (`Group.gather`); only rank 0 renders and writes.

Tensors travel on the CPU (`move`), so a state merged on rank 0 never mixes devices.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch

from reportgen.errors import RankFailed, ReportError

TIMEOUT_S = float(os.environ.get("REPORTGEN_DIST_TIMEOUT", "600"))  # a rank that never arrives


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_world: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def machines(self) -> int:
        return max(1, self.world // max(1, self.local_world))

    def shares(self, total: int, batch_size: int) -> list[tuple[int, int]]:
        """(first, stop) input indices of every rank: contiguous whole batches, as even as the
        batch count allows, the larger shares first (rank 0, which draws the summary and the
        shown inputs, always has the first batch; a last rank may get none)."""
        size = max(1, batch_size)
        batches = -(-total // size)
        bounds = [-(-batches * r // self.world) for r in range(self.world + 1)]
        return [(min(bounds[r] * size, total), min(bounds[r + 1] * size, total)) for r in range(self.world)]

    def share(self, total: int, batch_size: int) -> tuple[int, int]:
        return self.shares(total, batch_size)[self.rank]

    def agree(self, error: BaseException | None) -> None:
        """Every rank says whether its part succeeded; if any failed, every rank raises: rank 0
        the first failure (a ReportError keeps its one line), the others `RankFailed`."""
        message = None
        if error is not None:
            text = str(error) if isinstance(error, ReportError) else f"{type(error).__name__}: {error}"
            message = (isinstance(error, ReportError), text)
        statuses: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(statuses, message)
        failed = [(rank, status) for rank, status in enumerate(statuses) if status is not None]
        if not failed:
            return
        rank, (user_error, text) = failed[0]
        if not self.main:  # rank 0 says what failed, with the type of a bug
            raise RankFailed(2 if user_error else 1)
        if error is not None and rank == 0:
            raise error
        where = f"rank {rank} of {self.world}"
        if user_error:
            raise ReportError(f"{where}: {text}")
        raise RuntimeError(f"{where}: {text}")

    def gather(self, payload: Any) -> list[Any] | None:
        """Every rank's `payload` (tensors moved to the CPU) on rank 0, in rank order; None on
        the other ranks."""
        payload = move(payload, torch.device("cpu"))
        found: list[Any] | None = [None] * self.world if self.main else None
        torch.distributed.gather_object(payload, found, dst=0)
        return found

    def broadcast(self, payload: Any) -> Any:
        """Rank 0's `payload`, on every rank."""
        box = [move(payload, torch.device("cpu")) if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def describe(self) -> str:
        machines = self.machines
        return (f"Run by {self.world} processes on {machines} machine{'s' if machines != 1 else ''} "
                f"(torchrun, {self.backend}): each took a contiguous share of whole batches, and "
                "every statistic was merged on rank 0.")


_GROUP: Group | None = None


def current() -> Group | None:
    """The group this process runs in (None: a single process)."""
    return _GROUP


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def start(device: torch.device) -> Group | None:
    """Join torchrun's process group (once); None when not under torchrun with 2+ processes."""
    global _GROUP
    if _GROUP is not None or not under_torchrun():
        return _GROUP
    import torch.distributed as dist

    if not dist.is_available():
        raise ReportError("torchrun started several processes, but this torch has no torch.distributed")
    backend = "nccl" if device.type == "cuda" and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    _GROUP = Group(rank=dist.get_rank(), world=dist.get_world_size(),
                   local_world=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), backend=backend)
    return _GROUP


def stop() -> None:
    """Leave the process group (at the end of a command)."""
    global _GROUP
    if _GROUP is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _GROUP = None


def device_for(device: torch.device) -> torch.device:
    """Each rank its own CUDA device (`LOCAL_RANK`) when the run is on CUDA."""
    if device.type == "cuda" and under_torchrun() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def move(value: Any, device: torch.device, _seen: set[int] | None = None) -> Any:
    """`value` with every tensor inside it (dataclasses, objects, dicts, lists, tuples) on
    `device`; containers are changed in place where they can be (the caller's own copy)."""
    seen = set() if _seen is None else _seen
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    seen.add(id(value))
    if isinstance(value, dict):
        for key in list(value):
            value[key] = move(value[key], device, seen)
        return value
    if isinstance(value, list):
        value[:] = [move(item, device, seen) for item in value]
        return value
    if isinstance(value, tuple):
        moved = tuple(move(item, device, seen) for item in value)
        return type(value)(*moved) if hasattr(value, "_fields") else moved
    if is_dataclass(value) and not isinstance(value, type):
        for item in fields(value):
            object.__setattr__(value, item.name, move(getattr(value, item.name), device, seen))
        return value
    if hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        for name, item in vars(value).items():
            setattr(value, name, move(item, device, seen))
    return value


def merged_order(orders: Sequence[dict[str, int]]) -> dict[str, int]:
    """Layer call keys in the order rank 0 first ran them, then any only other ranks saw."""
    keys: dict[str, int] = {}
    for order in orders:
        for key in sorted(order, key=order.__getitem__):
            keys.setdefault(key, len(keys))
    return keys
