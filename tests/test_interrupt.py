"""Nothing lost: an existing report survives a failed, interrupted or disk-full run; the HTML and
the JSON land together or not at all; no temporary file is left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen import cli
from reportgen.errors import ReportError
from tests.fixtures.zoo import inplace_relu_chain, rand

ROOT = Path(__file__).resolve().parent.parent
OLD_HTML = b"<!DOCTYPE html><title>the report from yesterday</title>"
OLD_JSON = b'{"from": "yesterday"}\n'

MODEL_FILE = textwrap.dedent(
    """
    import time
    from pathlib import Path

    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, marker, sleep):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)
            self.marker, self.sleep = marker, sleep

        def forward(self, x):
            if self.marker:
                Path(self.marker).write_text("running")
            if self.sleep < 0:
                raise RuntimeError("this model always fails")
            time.sleep(self.sleep)
            return self.fc(self.conv(x).mean(dim=(2, 3)))


    def build(marker="", sleep=0.0):
        return Net(marker, sleep)
    """
)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "slow_model.py").write_text(MODEL_FILE)
    (tmp_path / "out.html").write_bytes(OLD_HTML)
    (tmp_path / "out.json").write_bytes(OLD_JSON)
    return tmp_path


def assert_old_outputs_intact(folder: Path, extra: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert (folder / "out.html").read_bytes() == OLD_HTML
    assert (folder / "out.json").read_bytes() == OLD_JSON
    leftovers = {p.name for p in folder.iterdir()} - {"out.html", "out.json", "slow_model.py", "__pycache__"} - extra
    assert leftovers == set(), f"left behind: {leftovers}"


def cli_args(folder: Path, *model_args: str) -> list[str]:
    args = [f"{folder / 'slow_model.py'}:build", "--input-shape", "3,8,8", "-q", "--device", "cpu",
            "-o", str(folder / "out.html"), "--json", str(folder / "out.json")]
    for arg in model_args:
        args += ["--model-arg", arg]
    return args


def test_sigint_and_sigterm_mid_run_leave_the_old_report_and_no_temp_files(workdir: Path) -> None:
    """The CLI runs in a subprocess on a slow model; each signal arrives during the forward."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        folder = workdir / signum.name
        folder.mkdir()
        for name in ("slow_model.py", "out.html", "out.json"):
            (folder / name).write_bytes((workdir / name).read_bytes())
        marker = folder / "started"
        command = [sys.executable, "-m", "reportgen", *cli_args(folder, f"marker={str(marker)!r}", "sleep=120")]
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        runs[signum] = (process, marker, folder)
    try:
        for signum, (process, marker, _) in runs.items():
            deadline = time.monotonic() + 150  # two torch imports on two busy cores
            while not marker.exists():
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the model never started"
                time.sleep(0.1)
            process.send_signal(signum)
        for signum, (process, marker, folder) in runs.items():
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 130, stderr
            lines = stderr.decode().strip().splitlines()
            assert lines[-1] == "reportgen: interrupted; nothing was written", stderr
            assert "Traceback" not in stderr.decode()
            assert stdout == b""
            assert_old_outputs_intact(folder, extra={"started"})
    finally:
        for process, _, _ in runs.values():
            if process.poll() is None:
                process.kill()


def test_a_failing_model_leaves_the_old_report(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(cli_args(workdir, "sleep=-1"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("reportgen: error: the model failed on input batch") and err.count("\n") == 1
    assert "this model always fails" in err
    assert_old_outputs_intact(workdir)


def disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_reported_and_the_old_report_survives(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "fsync", disk_full)
    code = cli.main(cli_args(workdir))
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"reportgen: error: disk full while writing {workdir / 'out.html'}; nothing was written\n"
    assert_old_outputs_intact(workdir)


@pytest.fixture(scope="module")
def report() -> reportgen.Report:
    return reportgen.generate_report(inplace_relu_chain(), rand(2, 3, 8, 8), device="cpu")


def failing_replace(fail_on: int, error: BaseException) -> object:
    real = os.replace
    calls = {"n": 0}

    def replace(source: str, target: str) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise error
        real(source, target)

    return replace


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_html_and_json_land_together_or_not_at_all(
    report: reportgen.Report, workdir: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    # The HTML is renamed into place, then the JSON's rename fails: the HTML must be put back.
    monkeypatch.setattr(os, "replace", failing_replace(2, error))
    with pytest.raises((ReportError, KeyboardInterrupt)):
        report.save(workdir / "out.html", json_path=workdir / "out.json")
    monkeypatch.undo()
    assert_old_outputs_intact(workdir)


def test_a_failed_pair_leaves_no_new_files_either(
    report: reportgen.Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "replace", failing_replace(2, OSError(errno.EIO, "Input/output error")))
    with pytest.raises(ReportError) as raised:
        report.save(tmp_path / "new.html", json_path=tmp_path / "new.json")
    # the file whose rename failed, by the name the user gave, and the reason with its ")"
    assert str(raised.value) == f"cannot write {tmp_path / 'new.json'} (Input/output error); nothing was written"
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_successful_pair_replaces_both_and_leaves_nothing_else(report: reportgen.Report, workdir: Path) -> None:
    report.save(workdir / "out.html", json_path=workdir / "out.json")
    assert (workdir / "out.html").read_bytes() == report.to_html().encode()
    assert (workdir / "out.json").read_bytes() == report.to_json().encode()
    assert {p.name for p in workdir.iterdir()} == {"out.html", "out.json", "slow_model.py"}


def test_html_and_json_at_the_same_path_are_refused(report: reportgen.Report, workdir: Path) -> None:
    # Before: the JSON silently replaced the HTML (one dict key for both).
    with pytest.raises(ReportError, match="two outputs are the same file"):
        report.save(workdir / "out.html", json_path=workdir / "." / "out.html")
    assert_old_outputs_intact(workdir)


def test_the_cli_refuses_to_write_over_its_own_inputs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    image = workdir / "cat.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    before = image.read_bytes()
    code = cli.main([f"{workdir / 'slow_model.py'}:build", str(image), "-q", "--device", "cpu", "-o", str(image)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"reportgen: error: output {image} would overwrite the input file {image}\n"
    assert image.read_bytes() == before
    code = cli.main(cli_args(workdir)[:-2] + ["--json", str(workdir / "out.html")])
    assert code == 2 and "two outputs are the same file" in capsys.readouterr().err
    assert_old_outputs_intact(workdir, extra={"cat.png"})


def test_sigterm_becomes_keyboard_interrupt_only_while_the_cli_runs() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def fake_run(args: object, argv: object) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler's KeyboardInterrupt
        return 0

    original = cli._run
    cli._run = fake_run  # type: ignore[assignment]
    try:
        assert cli.main(["demo"]) == 130
    finally:
        cli._run = original  # type: ignore[assignment]
    assert seen and seen[0] is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert torch.is_tensor(torch.zeros(1))  # the process is alive and well
