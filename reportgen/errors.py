"""The one exception type for mistakes a user can fix (bad path, bad option, bad checkpoint).

The CLI turns it into a single `reportgen: error: ...` line and exit status 2; anything else
is a bug in reportgen and exits 1.
"""

from __future__ import annotations


class ReportError(Exception):
    """A problem with what the user asked for, explained in one actionable sentence."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """First non-empty line of an exception's message, shortened, for quoting in an error."""
    text = str(exc).strip() or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return f"{type(exc).__name__}: {first}" if not isinstance(exc, ReportError) else first


class RankFailed(Exception):
    """Under torchrun, another rank failed: this one stops quietly with `code`; rank 0 prints
    the one error line (distributed.py)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"another rank failed (exit {code})")
        self.code = code
