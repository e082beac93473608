"""reportgen: one self-contained HTML report of what a PyTorch CNN learned.

The public API is `generate_report(model, inputs, ...) -> Report`. Importing this package is
cheap: torch is imported only when the API is first used, so `reportgen --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reportgen._version import __version__
from reportgen.errors import ReportError

if TYPE_CHECKING:
    from reportgen.api import generate_report
    from reportgen.report import Report

__all__ = ["Report", "ReportError", "__version__", "generate_report"]


def __getattr__(name: str) -> Any:
    # Lazy so that the CLI's --help and --version never pay for importing torch.
    if name == "generate_report":
        from reportgen.api import generate_report

        return generate_report
    if name == "Report":
        from reportgen.report import Report

        return Report
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
