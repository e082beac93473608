"""What a model file holds: the `LoadedModel` record and checkpoint reading.

Below `models.py` (MODEL specs) and `model_files.py` (one-file models), which both build a
`LoadedModel` and read checkpoints: kept here so neither has to import the other back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reportgen.errors import ReportError, one_line
from reportgen.inputs import file_sha256
from reportgen.preprocess import Preprocessing
from reportgen.untrusted import check_archive

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    source: str
    file: str | None = None
    sha256: str | None = None
    random_weights: bool = False
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    input_shape: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)
    batch_size: int | None = None  # the only batch size the model takes (a torch.export program)
    # How random weights were made, e.g. "torchvision default init, seed 0"; None when loaded.
    init: str | None = None


def sha256_of(path: Path) -> str:
    return file_sha256(path)


def unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state_dict inside a checkpoint: nested under the usual keys, or the dict itself."""
    seen = checkpoint
    for _ in range(4):
        if isinstance(seen, nn.Module):
            return seen.state_dict()
        if not isinstance(seen, Mapping):
            break
        if seen and all(isinstance(v, torch.Tensor) for v in seen.values()):
            return dict(seen)
        nested = next((seen[k] for k in STATE_DICT_KEYS if k in seen and isinstance(seen[k], (Mapping, nn.Module))), None)
        if nested is None:
            break
        seen = nested
    raise ReportError(f"{path} holds no state_dict (looked under {', '.join(STATE_DICT_KEYS)})")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) from every key."""
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def read_checkpoint(path: Path, *, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise ReportError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ReportError(f"{path}: reading .safetensors needs `pip install safetensors`") from exc
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ReportError(f"cannot read {path}: {one_line(exc)}") from exc
    check_archive(path)  # a zip bomb would be inflated in full before torch.load could fail
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        message = str(exc)
        if not trust_pickle and ("weights_only" in message or "Unsupported global" in message):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
            what = f" (it pickles {found.group(1)})" if found else ""
            raise ReportError(
                f"{path} contains pickled Python objects{what}, refused: loading it with "
                "weights_only=False could run arbitrary code; pass --trust-pickle only if you trust its source"
            ) from exc
        raise ReportError(f"cannot read checkpoint {path}: {one_line(exc)}") from exc


def apply_checkpoint(loaded: LoadedModel, path: Path, *, trust_pickle: bool) -> None:
    """Load a state_dict strictly; a mismatch lists missing, unexpected and mis-shaped keys."""
    state = strip_prefixes(unwrap_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), path))
    model_state = loaded.module.state_dict()
    # Old checkpoints have no BatchNorm counters; PyTorch fills those in itself.
    expected = {k for k in model_state if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model_state))
    conflicts = sorted(
        f"{k} {list(state[k].shape)} vs {list(model_state[k].shape)}"
        for k in set(state) & set(model_state)
        if hasattr(state[k], "shape") and state[k].shape != model_state[k].shape
    )
    if missing or unexpected or conflicts:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}")
        if conflicts:
            parts.append(f"shape conflicts e.g. {', '.join(conflicts[:2])}")
        raise ReportError(f"checkpoint {path} does not fit {loaded.name}: " + "; ".join(parts))
    try:
        loaded.module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ReportError(f"checkpoint {path} does not fit {loaded.name}: {one_line(exc)}") from exc
    loaded.file = str(path)
    loaded.sha256 = sha256_of(path)
    loaded.random_weights = False
    loaded.init = None
    loaded.source += f", weights from {path.name}"
