"""What a model file holds: the `LoadedModel` record and checkpoint reading.

Below `models.py` (MODEL specs) and `model_files.py` (one-file models), which both build a
`LoadedModel` and read checkpoints: kept here so neither has to import the other back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reportgen.errors import ReportError, one_line
from reportgen.inputs import file_sha256
from reportgen.preprocess import Preprocessing
from reportgen.untrusted import check_archive

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
# Entries holding an exponential moving average of the weights next to the raw ones (timm's
# train script, EMA callbacks): chosen only with --weights-key, the raw weights being the default.
EMA_KEYS = ("state_dict_ema", "model_ema")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
MODEL_KINDS = ("torchvision", "timm", "hf", "factory", "file", "demo", "module")
LISTED_KEYS = 3  # tensor names an error message or a note names before "..."


@dataclass(frozen=True)
class CheckpointUse:
    """How a checkpoint's tensors became the model's weights, for the report."""

    key: str | None = None  # the entry they were read from ("state_dict", "model/state_dict"); None: the file is one
    choices: tuple[str, ...] = ()  # the entries holding weights, when there was more than one (raw and EMA)
    prefix: str | None = None  # the key prefix stripped ("model." of a LightningModule, "module."); None: none
    left_at_init: tuple[str, ...] = ()  # --weights-partial: the model's tensors nothing in the file fitted
    unused: tuple[str, ...] = ()  # --weights-partial: the file's tensors that fitted nothing


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
    kind: str = "module"  # MODEL_KINDS: how MODEL was given ("module": an object passed to the Python API)
    checkpoint: CheckpointUse | None = None  # set when weights were read from a checkpoint


def sha256_of(path: Path) -> str:
    return file_sha256(path)


def unwrap_state_dict(checkpoint: Any, path: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Find the state_dict inside a checkpoint: nested under the usual keys, or the dict itself.
    Returns it and the keys followed to it."""
    seen = checkpoint
    trail: list[str] = []
    for _ in range(4):
        if isinstance(seen, nn.Module):
            return seen.state_dict(), tuple(trail)
        if not isinstance(seen, Mapping):
            break
        if seen and all(isinstance(v, torch.Tensor) for v in seen.values()):
            return dict(seen), tuple(trail)
        name = next((k for k in STATE_DICT_KEYS if k in seen and isinstance(seen[k], (Mapping, nn.Module))), None)
        if name is None:
            break
        trail.append(name)
        seen = seen[name]
    raise ReportError(f"{path} holds no state_dict (looked under {', '.join(STATE_DICT_KEYS + EMA_KEYS)})")


def select_state_dict(checkpoint: Any, path: Path,
                      key: str | None = None) -> tuple[dict[str, torch.Tensor], CheckpointUse]:
    """The state_dict to load: the entry `key` (--weights-key) names, else the raw weights; the
    entries that hold weights are recorded when there was a choice (raw and EMA)."""
    entries = _weight_entries(checkpoint)
    if key is not None:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            held = ", ".join(entries) if entries else "none (the file is one state_dict)"
            raise ReportError(f"--weights-key {key!r} is not an entry of {path}; entries holding weights: {held}")
        state, trail = unwrap_state_dict(checkpoint[key], path)
        return state, CheckpointUse(key="/".join((key, *trail)), choices=tuple(entries) if len(entries) > 1 else ())
    raw = [k for k in entries if k in STATE_DICT_KEYS]
    if not raw and entries:  # only EMA weights in the file: those are what there is
        state, trail = unwrap_state_dict(checkpoint[entries[0]], path)
        trail = (entries[0], *trail)
    else:
        state, trail = unwrap_state_dict(checkpoint, path)
    return state, CheckpointUse(key="/".join(trail) or None, choices=tuple(entries) if len(entries) > 1 else ())


def _weight_entries(checkpoint: Any) -> list[str]:
    """The checkpoint's top-level entries a state_dict can be read from (raw ones first)."""
    if not isinstance(checkpoint, Mapping) or all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return []
    found = []
    for name in STATE_DICT_KEYS + EMA_KEYS:
        if isinstance(checkpoint.get(name), (Mapping, nn.Module)):
            try:
                unwrap_state_dict(checkpoint[name], Path(name))
            except ReportError:
                continue
            found.append(name)
    return found


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Drop `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) from every key; returns
    the state and what was stripped ("" when nothing)."""
    stripped = ""
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped += prefix
                changed = True
    return state, stripped


def _shared_prefixes(keys: list[str]) -> list[str]:
    """Every dotted prefix ("model.", "model.net.") that all `keys` start with, shortest first."""
    if not keys:
        return []
    first = min(keys)
    found = []
    for index, char in enumerate(first):
        if char == ".":
            prefix = first[:index + 1]
            if not all(key.startswith(prefix) for key in keys):
                break
            found.append(prefix)
    return found


def _fits(name: str, value: Any, model_state: Mapping[str, Any]) -> bool:
    return name in model_state and getattr(value, "shape", None) == model_state[name].shape


def _mismatch(state: Mapping[str, Any], model_state: Mapping[str, Any]) -> list[str]:
    """What keeps `state` from loading strictly, as message parts; empty when it fits exactly.
    Old checkpoints have no BatchNorm counters; PyTorch fills those in itself."""
    expected = {k for k in model_state if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(model_state))
    conflicts = sorted(
        f"{k} {list(state[k].shape)} vs {list(model_state[k].shape)}"
        for k in set(state) & set(model_state)
        if hasattr(state[k], "shape") and state[k].shape != model_state[k].shape
    )
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:LISTED_KEYS])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:LISTED_KEYS])}")
    if conflicts:
        parts.append(f"shape conflicts e.g. {', '.join(conflicts[:2])}")
    return parts


def _best_partial(state: Mapping[str, Any], model_state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """For --weights-partial: the prefix (one every key could carry, or none) under which the most
    tensors fit by name and shape, and those tensors; ties go to the shorter prefix."""
    prefixes = {""}
    for key in state:
        prefixes.update(key[:i + 1] for i, char in enumerate(key) if char == ".")
    best: tuple[dict[str, Any], str] = ({}, "")
    for prefix in sorted(prefixes, key=lambda p: (len(p), p)):
        fitting = {key[len(prefix):]: value for key, value in state.items()
                   if key.startswith(prefix) and _fits(key[len(prefix):], value, model_state)}
        if len(fitting) > len(best[0]):
            best = (fitting, prefix)
    return best


def fit_state_dict(state: dict[str, Any], model_state: Mapping[str, Any], *, partial: bool,
                   what: str) -> tuple[dict[str, Any], str, tuple[str, ...], tuple[str, ...]]:
    """The tensors to load, the prefix stripped from their keys, and (with `partial`) the model's
    tensors left at init and the file's tensors unused.

    Exact matches first: the state as read with `module.`/`_orig_mod.` stripped, else a prefix
    every key shares whose removal makes the keys the model's exactly (a LightningModule's
    attribute, `model.`). Otherwise a mismatch is refused listing the keys, unless `partial`.
    """
    stripped, prefix = strip_prefixes(state)
    if not _mismatch(stripped, model_state):
        return stripped, prefix, (), ()
    for candidate in _shared_prefixes(list(state)):
        shorter = {key[len(candidate):]: value for key, value in state.items()}
        if not _mismatch(shorter, model_state):
            return shorter, candidate, (), ()
    fitting, best_prefix = _best_partial(state, model_state)
    expected = [k for k in model_state if not k.endswith("num_batches_tracked")]
    left = tuple(sorted(k for k in expected if k not in fitting))
    # The mismatch as seen under the prefix that fits best (a Lightning head swap reads as two
    # shape conflicts, not as every key missing and every key unexpected).
    shown, read_as = stripped, ""
    if best_prefix and best_prefix != prefix:
        shown = {(k[len(best_prefix):] if k.startswith(best_prefix) else k): v for k, v in state.items()}
        read_as = f" (keys read without their prefix {best_prefix!r})"
    problems = "; ".join(_mismatch(shown, model_state)) + read_as
    if not partial:
        hint = (f"; --weights-partial loads the {len(fitting)} tensor(s) that fit and leaves {len(left)} at "
                f"their init" if fitting else "")
        raise ReportError(f"{what}: {problems}{hint}")
    if not fitting:
        raise ReportError(f"{what}: no tensor fits by name and shape, not even with --weights-partial: {problems}")
    unused = tuple(sorted(k for k in state if not (k.startswith(best_prefix) and k[len(best_prefix):] in fitting)))
    return fitting, best_prefix, left, unused


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


def apply_checkpoint(loaded: LoadedModel, path: Path, *, trust_pickle: bool, key: str | None = None,
                     partial: bool = False) -> None:
    """Load a state_dict strictly (after the prefixes `fit_state_dict` strips); a mismatch lists
    missing, unexpected and mis-shaped keys, unless `partial` loads what fits and says what not."""
    state, use = select_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), path, key)
    tensors, prefix, left, unused = fit_state_dict(state, loaded.module.state_dict(), partial=partial,
                                                   what=f"checkpoint {path} does not fit {loaded.name}")
    try:
        loaded.module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise ReportError(f"checkpoint {path} does not fit {loaded.name}: {one_line(exc)}") from exc
    loaded.file = str(path)
    loaded.sha256 = sha256_of(path)
    loaded.random_weights = False
    loaded.checkpoint = replace(use, prefix=prefix or None, left_at_init=left, unused=unused)
    if use.choices:
        loaded.notes.append(f"{path.name} holds weights under {', '.join(use.choices)}: {use.key} was used "
                            f"(--weights-key picks another).")
    if left or unused:
        loaded.notes.append(partial_note(left, unused, loaded.init))
    loaded.init = None
    loaded.source += f", weights from {path.name}"


def partial_note(left: tuple[str, ...], unused: tuple[str, ...], init: str | None) -> str:
    """What --weights-partial left out, in one sentence."""
    at_init = f"at their init ({init})" if init else "at their init"
    parts = [f"--weights-partial: {len(left)} of the model's tensors stayed {at_init}"
             + (f": {_names(left)}" if left else "")]
    if unused:
        parts.append(f"{len(unused)} tensor(s) of the checkpoint fitted nothing: {_names(unused)}")
    return "; ".join(parts) + "."


def _names(keys: tuple[str, ...]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS * 2])
    return shown + (f" and {len(keys) - LISTED_KEYS * 2} more" if len(keys) > LISTED_KEYS * 2 else "")
