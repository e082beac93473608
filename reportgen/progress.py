"""Progress bars on stderr, only when a person is watching (stderr is a terminal) and not -q."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """Yields an `advance(n)` callable, or None when no bar is shown."""
    if not enabled or not sys.stderr.isatty() or total <= 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, file=sys.stderr, leave=False, unit="it") as bar:
        yield bar.update
