"""Files from outside are checked before anything parses them.

`.pt`/`.pth`, TorchScript, `.pt2` and `.npz` files are zip archives. torch and numpy allocate
each entry at the size its header declares and inflate into it, so a small file whose entry
inflates to gigabytes (a zip bomb) would take that much memory before any error. The central
directory is read first (it is small) and the archive refused when:
- one compressed entry would inflate more than `MAX_RATIO` times, to more than `RATIO_FLOOR`
  bytes (torch writes its entries stored, not compressed, so real checkpoints never trip this);
- all entries together would inflate to more than `max_unpacked_bytes()` (the machine's memory).

Pickles are the other danger: they are only ever read with `weights_only=True` unless the user
passes `--trust-pickle` (checkpoints.read_checkpoint, inputs.read_tensor_file).
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

from reportgen.errors import ReportError

MAX_RATIO = 100
RATIO_FLOOR = 64 * 2**20  # entries that inflate to less than this are harmless whatever the ratio


def max_unpacked_bytes() -> int:
    """The most an archive may inflate to: this machine's physical memory (16 GiB if unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def check_archive(path: Path, *, limit: int | None = None) -> None:
    """Refuse a zip archive that would inflate far beyond its size or this machine's memory.

    Files that are not zip archives pass untouched (their readers bound what they allocate).
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a readable archive: the real reader says what is wrong with it
    limit = max_unpacked_bytes() if limit is None else limit
    for entry in entries:
        if entry.compress_type == zipfile.ZIP_STORED or entry.file_size <= RATIO_FLOOR:
            continue
        ratio = entry.file_size / max(entry.compress_size, 1)
        if ratio > MAX_RATIO:
            raise ReportError(
                f"{path} looks like a zip bomb: its entry {entry.filename!r} would inflate "
                f"{ratio:,.0f} times, from {_size(entry.compress_size)} to {_size(entry.file_size)}; refused"
            )
    total = sum(entry.file_size for entry in entries)
    if total > limit:
        raise ReportError(
            f"{path} would unpack to {_size(total)}, more than this machine's memory ({_size(limit)}); refused"
        )


@contextlib.contextmanager
def refuse_huge_images() -> Iterator[None]:
    """PIL only warns between MAX_IMAGE_PIXELS and twice that, then decodes anyway (a 100
    megapixel image becomes a 1.2 GB float tensor); inside this block the warning is an error."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
