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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from reportgen.errors import ReportError


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_distinct(paths: Sequence[Path], protected: Sequence[Path] = ()) -> None:
    """Refuse two outputs that are one file, or an output that would replace an input."""
    seen: dict[str, Path] = {}
    for path in paths:
        key = os.path.realpath(path)
        if key in seen:
            raise ReportError(f"two outputs are the same file: {seen[key]} and {path}")
        seen[key] = path
    for source in protected:
        key = os.path.realpath(source)
        if key in seen:
            raise ReportError(f"output {seen[key]} would overwrite the input file {source}")


def check_writable(path: Path, option: str) -> None:
    """Fail now, not after the analysis, when `path` cannot be written: its folder must exist and
    take a new file (tried for real: permission bits say nothing for root or a read-only mount)."""
    if path.is_dir():
        raise ReportError(f"{option} {path} is a folder, not a file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ReportError(f"{option} {path}: folder {folder} does not exist")
    check_folder_writable(folder, f"{option} {path}")


def check_folder_writable(folder: Path, what: str) -> None:
    """Create and remove a temporary file in `folder`; a failure names `what` and the reason."""
    try:
        handle, temp = tempfile.mkstemp(prefix=".reportgen-check.", dir=folder)
    except OSError as exc:
        raise ReportError(f"{what}: cannot write in folder {folder} ({exc.strerror or exc})") from exc
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(temp)


def _keep_previous(target: Path, temp: str) -> str | None:
    """A second name for the report about to be replaced (a hard link, else a copy), or None."""
    if not target.exists():
        return None
    backup = temp + ".old"
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def write_atomically(outputs: Mapping[Path, bytes]) -> None:
    """Write every path's bytes, all together: temp files first, then renames.

    With several outputs, each report being replaced keeps a second name until every rename is
    done; if a rename fails or is interrupted, the ones already made are undone, so the HTML
    and the JSON are never from two different runs.
    """
    check_distinct(list(outputs))
    staged: list[tuple[str, Path]] = []
    backups: list[str | None] = []
    renamed: list[tuple[Path, str | None]] = []
    current: Path | None = None
    try:
        for target, data in outputs.items():
            current = target
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
        if len(staged) > 1:
            backups = [_keep_previous(target, temp) for temp, target in staged]
        for index, (temp, target) in enumerate(staged):
            current = target
            if backups:  # recorded first: undoing a rename that never happened changes nothing
                renamed.append((target, backups[index]))
            os.replace(temp, target)
        renamed.clear()
        staged.clear()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ReportError(f"disk full while writing {current or 'output'}; nothing was written") from exc
        # The path the user named, never the temporary sibling the error is about.
        raise ReportError(f"cannot write {current or 'output'} ({exc.strerror or exc}); nothing was written") from exc
    finally:
        for target, backup in reversed(renamed):  # a later rename failed: undo the earlier ones
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    os.unlink(target)
        leftovers = [temp for temp, _ in staged] + [b for b in backups if b is not None]
        for temp in leftovers:
            with contextlib.suppress(OSError):
                os.unlink(temp)
