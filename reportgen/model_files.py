"""Models that arrive as one file: TorchScript archives, torch.export programs, pickled modules."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from reportgen.checkpoints import LoadedModel, read_checkpoint, sha256_of
from reportgen.errors import ReportError, one_line
from reportgen.preprocess import Preprocessing
from reportgen.untrusted import check_archive


def load_model_file(path: Path, *, trust_pickle: bool) -> LoadedModel:
    if not path.exists():
        raise ReportError(
            f"model not found: {path} (use torchvision:NAME, file.py:FACTORY, package.module:FACTORY or a model file)"
        )
    if not path.is_file():
        raise ReportError(f"model is not a file: {path}")
    check_archive(path)  # TorchScript and .pt2 files are zip archives too
    digest = sha256_of(path)
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ReportError(f"cannot load torch.export program {path}: {one_line(exc)}") from exc
        module = program.module()
        # torch puts train()/eval() methods that raise on this instance. The graph's train/eval
        # behaviour was fixed when it was exported, so the plain nn.Module methods (which only
        # flip flags) are safe, and the analysis needs eval() to work.
        for patched in ("train", "eval"):
            module.__dict__.pop(patched, None)
        loaded = LoadedModel(module=module, name=path.stem, source="torch.export program", file=str(path),
                             sha256=digest)
        _describe_export(program, loaded)
        return loaded
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ReportError(f"cannot load TorchScript archive {path}: {one_line(exc)}") from exc
        return LoadedModel(module=module, name=path.stem, source="TorchScript archive", file=str(path), sha256=digest)
    loaded = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(loaded, nn.Module):
        return LoadedModel(module=loaded, name=path.stem, source="pickled nn.Module (--trust-pickle)",
                           file=str(path), sha256=digest)
    raise ReportError(
        f"{path} holds weights, not a model: give the architecture as MODEL "
        f"(torchvision:NAME or file.py:FACTORY) and this file as --weights"
    )


def _describe_export(program: torch.export.ExportedProgram, loaded: LoadedModel) -> None:
    """An exported graph is specialised to the shapes it was traced with: use them, and say so."""
    user_inputs = set(program.graph_signature.user_inputs)
    placeholder = next((node for node in program.graph.nodes
                        if node.op == "placeholder" and node.name in user_inputs), None)
    value = placeholder.meta.get("val") if placeholder is not None else None
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) < 2:
        return
    static = [isinstance(d, int) for d in shape]
    traced = "x".join(str(d) if isinstance(d, int) else "N" for d in shape)
    loaded.notes.append(
        f"torch.export program traced for input {traced}: its layers are inlined operators, so no "
        "per-layer feature maps can be hooked; predictions and weights are shown."
    )
    if static[0]:
        loaded.batch_size = int(shape[0])
        loaded.notes.append(f"The program's batch size is fixed at {loaded.batch_size}: inputs ran in batches of that size.")
    if all(static[1:]):
        loaded.input_shape = tuple(int(d) for d in shape[1:])
        if len(shape) == 4 and int(shape[1]) in (1, 3):
            loaded.preprocessing = Preprocessing(channels=int(shape[1]), resize=(int(shape[2]), int(shape[3])),
                                                 source="the exported program's input shape")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a constants.pkl/code/ entry."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("constants.pkl") or "/code/" in name for name in names)
