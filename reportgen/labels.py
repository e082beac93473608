"""Class names: from a file the user gives, or from torchvision's weight metadata."""

from __future__ import annotations

import json
from pathlib import Path

from reportgen.errors import ReportError


class ClassNames(list):  # type: ignore[type-arg]
    """A list of class names that remembers where it came from, for error messages."""

    source: str = "--labels"


def read_labels(path: str | Path) -> list[str]:
    """One name per line, a JSON list, or a JSON {index: name} map (indices 0..N-1, all present)."""
    names = ClassNames(_read_labels(Path(path)))
    names.source = f"--labels {path}"
    return names


def _read_labels(file: Path) -> list[str]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReportError(f"labels file not found: {file}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read labels file {file}: {exc}") from exc
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ReportError(f"labels file {file} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if isinstance(data, list):
            if not data:
                raise ReportError(f"labels file {file} is an empty JSON list")
            return [str(item) for item in data]
        if not isinstance(data, dict):
            raise ReportError(f"labels file {file}: JSON must be a list of names or an {{index: name}} map")
        try:
            mapping = {int(key): str(value) for key, value in data.items()}
        except (TypeError, ValueError) as exc:
            raise ReportError(f"labels file {file}: JSON map keys must be class indices") from exc
        missing = sorted(set(range(len(mapping))) - set(mapping))
        if missing:
            raise ReportError(f"labels file {file}: indices must run 0..{len(mapping) - 1}; missing {missing[:5]}")
        return [mapping[i] for i in range(len(mapping))]
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ReportError(f"labels file {file} is empty")
    return names


def check_label_count(labels: list[str], num_classes: int | None, source: str) -> None:
    if num_classes is not None and len(labels) != num_classes:
        raise ReportError(f"{getattr(labels, 'source', source)} has {len(labels)} labels but the model outputs "
                          f"{num_classes} classes")
