"""The wheel ships the templates and data, and a non-editable install renders a report."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (found,) = out.glob("reportgen-*.whl")
    return found


def test_wheel_contains_templates_and_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("reportgen/templates/report.html.jinja2", "reportgen/templates/layer.html.jinja2",
                     "reportgen/templates/theme.css", "reportgen/templates/report.js",
                     "reportgen/data/palettes.json", "reportgen/py.typed", "reportgen/cli.py",
                     # subpackages: without them an editable install elsewhere silently stood in
                     "reportgen/engine/main_pass.py", "reportgen/collectors/activations.py"):
        assert required in names, required
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)


def test_installed_wheel_renders_a_report(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    script = (
        "import reportgen, torch\n"
        "from torch import nn\n"
        "assert reportgen.__file__.startswith(%r), reportgen.__file__\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
        "reportgen.generate_report(model, torch.rand(1, 3, 12, 12)).save('out.html')\n"
        "from reportgen.assemble import templates_dir\n"
        "print(templates_dir())\n"
    ) % str(target)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    assert str(target) in result.stdout  # templates came from the installed package
    html = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
