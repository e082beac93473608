"""The README's code runs as written: every ```python block in a fresh interpreter, and every
command of every ```bash block that can run offline in an empty folder. A command that cannot
is listed in SKIPPED with the reason, so a new README command is either run here or explained."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# A command matching the pattern is not run, for the reason given.
SKIPPED = (
    (r"^pip install\b", "installs packages (network, and changes the environment the tests run in)"),
    (r"^python -m pytest\b", "is this test suite"),
    (r"\bexamples/cifar10_resnet20(_lightning)?\.sh\b", "needs ../shared/data, third-party files beside the "
                                                         "checkout (test_cifar_example_without_data_says_why)"),
    (r"--weights DEFAULT\b", "downloads torchvision's pretrained weights"),
    (r"\bmy_models\.py:", "needs the reader's own model file, checkpoint and labelled folder"),
)


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def commands() -> list[list[str]]:
    """Each command of each bash block as argv: one per line, split at `&&`, comments dropped."""
    found = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                found.append(words[:end])
                words = words[end + 1:]
    return found


def skip_reason(argv: list[str]) -> str | None:
    text = shlex.join(argv)
    return next((reason for pattern, reason in SKIPPED if re.search(pattern, text)), None)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", SOURCE_DATE_EPOCH="1700000000")
    return env


def test_readme_has_code_to_check() -> None:
    assert len(blocks("python")) >= 2
    assert any(argv[0] == "reportgen" and not skip_reason(argv) for argv in commands())


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_in_a_fresh_interpreter(index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{done.stderr}"


@pytest.mark.parametrize("argv", commands(), ids=shlex.join)
def test_bash_command_runs_offline(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    reason = skip_reason(argv)
    if reason is not None:
        pytest.skip(f"not run: {reason}")
    assert argv[0] == "reportgen", f"no rule runs or skips this README command: {shlex.join(argv)}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    rng = np.random.default_rng(0)
    for word in argv[1:]:  # the example's own inputs: any image it names is made here
        if re.search(r"\.(jpe?g|png)$", word, re.I) and not word.startswith("-"):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / word)
    # In-process: `reportgen` is this function (pyproject's [project.scripts]); torch is loaded once.
    code = main([*argv[1:], "-q"])
    assert code == 0, capsys.readouterr().err
    out = argv[argv.index("-o") + 1] if "-o" in argv else "report.html"
    assert (tmp_path / out).stat().st_size > 10_000


@pytest.mark.parametrize("name", ["cifar10_resnet20.sh", "cifar10_resnet20_lightning.sh"])
def test_cifar_example_without_data_says_why(name: str, tmp_path: Path) -> None:
    """From a fresh clone (no ../shared/data beside it) the example stops with one clear line."""
    clone = tmp_path / "clone"
    (clone / "examples").mkdir(parents=True)
    script = clone / "examples" / name
    script.write_bytes((REPO / "examples" / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    for extra in ({}, {"DATA": "no/such/folder"}):
        done = subprocess.run(["sh", str(script)], cwd=tmp_path, env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "resnet20-12fca82f.th" in lines[0] and "DATA=" in lines[0]
        assert ("no/such/folder" in lines[0]) == bool(extra)


def test_submodules_are_attributes_after_import_without_torch() -> None:
    code = ("import sys, reportgen\n"
            "assert 'torch' not in sys.modules, 'import reportgen pulled in torch'\n"
            "print(reportgen.impact.ImpactOptions(ablation=True).enabled, reportgen.alerts.AlertThresholds().explode,\n"
            "      reportgen.preprocess.Preprocessing().source)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "10000.0", "preprocessing", "argument"]
