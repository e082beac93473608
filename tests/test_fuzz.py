"""Property-based fuzzing: random small conv architectures give a valid report exactly when
torch can run them (and a clean ReportError when it cannot); random and mutated bytes as image,
tensor, model, weights and label files give exit 0 or one `reportgen: error:` line, never a
crash. Bounded: 40 examples per property, no deadline, no example database."""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import reportgen
from reportgen import cli
from tests.fixtures.zoo import Head, assert_unchanged, check_report, snapshot

FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # capsys is read out per example

CONVS = {1: (nn.Conv1d, nn.ConvTranspose1d), 2: (nn.Conv2d, nn.ConvTranspose2d), 3: (nn.Conv3d, nn.ConvTranspose3d)}


@st.composite
def conv_nets(draw: Any) -> tuple[nn.Module, torch.Tensor, dict[str, Any], list[str]]:
    """(model, inputs, report options, names of its conv layers in call order)."""
    dims = draw(st.sampled_from([1, 2, 3]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16]))
    channels = draw(st.integers(1, 5))
    size = draw(st.integers(1, 10 if dims < 3 else 5))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers: list[nn.Module] = []
    names: list[str] = []
    current = channels
    for _ in range(draw(st.integers(1, 3))):
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if current % g == 0]))
        out = groups * draw(st.integers(1, 3))
        kernel = draw(st.integers(1, 4))
        stride = draw(st.integers(1, 3))
        dilation = draw(st.integers(1, 3))
        transposed = draw(st.booleans())
        conv, transpose = CONVS[dims]
        try:
            if transposed:
                layer: nn.Module = transpose(current, out, kernel, stride=stride, dilation=dilation, groups=groups,
                                             padding=draw(st.integers(0, 1)), bias=draw(st.booleans()))
            else:
                padding = draw(st.sampled_from([0, 1, "same"]))
                mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
                layer = conv(current, out, kernel, stride=stride, dilation=dilation, groups=groups,
                             padding=padding, padding_mode=mode, bias=draw(st.booleans()))
        except ValueError:  # e.g. padding='same' with stride > 1: torch refuses to build it
            assume(False)
        names.append(str(len(layers)))
        layers.append(layer)
        activation = draw(st.sampled_from(["none", "relu", "relu-inplace", "tanh"]))
        if activation != "none":
            layers.append({"relu": nn.ReLU(), "relu-inplace": nn.ReLU(inplace=True), "tanh": nn.Tanh()}[activation])
        current = out
    layers.append(Head(current, classes=draw(st.integers(1, 4))))
    model = nn.Sequential(*layers).to(dtype)
    if draw(st.booleans()):
        model.eval()
    count = draw(st.integers(1, 4))
    inputs = torch.randn(count, channels, *([size] * dims), generator=torch.Generator().manual_seed(count))
    options = {"batch_size": draw(st.integers(1, 3)), "max_channels": draw(st.integers(1, 8)),
               "max_inputs_shown": draw(st.integers(1, 3))}
    return model, inputs, options, names


def torch_can_run(model: nn.Module, inputs: torch.Tensor) -> bool:
    twin = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            twin(inputs.to(next(twin.parameters()).dtype))
    except (RuntimeError, ValueError):
        return False
    return True


@FUZZ
@given(conv_nets())
def test_random_conv_architectures_report_or_fail_cleanly(case: tuple[nn.Module, torch.Tensor, dict[str, Any], list[str]]) -> None:
    model, inputs, options, names = case
    runnable = torch_can_run(model, inputs)
    before = snapshot(model)
    try:
        report = reportgen.generate_report(model, inputs, device="cpu", **options)
    except reportgen.ReportError as exc:
        OUTCOMES.setdefault("architectures", {}).setdefault(2, 0)
        OUTCOMES["architectures"][2] += 1
        assert not runnable, f"torch runs this model, but the report failed: {exc}"
        assert str(exc).startswith("the model failed on input batch") and "\n" not in str(exc)
        assert_unchanged(before, model)
        return
    OUTCOMES.setdefault("architectures", {}).setdefault(0, 0)
    OUTCOMES["architectures"][0] += 1
    assert runnable, "the report succeeded where torch itself fails"
    assert_unchanged(before, model)
    assert [s.name for s in report.model.sections] == names
    for section, name in zip(report.model.sections, names):
        conv = model[int(name)]
        assert section.channels_total == conv.out_channels
        assert len(section.channels_shown) == min(conv.out_channels, options["max_channels"])
        assert len(section.feature_maps) == min(len(inputs), options["max_inputs_shown"])
    check_report(report)


# --- random bytes as files, through the CLI ------------------------------------------------------

MODEL_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
"""


def valid_files() -> dict[str, bytes]:
    """One valid file of each kind, for the fuzzer to mutate."""
    from PIL import Image

    files: dict[str, bytes] = {}
    image = Image.new("RGB", (9, 7), (10, 120, 240))
    for suffix, kind in ((".png", "PNG"), (".jpg", "JPEG"), (".gif", "GIF"), (".bmp", "BMP"), (".tif", "TIFF"),
                         (".webp", "WEBP")):
        buffer = io.BytesIO()
        image.save(buffer, format=kind)
        files[suffix] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save(torch.rand(2, 3, 8, 8), buffer)
    files[".pt"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    files[".npy"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, inputs=np.zeros((1, 3, 8, 8), np.float32), labels=np.array([1]))
    files[".npz"] = buffer.getvalue()
    return files


VALID = valid_files()
SUFFIXES = sorted(VALID)


@st.composite
def hostile_bytes(draw: Any) -> tuple[str, bytes]:
    """(suffix, content): random bytes, or a valid file truncated, bit-flipped or spliced."""
    suffix = draw(st.sampled_from(SUFFIXES))
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice", "valid"]))
    original = VALID[suffix]
    if how == "random":
        return suffix, draw(st.binary(max_size=600))
    if how == "valid":
        return suffix, original
    if how == "truncate":
        return suffix, original[: draw(st.integers(0, len(original) - 1))]
    data = bytearray(original)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        return suffix, bytes(data)
    start = draw(st.integers(0, len(data)))
    return suffix, bytes(data[:start]) + draw(st.binary(max_size=64)) + bytes(data[start:])


def run_cli(args: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = folder / "out.html"
    code = cli.main([*args, "-q", "--device", "cpu", "-o", str(out), "--max-inputs-shown", "2"])
    err = capsys.readouterr().err
    assert code in (0, 2), err  # 1 would be an internal error (a crash turned into a message)
    if code == 0:
        assert out.stat().st_size > 1000 and err == ""
    else:
        assert err.startswith("reportgen: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
        assert not out.exists()
    return code, err


OUTCOMES: dict[str, dict[int, int]] = {}


@FUZZ
@given(hostile_bytes())
def test_random_bytes_as_input_files(capsys: pytest.CaptureFixture[str], case: tuple[str, bytes]) -> None:
    suffix, content = case
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "net.py").write_text(MODEL_FILE)
        (folder / f"input{suffix}").write_bytes(content)
        code, _ = run_cli([f"{folder / 'net.py'}:build", str(folder / f"input{suffix}")], folder, capsys)
    OUTCOMES.setdefault("inputs", {}).setdefault(code, 0)
    OUTCOMES["inputs"][code] += 1


@FUZZ
@given(st.sampled_from(["model", "weights", "labels"]), hostile_bytes())
def test_random_bytes_as_model_weights_and_label_files(
    capsys: pytest.CaptureFixture[str], role: str, case: tuple[str, bytes]
) -> None:
    suffix, content = case
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "net.py").write_text(MODEL_FILE)
        target = folder / (f"thing{suffix}" if role != "labels" else "labels.txt")
        target.write_bytes(content)
        if role == "model":
            args = [str(target), "--input-shape", "3,8,8"]
        elif role == "weights":
            args = [f"{folder / 'net.py'}:build", "--weights", str(target), "--input-shape", "3,8,8"]
        else:
            args = [f"{folder / 'net.py'}:build", "--labels", str(target), "--input-shape", "3,8,8"]
        code, _ = run_cli(args, folder, capsys)
    OUTCOMES.setdefault(role, {}).setdefault(code, 0)
    OUTCOMES[role][code] += 1


def test_the_fuzzers_reached_both_outcomes() -> None:
    """Not everything is rejected at the door: some random nets and files give reports."""
    if "inputs" not in OUTCOMES or "architectures" not in OUTCOMES:
        pytest.skip("runs after the fuzzers in the same session")
    for kind in ("inputs", "architectures"):
        assert OUTCOMES[kind].get(0, 0) > 0 and OUTCOMES[kind].get(2, 0) > 0, OUTCOMES
    print("fuzz outcomes (exit code: examples):", OUTCOMES)
