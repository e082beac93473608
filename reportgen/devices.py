"""Choosing the device to run on, and finding where a model already lives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from reportgen.errors import ReportError


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; anything else must exist on this machine."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ReportError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ReportError(f"device {spec!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ReportError(
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ReportError(f"device {spec!r} asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise ReportError(f"unsupported device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer; CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype inputs should be cast to (float16/bfloat16 models get theirs)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@contextmanager
def one_cpu_thread(applies: bool = True) -> Iterator[None]:
    """One intra-op CPU thread inside the block (when `applies`), put back afterwards.

    For CPU work made of many small ops (weight statistics, per-input crops), where OpenMP's
    fork, join and spin-waiting cost more than a second thread saves: measured 2.1 s wall with
    2 threads on a busy 2-core machine against 0.06 s CPU with 1 for resnet18's weight
    statistics; on a 16-core GPU machine the crops of 64 inputs took ~1 s of small pooling ops.
    """
    if not applies:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
