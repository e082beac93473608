"""Same command, same bytes: the date comes from SOURCE_DATE_EPOCH, everything random from --seed.

No test here seeds anything itself: each compares two real runs as a user would make them.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import reportgen
from reportgen.cli import main
from tests.fixtures.models import tiny_cnn, tiny_inputs

REPO = Path(__file__).resolve().parents[1]

FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build(classes=4):  # default init, no seed of its own
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(6, classes))

    def self_seeded():  # the same weights whatever reportgen's seed
        torch.manual_seed(123)
        return build()
    """
)


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder whose name needs shell quoting, with a factory file and one photo."""
    folder = tmp_path / "my work's dir"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (folder / "nets.py").write_text(FACTORIES, encoding="utf-8")
    pixels = np.random.default_rng(7).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "my photo.png")
    return folder


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, "-q"])
    assert code == 0, capsys.readouterr().err


def _twice(argv: list[str], workspace: Path, capsys: pytest.CaptureFixture[str]) -> tuple[bytes, bytes]:
    """The same command twice in the same folder (and process: torch's global RNG has moved on)."""
    _run(argv, capsys)
    first = (workspace / "r.html").read_bytes()
    (workspace / "r.html").unlink()
    torch.rand(5)  # whatever the caller did with torch's RNG in between must not matter
    _run(argv, capsys)
    return first, (workspace / "r.html").read_bytes()


def test_factory_model_without_weights_same_bytes_twice(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _twice(["nets.py:build", "my photo.png", "-o", "r.html", "--json", "r.json"], workspace, capsys)
    assert first == second
    data = json.loads((workspace / "r.json").read_text(encoding="utf-8"))
    assert data["run"]["seed"] == 0
    assert data["model"]["random_weights"] is True
    assert data["model"]["init"] == "factory default init, seed 0"
    page = first.decode("utf-8")
    assert "random (factory default init, seed 0)" in page
    assert "random, untrained weights" in page  # the banner torchvision random weights get
    assert "<td>loaded</td>" not in page


def test_random_torchvision_model_same_bytes_twice(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["torchvision:squeezenet1_0", "my photo.png", "--resize", "64", "--center-crop", "64",
            "--max-channels", "8", "--no-embedding", "-o", "r.html"]
    first, second = _twice(argv, workspace, capsys)
    assert first == second
    assert "random (torchvision default init, seed 0)" in first.decode("utf-8")


def test_the_seed_chooses_the_weights(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = {}
    for seed in ("0", "1"):
        _run(["nets.py:build", "my photo.png", "-o", "r.html", "--json", "r.json", "--seed", seed], capsys)
        data = json.loads((workspace / "r.json").read_text(encoding="utf-8"))
        assert data["run"]["seed"] == int(seed)
        weights[seed] = data["visualized"][0]["insight"]["weights"]
    # The same conv, default-initialised from two seeds: its weight statistics differ.
    assert weights["0"]["norm"] != pytest.approx(weights["1"]["norm"], rel=1e-6)
    # ...and from seed 0 they are those of the factory's model built under torch.manual_seed(0).
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    expected = float(np.linalg.norm(conv.weight.detach().double().numpy()))
    assert weights["0"]["norm"] == pytest.approx(expected, rel=1e-5)


def test_a_factory_that_seeds_itself_is_not_called_seeded_random(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(["nets.py:self_seeded", "my photo.png", "-o", "r.html", "--json", "r.json", "--seed", "5"], capsys)
    data = json.loads((workspace / "r.json").read_text(encoding="utf-8"))
    assert data["model"]["random_weights"] is False
    assert data["model"]["init"] is None
    assert any("same weights for every --seed" in note for note in data["notes"])


def test_a_run_leaves_the_callers_rng_alone(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.get_rng_state()
    _run(["nets.py:build", "my photo.png", "-o", "r.html"], capsys)
    assert torch.equal(torch.get_rng_state(), state)


class NoisyNet(nn.Module):
    """A model whose forward draws from torch's global RNG (as dropout-like layers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x + 0.5 * torch.randn_like(x)))
        return self.head(y.mean(dim=(2, 3)))


def test_two_api_runs_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model = NoisyNet()  # built once, unseeded: the API reports on the model it is given
    first = reportgen.generate_report(model, None, device="cpu", embedding=False)
    torch.rand(3)
    second = reportgen.generate_report(model, None, device="cpu", embedding=False)
    first.save(tmp_path / "a.html", json_path=tmp_path / "a.json")
    second.save(tmp_path / "b.html", json_path=tmp_path / "b.json")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "2023-11-14" in (tmp_path / "a.html").read_text(encoding="utf-8")
    assert first.model.run.date == "2023-11-14"
    assert first.model.run.seed == 0
    other = reportgen.generate_report(model, None, device="cpu", embedding=False, seed=1)
    assert other.to_dict()["predictions"] != first.to_dict()["predictions"]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seed_is_a_user_error(seed: object) -> None:
    with pytest.raises(reportgen.ReportError, match="--seed must be an integer"):
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu", seed=seed)  # type: ignore[arg-type]


def test_printed_command_remakes_the_report(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the workspace is in the home folder
    (workspace / "out").mkdir()
    _run(["nets.py:build", str(workspace / "my photo.png"), "-o", "out/r.html", "--json", "out/r.json"], capsys)
    data = json.loads((workspace / "out" / "r.json").read_text(encoding="utf-8"))
    command = data["run"]["command"]
    # The folder it ran in, the home folder as ~ (expanded by the shell, not shown to readers),
    # an absolute input inside that folder made relative to it, and the seed.
    assert command == (f"cd ~/{shlex.quote(workspace.name)} && SOURCE_DATE_EPOCH=1700000000 reportgen nets.py:build "
                       f"{shlex.quote('my photo.png')} -o out/r.html --json out/r.json -q --seed 0")
    page = (workspace / "out" / "r.html").read_text(encoding="utf-8")
    assert str(tmp_path) not in page
    shown = re.search(r'<pre class="command"><code>(.*?)</code></pre>', page, re.S)
    assert shown is not None and html.unescape(shown.group(1)) == command  # the page prints the same
    before = {name: (workspace / "out" / name).read_bytes() for name in ("r.html", "r.json")}
    for name in before:
        (workspace / "out" / name).unlink()
    # Run exactly as printed, from another folder, with no SOURCE_DATE_EPOCH of its own.
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # the same thread count as the run above: a conv's float sums depend on how it is split
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    bin_dir = Path(sys.executable).parent  # where pip put the `reportgen` script
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(["sh", "-c", command], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name, data_bytes in before.items():
        assert (workspace / "out" / name).read_bytes() == data_bytes, name


def test_bad_source_date_epoch_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(reportgen.ReportError, match="SOURCE_DATE_EPOCH"):
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu")


def test_saved_report_has_ordinary_file_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu").save(tmp_path / "r.html")
    finally:
        os.umask(umask)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644
