"""Faults during a run, recognised and turned into something the report can say.

- Out of memory (CUDA, MPS, the CPU allocator, Python's MemoryError) is recognised anywhere in
  an exception's cause chain, so `analyze` can halve the batch and retry instead of failing.
- A model with uninitialised lazy parameters (`nn.LazyConv2d`, ...) would be changed by the
  first forward pass (and, inside `torch.inference_mode`, left with inference tensors that can
  never be trained again). The run uses a deep copy instead and says so.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from reportgen.errors import ReportError, one_line

if TYPE_CHECKING:
    from reportgen.checkpoints import LoadedModel

OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",  # DefaultCPUAllocator
    "not enough memory",
)


def causes(exc: BaseException) -> list[BaseException]:
    """The exception, its cause, the cause's cause, ... (cycle-safe)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and all(seen is not c for c in chain):
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def is_out_of_memory(exc: BaseException) -> bool:
    """True if `exc` or anything that caused it is an allocator running out of memory."""
    for item in causes(exc):
        if isinstance(item, (torch.cuda.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(item, RuntimeError) and any(text in str(item).lower() for text in OOM_MESSAGES):
            return True
    return False


def release_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back after an out-of-memory error."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps":
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache"):
            mps.empty_cache()


def lazy_modules(model: nn.Module) -> list[str]:
    """Qualified names of modules whose parameters are not yet initialised."""
    from torch.nn.modules.lazy import LazyModuleMixin

    return [
        name or type(module).__name__
        for name, module in model.named_modules()
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()
    ]


def copy_if_lazy(loaded: LoadedModel) -> LoadedModel:
    """The loaded model, or a deep copy of it when a forward pass would initialise it."""
    names = lazy_modules(loaded.module)
    if not names:
        return loaded
    try:
        module = copy.deepcopy(loaded.module)
    except Exception as exc:
        raise ReportError(
            f"model has uninitialised lazy layers ({', '.join(names[:3])}) and cannot be copied "
            f"({one_line(exc)}): run one forward pass on a real input before asking for a report"
        ) from exc
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    note = (f"Lazy layers ({shown}) had no weights yet: the report ran on a copy whose first forward "
            "pass initialised them at random, so their filters show that initialisation. "
            "The model itself was left uninitialised.")
    return replace(loaded, module=module, notes=[*loaded.notes, note])
