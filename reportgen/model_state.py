"""Leave the model exactly as we found it: training flags, device, and no stray hooks."""

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
