"""Under torchrun (CPU, gloo): ranks share the dataset by whole batches and rank 0 writes a report
whose every number equals the one-process run's; a failing rank ends the run with one line."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
MODEL = "tests.fixtures.models:tiny_cnn"


def dataset(root: Path, per_class: int = 7) -> tuple[Path, Path]:
    rng = np.random.default_rng(4)
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{k}.png")
    labels = root.parent / "labels.txt"
    labels.write_text("a\nb\nc\n", encoding="utf-8")
    return root, labels


def arguments(data: Path, labels: Path, out: Path, *extra: str) -> list[str]:
    return [MODEL, "--model-arg", "classes=3", "--dataset", str(data), "--labels", str(labels),
            "--batch-size", "4", "--max-inputs-shown", "3", "--top-k", "3", "--ablation", "--misfiring",
            "--device", "cpu", "-q", "-o", str(out.with_suffix(".html")), "--json", str(out), *extra]


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SOURCE_DATE_EPOCH="0")
    env.pop("WORLD_SIZE", None)
    return env


def single(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reportgen", *args], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=300)


def torchrun(args: list[str], *launcher: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TORCHRUN, *launcher, "-m", "reportgen", *args], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=300)


def comparable(report: dict) -> dict:
    """The JSON without what says how it was run (notes on processes, the command, timings)."""
    report = json.loads(json.dumps(report))
    report["notes"] = [n for n in report["notes"] if not n.startswith(("Run by", "Under torchrun"))]
    report.get("run", {}).pop("command", None)
    return report


def assert_equal(a: object, b: object, path: str = "") -> None:
    """Equal, floats within 1e-9 relative (merged sums add in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), path
        for key in a:
            assert_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


def test_two_ranks_give_the_one_process_report(tmp_path: Path) -> None:
    data, labels = dataset(tmp_path / "ds")
    one = single(arguments(data, labels, tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    two = torchrun(arguments(data, labels, tmp_path / "two.json"), "--standalone", "--nproc-per-node", "2")
    assert two.returncode == 0, two.stderr
    assert two.stdout.split() == [str(tmp_path / "two.html"), str(tmp_path / "two.json")]  # rank 0 only
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert any(n.startswith("Run by 2 processes on 1 machine") for n in second["notes"])
    assert second["impact"]["ablation"] is not None and second["impact"]["misfiring"] is not None
    assert_equal(comparable(first), comparable(second))


def test_two_simulated_nodes_give_the_one_process_report(tmp_path: Path) -> None:
    data, labels = dataset(tmp_path / "ds")
    one = single(arguments(data, labels, tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", "127.0.0.1:29731", "--rdzv-id", "reportgen-test"]
    nodes = [subprocess.Popen([TORCHRUN, *launcher, "-m", "reportgen",
                               *arguments(data, labels, tmp_path / "two.json")],
                              cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err for _, err in outputs]
    second = json.loads((tmp_path / "two.json").read_text())
    assert any(n.startswith("Run by 2 processes on 2 machines") for n in second["notes"])
    assert_equal(comparable(json.loads((tmp_path / "one.json").read_text())), comparable(second))


def test_a_rank_that_fails_ends_the_run_with_one_line_and_no_output(tmp_path: Path) -> None:
    """The truncated file is found by rank 1 in its share of the pass: rank 0 says so, in one
    line, and nothing is written. A file no rank can open fails before the pass, as one line too."""
    data, labels = dataset(tmp_path / "ds")
    # input 16 of 21 (batches of 4: rank 1 has 12..20) is all white, and the model refuses white
    # inputs: it fails in rank 1's share of the pass only
    Image.fromarray(np.full((12, 12, 3), 255, dtype=np.uint8)).save(data / "c" / "c2.png")
    (tmp_path / "fragile.py").write_text(
        "import torch\n"
        "from tests.fixtures.models import tiny_cnn\n"
        "class Fragile(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = tiny_cnn(classes=3)\n"
        "    def forward(self, x):\n"
        "        if bool((x.flatten(1).min(dim=1).values > 0.99).any()):\n"
        "            raise RuntimeError('white input')\n"
        "        return self.net(x)\n"
        "def build():\n"
        "    return Fragile()\n", encoding="utf-8")
    fragile = [str(tmp_path / "fragile.py:build"), *arguments(data, labels, tmp_path / "r.json")[3:]]
    out = tmp_path / "r.json"
    two = torchrun(fragile, "--standalone", "--nproc-per-node", "2")
    assert two.returncode != 0
    ours = [line for line in two.stderr.splitlines() if line.startswith("reportgen:")]
    assert len(ours) == 1 and ours[0].startswith("reportgen: error:") and "white input" in ours[0], two.stderr
    assert not out.exists() and not out.with_suffix(".html").exists()
    assert "rank 1 of 2" in ours[0] and "c2.png" in ours[0]  # found by rank 1, said by rank 0

    (data / "c" / "c6.png").write_bytes(b"not an image")  # every rank fails on it while listing
    two = torchrun(arguments(data, labels, out, "--strict"), "--standalone", "--nproc-per-node", "2")
    ours = [line for line in two.stderr.splitlines() if line.startswith("reportgen:")]
    assert two.returncode != 0 and len(ours) == 1 and "c6.png" in ours[0], two.stderr
    assert not out.exists()


def test_a_killed_rank_ends_the_run_and_an_earlier_report_stays(tmp_path: Path) -> None:
    """A rank killed mid-pass (SIGKILL: nothing of reportgen's runs) is torchrun's to see: it
    stops the other rank, the run exits non-zero in bounded time, and the report already at the
    output path is left as it was."""
    import time

    data, labels = dataset(tmp_path / "ds")
    Image.fromarray(np.full((12, 12, 3), 255, dtype=np.uint8)).save(data / "c" / "c2.png")  # in rank 1's share
    (tmp_path / "doomed.py").write_text(
        "import os, signal, torch\n"
        "from tests.fixtures.models import tiny_cnn\n"
        "class Doomed(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = tiny_cnn(classes=3)\n"
        "    def forward(self, x):\n"
        "        if bool((x.flatten(1).min(dim=1).values > 0.99).any()):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        return self.net(x)\n"
        "def build():\n"
        "    return Doomed()\n", encoding="utf-8")
    out = tmp_path / "r.json"
    out.write_text("earlier report", encoding="utf-8")
    out.with_suffix(".html").write_text("<p>earlier report</p>", encoding="utf-8")
    started = time.monotonic()
    two = torchrun([str(tmp_path / "doomed.py:build"), *arguments(data, labels, out)[3:]],
                   "--standalone", "--nproc-per-node", "2")
    took = time.monotonic() - started
    assert two.returncode != 0 and took < 120, (two.returncode, took)
    assert "SIGKILL" in two.stderr or "Signal 9" in two.stderr, two.stderr[-2000:]
    assert out.read_text(encoding="utf-8") == "earlier report"
    assert out.with_suffix(".html").read_text(encoding="utf-8") == "<p>earlier report</p>"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert left == ["doomed.py", "ds", "labels.txt", "r.html", "r.json"]  # nothing half-written


def test_a_rank_with_no_batch_still_takes_part(tmp_path: Path) -> None:
    """3 inputs in one batch of 16: rank 1's share is empty; the report is the one-process one."""
    import torch

    torch.save(torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    args = [MODEL, str(tmp_path / "x.pt"), "--ablation", "--device", "cpu", "-q"]
    one = single([*args, "-o", str(tmp_path / "one.html"), "--json", str(tmp_path / "one.json")])
    two = torchrun([*args, "-o", str(tmp_path / "two.html"), "--json", str(tmp_path / "two.json")],
                   "--standalone", "--nproc-per-node", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert_equal(comparable(first), comparable(second))


def test_compare_under_two_ranks_gives_the_one_process_comparison(tmp_path: Path) -> None:
    """`reportgen compare` under torchrun: CKA sums, correlations, flips and predictions of the
    two shares add up to the one-process comparison."""
    import torch

    from tests.fixtures.models import tiny_cnn

    for seed in (0, 1):
        torch.save(tiny_cnn(seed=seed).state_dict(), tmp_path / f"ckpt_{seed}.pt")
    torch.save(torch.rand(20, 3, 12, 12, generator=torch.Generator().manual_seed(2)), tmp_path / "x.pt")
    args = ["compare", MODEL, "--weights", str(tmp_path / "ckpt_0.pt"), "--weights", str(tmp_path / "ckpt_1.pt"),
            str(tmp_path / "x.pt"), "--batch-size", "4", "--device", "cpu", "-q"]
    one = single([*args, "-o", str(tmp_path / "one.html"), "--json", str(tmp_path / "one.json")])
    two = torchrun([*args, "-o", str(tmp_path / "two.html"), "--json", str(tmp_path / "two.json")],
                   "--standalone", "--nproc-per-node", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert any(n.startswith("Run by 2 processes") for n in second["notes"])
    assert second["cka"]["inputs_used"] == first["cka"]["inputs_used"] == 20
    assert_equal(comparable(first), comparable(second))
