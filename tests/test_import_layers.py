"""The import graph keeps the pipeline's layers and has no cycles: `lint-imports` (import-linter)
checks the contracts in pyproject.toml's [tool.importlinter], on the checkout under test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run in `root`, on the reportgen package found there (not an installed one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_contracts_are_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_an_upward_function_local_import_breaks_the_layers(tmp_path: Path) -> None:
    """A render-stage module reaching up into the assemble stage, even inside a function (how the
    old cycles were held apart), fails the layers and the acyclic contract."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "reportgen", tmp_path / "reportgen", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "reportgen" / "alerts.py").open("a", encoding="utf-8") as module:
        module.write("\n\ndef _reaches_up() -> None:\n    from reportgen import view  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "reportgen.alerts is not allowed to import reportgen.view" in result.stdout
    assert "2 broken" in result.stdout
