"""Models that arrive as one file: TorchScript archives, torch.export programs, pickled modules."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from reportgen.errors import ReportError, one_line
from reportgen.untrusted import check_archive

if TYPE_CHECKING:
    from reportgen.models import LoadedModel


def load_model_file(path: Path, *, trust_pickle: bool) -> LoadedModel:
    from reportgen.models import LoadedModel, read_checkpoint, sha256_of

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
        return LoadedModel(module=module, name=path.stem, source="torch.export program", file=str(path), sha256=digest)
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
