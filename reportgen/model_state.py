"""Leave the model exactly as we found it: training flags, device, and no stray hooks; and the
RNG seeded around a random init, put back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from reportgen.devices import model_device


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own `training` flag, not just the root's.

    `model.train(flag)` would overwrite mixed modes (a frozen BatchNorm in eval inside a
    training model), so each flag is saved and put back one by one.
    """
    saved = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move the model to `device` for the run and back afterwards, also on error."""
    original = model_device(model)
    moved = original != device
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(original)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's RNGs seeded with `seed` inside, put back as they were afterwards (CUDA's only if
    already initialised: forking it would initialise CUDA for a CPU run; one initialised inside
    starts from the seed). Here, below the load stage, so every model loader can seed its init."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
