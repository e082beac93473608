"""The write stage: every output lands whole or not at all.

Each file is written to a temporary sibling (same directory, so the rename cannot cross file
systems), flushed and fsynced; only when all of them are written are they renamed into place.
A failure or an interruption before that leaves any existing report untouched and removes the
temporaries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from reportgen.errors import ReportError


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomically(outputs: Mapping[Path, bytes]) -> None:
    """Write every path's bytes, all together: temp files first, then renames."""
    staged: list[tuple[str, Path]] = []
    try:
        for target, data in outputs.items():
            directory = target.parent if str(target.parent) else Path(".")
            if not directory.is_dir():
                raise ReportError(f"output folder does not exist: {directory}")
            handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
            staged.append((temp, target))
            # mkstemp makes the file private (0600); a report is an ordinary file, so give it
            # the mode any new file would get (or keep the mode of the report it replaces).
            os.chmod(temp, _mode_for(target))
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for temp, target in staged:
            os.replace(temp, target)
        staged.clear()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ReportError(f"disk full while writing {staged[-1][1] if staged else 'output'}") from exc
        raise ReportError(f"cannot write output: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()")) from exc
    finally:
        for temp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(temp)
