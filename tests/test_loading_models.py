"""Models (issue 3): torchvision names and weights, factories with --model-arg, checkpoints in every
common wrapping (DataParallel, legacy pickle format, torch.compile, nested dicts, safetensors),
TorchScript, torch.export and pickled modules. Each report's predictions are compared with the
model run directly on the same tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
import subprocess
import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from reportgen.cli import main
from tests.fixtures.models import Fixed32Net

REPO = Path(__file__).resolve().parents[1]

NET_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, classes=4, width=6):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, 8, 3, padding=1)
            self.fc = nn.Linear(8, classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


    def build(classes=4, width=6):
        return Net(classes, width)
    """
)


def run(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    out, js = tmp_path / "report.html", tmp_path / "report.json"
    code = main([*args, "-o", str(out), "--json", str(js), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(js.read_text(encoding="utf-8"))


@pytest.fixture()
def trained(tmp_path: Path) -> tuple[Path, nn.Module, Path, torch.Tensor]:
    """net.py, a seeded 'trained' Net (BN statistics moved off their defaults), and inputs.pt."""
    source = tmp_path / "net.py"
    source.write_text(NET_SOURCE, encoding="utf-8")
    torch.manual_seed(11)
    # A real module name: TorchScript cannot serialise classes from runpy's "<run_path>".
    spec = importlib.util.spec_from_file_location("loading_test_net", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.3, 0.3)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.fc.bias.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0]))
    model.eval()
    inputs = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(12))
    torch.save(inputs, tmp_path / "inputs.pt")
    return source, model, tmp_path / "inputs.pt", inputs


def assert_predictions_match(report: dict, model: nn.Module, inputs: torch.Tensor) -> None:
    with torch.no_grad():
        expected = torch.softmax(model.eval()(inputs), dim=1)
    assert len(report["predictions"]) == len(inputs)
    for row, prediction in enumerate(report["predictions"]):
        top = prediction["top"][0]
        assert top["index"] == int(expected[row].argmax())
        assert top["probability"] == pytest.approx(float(expected[row].max()), abs=1e-5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


CHECKPOINTS = {
    # name: (state_dict -> object to save, extra torch.save kwargs)
    "plain-state-dict": (lambda sd: sd, {}),
    # Saved from nn.DataParallel in the pre-1.6 pickle format, without BN counters, as the
    # real CIFAR ResNet-20 checkpoint in ../shared/data is.
    "dataparallel-legacy": (
        lambda sd: {"best_prec1": 91.5, "state_dict": {k: v for k, v in _prefixed(sd, "module.").items()
                                                        if not k.endswith("num_batches_tracked")}},
        {"_use_new_zipfile_serialization": False},
    ),
    "compiled-model-state-dict": (
        lambda sd: {"epoch": 3, "model_state_dict": _prefixed(sd, "_orig_mod."),
                    "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
        {},
    ),
    "nested-ddp-compiled": (lambda sd: {"model": {"state_dict": _prefixed(sd, "module._orig_mod.")}}, {}),
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_factory_file_with_checkpoint_in_every_wrapping(trained, tmp_path, capsys, kind):
    source, model, inputs_pt, inputs = trained
    wrap, save_kwargs = CHECKPOINTS[kind]
    checkpoint = tmp_path / f"{kind}.pth"
    torch.save(wrap(model.state_dict()), checkpoint, **save_kwargs)
    if kind == "dataparallel-legacy":
        assert not __import__("zipfile").is_zipfile(checkpoint)  # really the legacy format
    report = run([f"{source}:build", "--weights", str(checkpoint), str(inputs_pt)], tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    info = report["model"]
    # Paths in a report are relative to where reportgen ran; tmp_path is outside it: names only.
    assert info["sha256"] == sha256(checkpoint) and info["file"] == checkpoint.name
    assert info["source"] == f"factory {source.name}:build, weights from {checkpoint.name}"
    assert info["random_weights"] is False


def test_safetensors_checkpoint(trained, tmp_path, capsys):
    safetensors_torch = pytest.importorskip(
        "safetensors.torch", reason="safetensors is optional: pip install reportgen[safetensors]")
    source, model, inputs_pt, inputs = trained
    checkpoint = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(checkpoint))
    report = run([f"{source}:build", "--weights", str(checkpoint), str(inputs_pt)], tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    assert report["model"]["sha256"] == sha256(checkpoint)


def test_package_module_factory_class_with_literal_model_args(tmp_path, capsys, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "nets.py").write_text(NET_SOURCE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # `package.module` resolves from where reportgen runs
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    torch.save(torch.rand(2, 3, 8, 8), tmp_path / "x.pt")
    report = run(["userpkg.nets:Net", "--model-arg", "classes=7", "--model-arg", "width=(3)", "x.pt"],
                 tmp_path, capsys)
    params = {row["name"]: row["params"] for row in report["layers"]}
    assert params["conv1"] == 3 * 3 * 3 * 3 + 3 and params["fc"] == 8 * 7 + 7
    assert len(report["predictions"][0]["top"]) == 5 and all(t["index"] < 7 for t in report["predictions"][0]["top"])
    assert report["model"]["source"] == "factory userpkg.nets:Net"
    assert "userpkg.nets" in sys.modules and str(tmp_path) not in sys.path  # sys.path put back


def test_torchscript_archive(trained, tmp_path, capsys):
    _, model, inputs_pt, inputs = trained
    archive = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, inputs[:1]), str(archive))
    report = run([str(archive), str(inputs_pt)], tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    assert report["model"]["source"] == "TorchScript archive" and report["model"]["sha256"] == sha256(archive)


def test_torch_export_program_runs_at_its_traced_batch_size(trained, tmp_path, capsys):
    _, model, inputs_pt, inputs = trained
    program_file = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (inputs[:1],)), str(program_file))
    report = run([str(program_file), str(inputs_pt)], tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    assert report["model"]["source"] == "torch.export program"
    assert report["model"]["sha256"] == sha256(program_file)
    assert any("fixed at 1" in n for n in report["notes"])
    # With no inputs, probes take the traced shape instead of guessing.
    report = run([str(program_file)], tmp_path, capsys)
    assert {tuple(i["shape"]) for i in report["inputs"]} == {(3, 12, 12)}


def test_pickled_module_needs_trust_pickle(tmp_path, capsys):
    model = Fixed32Net().eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    inputs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.save(inputs, tmp_path / "x.pt")
    code = main([str(path), str(tmp_path / "x.pt"), "-o", str(tmp_path / "r.html"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "tests.fixtures.models.Fixed32Net" in err and "--trust-pickle" in err
    assert not (tmp_path / "r.html").exists()
    report = run([str(path), "--trust-pickle", str(tmp_path / "x.pt")], tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    assert report["model"]["source"] == "pickled nn.Module (--trust-pickle)"


def test_torchvision_metadata_gives_preprocessing_and_class_names(tmp_path, capsys):
    from PIL import Image
    from torchvision.models import SqueezeNet1_1_Weights

    Image.new("RGB", (50, 40), (120, 60, 30)).save(tmp_path / "photo.png")
    report = run(["torchvision:squeezenet1_1", str(tmp_path / "photo.png")], tmp_path, capsys)
    assert report["model"]["random_weights"] is True
    assert report["inputs"][0]["shape"] == [3, 224, 224]
    steps = " | ".join(report["run"]["preprocessing"])
    assert "resize shorter side to 256 px" in steps and "center crop 224x224" in steps
    assert "normalise: (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]" in steps
    assert "SqueezeNet1_1_Weights.IMAGENET1K_V1 metadata" in steps
    categories = SqueezeNet1_1_Weights.DEFAULT.meta["categories"]
    top = report["predictions"][0]["top"][0]
    assert top["label"] == categories[top["index"]]


def test_torchvision_with_a_local_weights_file(tmp_path, capsys):
    from torchvision.models import squeezenet1_1

    torch.manual_seed(21)
    model = squeezenet1_1(num_classes=1000).eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "squeeze.pth")
    inputs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(22))
    torch.save(inputs, tmp_path / "x.pt")
    report = run(["torchvision:squeezenet1_1", "--weights", str(tmp_path / "squeeze.pth"), str(tmp_path / "x.pt")],
                 tmp_path, capsys)
    assert_predictions_match(report, model, inputs)
    assert report["model"]["random_weights"] is False and report["model"]["sha256"] == sha256(tmp_path / "squeeze.pth")


@pytest.mark.parametrize(("name", "weights"), [
    ("squeezenet1_1", "SqueezeNet1_1_Weights.IMAGENET1K_V1"),
    # a detection builder: random weights need no backbone download, DEFAULT still fails in one line
    ("ssdlite320_mobilenet_v3_large", "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"),
])
def test_torchvision_download_failure_is_one_line_and_suggests_a_path(name, weights, tmp_path, capsys, monkeypatch):
    import torch.hub

    def unreachable(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    out = tmp_path / "r.html"
    code = main([f"torchvision:{name}", "--weights", "DEFAULT", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith(f"reportgen: error: could not download torchvision weights {weights}")
    assert "pass --weights PATH" in err and str(tmp_path / "torch-home") in err
    # An enum member by name goes the same way.
    code = main([f"torchvision:{name}", "--weights", weights.split(".")[-1], "-o", str(out), "-q"])
    assert code == 2 and "could not download" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_torchvision_real_download_path_fails_cleanly_offline(tmp_path):
    """The real torch.hub download, in a fresh process, with every HTTP(S) connection sent to a
    closed local port: it must end in one error line, quickly, with nothing written."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "torch-home"),
           "HOME": str(tmp_path), "https_proxy": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy,
           "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    out = tmp_path / "r.html"
    done = subprocess.run(
        [sys.executable, "-m", "reportgen", "torchvision:squeezenet1_1", "--weights", "DEFAULT", "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "could not download torchvision weights" in done.stderr
    assert "--weights PATH" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert not cache.exists() or not any(cache.iterdir())
