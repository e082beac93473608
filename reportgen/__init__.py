"""reportgen: one self-contained HTML report of what a PyTorch CNN learned.

The public API is `generate_report(model, inputs, ...) -> Report`, `compare_reports(model_a,
model_b | checkpoints=..., inputs) -> CompareReport`, and the submodules whose
classes it takes (`reportgen.preprocess.Preprocessing`, `reportgen.impact.ImpactOptions`,
`reportgen.alerts.AlertThresholds`, ...). Importing this package is cheap: torch and those
submodules are imported only when first used, so `reportgen --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reportgen._version import __version__
from reportgen.errors import ReportError

if TYPE_CHECKING:
    from reportgen.api import generate_report
    from reportgen.compare import compare_reports
    from reportgen.compare_report import CompareReport
    from reportgen.report import Report

__all__ = ["CompareReport", "Report", "ReportError", "__version__", "compare_reports", "generate_report"]

# Reachable as `reportgen.NAME` right after `import reportgen` (imported on first use).
_SUBMODULES = frozenset({"alerts", "api", "compare", "impact", "inputs", "labels", "models", "preprocess", "probes", "report"})


def __getattr__(name: str) -> Any:
    # Lazy so that the CLI's --help and --version never pay for importing torch.
    if name == "generate_report":
        from reportgen.api import generate_report

        return generate_report
    if name == "Report":
        from reportgen.report import Report

        return Report
    if name == "compare_reports":
        from reportgen.compare import compare_reports

        return compare_reports
    if name == "CompareReport":
        from reportgen.compare_report import CompareReport

        return CompareReport
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
