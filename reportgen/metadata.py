"""Metadata for reviews: enough to reproduce a report (command, versions, input file hashes).

The command line itself is made in `cli._command_line`; versions, device and the checkpoint's
sha256 are in `RunInfo`/`ModelInfo`. This module adds the input files: each one's path as given
(relative to the current folder, so no home directory leaks into a shared report) and the sha256
of its bytes, so a reviewer can check they have the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from reportgen.report_model import InputFile

SHOWN_FILES = 50  # the page lists this many; the JSON has them all


def display_path(path: str | Path) -> str:
    """Relative to the current folder when inside it, else the file name alone."""
    candidate = Path(path)
    if not candidate.is_absolute():
        return candidate.as_posix()
    try:
        return candidate.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return candidate.name


def file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def input_files(paths: Sequence[str | None], names: Sequence[str]) -> tuple[InputFile, ...]:
    """One entry per input that came from a file (tensors and probes have none)."""
    found = []
    for path, name in zip(paths, names):
        if not path:
            continue
        file = Path(path)
        try:
            sha256, size = file_digest(file)
        except OSError:  # gone since it was read: say so rather than fail the report
            sha256, size = "unreadable", 0
        found.append(InputFile(name=name, path=display_path(file), sha256=sha256, byte_size=size))
    return tuple(found)
