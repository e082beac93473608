"""The CLI: conventions (intermixed options, --help, --version, stdout/stderr) and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reportgen.cli import main

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build(classes=4):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, classes))

    def broken():
        raise ValueError("factory exploded")

    def marked():  # leaves a trace when the model is built
        open("built.txt", "w").close()
        return build()
    """
)


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (tmp_path / "net.py").write_text(MODEL_FILE, encoding="utf-8")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    return tmp_path


def test_options_between_positionals(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["net.py:build", "-o", "r.html", "img0.png", "--model-arg", "classes=3", "img1.png",
                 "--json", "r.json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.split() == ["r.html", "r.json"]
    assert captured.err == ""
    data = json.loads((workspace / "r.json").read_text())
    assert [i["name"] for i in data["inputs"]] == ["img0.png", "img1.png"]
    assert len(data["predictions"][0]["top"]) == 3  # classes=3 reached the factory
    assert "img1.png" in (workspace / "r.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["net.py:build", "missing.png"], "input not found: missing.png"),
        (["nowhere.py:build"], "model file not found: nowhere.py"),
        (["net.py:broken"], "factory exploded"),
        (["no_such_module_xyz:build"], "cannot import module 'no_such_module_xyz'"),
        (["net.py:build", "img0.png", "--device", "tpu"], "unknown device"),
        (["net.py:build", "img0.png", "--layers", "zzz*"], "matches no layer"),
        (["net.py:build", "img0.png", "--labels", "nope.txt"], "labels file not found: nope.txt"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main([*argv, "-o", "out.html"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reportgen: error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (workspace / "out.html").exists()
    assert not list(workspace.glob(".out.html.*"))


def test_failed_run_keeps_the_existing_report(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "out.html").write_text("previous report", encoding="utf-8")
    assert main(["net.py:build", "missing.png", "-o", "out.html"]) == 2
    assert (workspace / "out.html").read_text(encoding="utf-8") == "previous report"


def test_debug_shows_the_traceback(workspace: Path) -> None:
    with pytest.raises(Exception, match="input not found"):
        main(["net.py:build", "missing.png", "--debug"])


def test_labels_count_mismatch_is_an_error(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    assert main(["net.py:build", "img0.png", "--labels", "labels.txt", "-o", "out.html"]) == 2
    assert "2 labels but the model outputs 4 classes" in capsys.readouterr().err


def test_help_is_fast_complete_and_imports_no_torch() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from reportgen.cli import main\n"
        "buffer = io.StringIO()\n"
        "with contextlib.redirect_stdout(buffer):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
        "print(buffer.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    first, _, help_text = result.stdout.partition("\n")
    assert first == "False"
    for option in ("--output", "--json", "--layers", "--max-channels", "--batch-size", "--device",
                   "--input-shape", "--resize", "--mean", "--std", "--grayscale", "--labels", "--weights",
                   "--title", "--quiet", "--version", "--seed"):
        assert option in help_text


def test_a_plain_report_imports_no_impact_modules(tmp_path: Path) -> None:
    """Ablation and misfiring (their main-pass collectors too, and the impact pass) live in modules
    a report without those flags never loads. (The page's view reads one threshold from `probes`.)"""
    import torch

    torch.save(torch.rand(2, 3, 16, 16), tmp_path / "x.pt")
    code = (
        "import sys\n"
        "from reportgen.cli import main\n"
        f"code = main(['tests.fixtures.models:tiny_cnn', {str(tmp_path / 'x.pt')!r}, '-o', "
        f"{str(tmp_path / 'r.html')!r}, '-q', '--device', 'cpu'])\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[-1] in "
        "('impact', 'ablation', 'misfiring', 'ablation_baseline')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "r.html").stat().st_size > 1000


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import reportgen

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"reportgen {reportgen.__version__}"


def test_no_inputs_uses_synthetic_probes(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["net.py:build", "--input-shape", "3,24,24", "-o", "p.html", "--json", "p.json", "-q"]) == 0
    data = json.loads((workspace / "p.json").read_text())
    assert all(i["shape"] == [3, 24, 24] for i in data["inputs"])
    assert any("synthetic probe" in note for note in data["notes"])


def _can_write(folder: Path) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture()
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A folder that refuses new files: read-only permissions, or (as root, who ignores them)
    the read-only /sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if _can_write(folder):
            folder = Path("/sys")
            if not folder.is_dir() or _can_write(folder):
                pytest.skip("no folder refuses writes here (root ignores permissions, and no read-only /sys)")
        yield folder
    finally:
        (tmp_path / "read-only").chmod(0o755)


@pytest.mark.parametrize(("option", "name"), [("-o", "r.html"), ("--json", "r.json"), ("--images", "pngs"),
                                              ("--tensorboard", "events")])
def test_unwritable_output_fails_before_any_work(
    workspace: Path, unwritable: Path, capsys: pytest.CaptureFixture[str], option: str, name: str
) -> None:
    target = unwritable / name
    argv = ["net.py:marked", "img0.png", option, str(target)]
    if option != "-o":
        argv += ["-o", "out.html"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reportgen: error: ")
    assert str(target) in lines[0]
    assert lines[0].endswith("(Permission denied)")  # the closing parenthesis survives
    assert not (workspace / "built.txt").exists()  # the model was never built
    assert not (workspace / "out.html").exists()
    assert not target.exists()


def test_write_error_names_the_output_not_its_temp_file(tmp_path: Path, unwritable: Path) -> None:
    """The API writes after the analysis (it is not told where before); its error names the path
    asked for, with the reason in parentheses kept whole."""
    import reportgen
    from tests.fixtures.models import tiny_cnn, tiny_inputs

    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu", max_size_mb=0)
    with pytest.raises(reportgen.ReportError) as raised:
        report.save(unwritable / "r.html")
    assert str(raised.value) == f"cannot write {unwritable / 'r.html'} (Permission denied); nothing was written"
    assert ".tmp" not in str(raised.value)
