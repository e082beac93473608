"""Faults during the run: out of memory (retried with smaller batches), a forward that raises,
NaN in activations, an interrupt. Each recovers and says so, or stops with a clear message,
and the model is left exactly as it was every time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.errors import ReportError
from reportgen.faults import is_out_of_memory
from tests.fixtures.zoo import Head, assert_unchanged, check_report, no_hooks_anywhere, rand, snapshot


class OutOfMemoryAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than `limit` (on any device),
    after the first conv has already run, so its hook has captured part of the batch."""

    def __init__(self, limit: int, fail_on_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        torch.manual_seed(40)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.head = Head(5, classes=4)
        self.limit = limit
        self.fail_on_calls = fail_on_calls
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = torch.relu(self.conv1(x))
        if x.shape[0] > self.limit or self.calls in self.fail_on_calls:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (batch of {x.shape[0]})")
        return self.head(self.conv2(x))


def same_analysis(report: reportgen.Report, reference: reportgen.Report) -> None:
    """Identical statistics, pictures and predictions: nothing double counted or lost."""
    assert [s.name for s in report.model.sections] == [s.name for s in reference.model.sections]
    for got, want in zip(report.model.sections, reference.model.sections):
        for field in ("mean", "max", "fraction_active", "fraction_inputs_active", "nonfinite"):
            np.testing.assert_allclose(getattr(got.stats, field), getattr(want.stats, field), rtol=1e-5, atol=1e-7)
        assert [fm.input_name for fm in got.feature_maps] == [fm.input_name for fm in want.feature_maps]
        for a, b in zip(got.feature_maps, want.feature_maps):
            assert a.grid.image.sha256 == b.grid.image.sha256
    assert [p.input for p in report.model.predictions] == [p.input for p in reference.model.predictions]
    for a, b in zip(report.model.predictions, reference.model.predictions):
        assert [t.index for t in a.top] == [t.index for t in b.top]
    assert [i.name for i in report.model.inputs] == [i.name for i in reference.model.inputs]


@pytest.fixture(scope="module")
def reference() -> reportgen.Report:
    return reportgen.generate_report(OutOfMemoryAbove(limit=100), rand(7, 3, 6, 6), device="cpu", batch_size=1)


def test_out_of_memory_halves_the_batch_and_discards_the_partial_capture(reference: reportgen.Report) -> None:
    model = OutOfMemoryAbove(limit=2)
    before = snapshot(model)
    report = reportgen.generate_report(model, rand(7, 3, 6, 6), device="cpu", batch_size=8)
    assert_unchanged(before, model)
    same_analysis(report, reference)
    notes = [n for n in report.model.notes if n.startswith("Out of memory")]
    # 7 inputs: the batch of 7 fails, then 3 fails, then batches of 1 go through.
    assert notes == [
        "Out of memory on a batch of 7 input(s) starting at input-00: that batch's partial results "
        "were discarded and the run went on with batches of 3.",
        "Out of memory on a batch of 3 input(s) starting at input-00: that batch's partial results "
        "were discarded and the run went on with batches of 1.",
    ]
    check_report(report)


def test_out_of_memory_mid_run_keeps_earlier_batches(reference: reportgen.Report) -> None:
    # call 1 is the one-input forward that learns the activation sites; call 3 is the second batch
    model = OutOfMemoryAbove(limit=100, fail_on_calls=(3,))  # the second batch fails once
    report = reportgen.generate_report(model, rand(7, 3, 6, 6), device="cpu", batch_size=4)
    same_analysis(report, reference)
    assert [n for n in report.model.notes if n.startswith("Out of memory")] == [
        "Out of memory on a batch of 3 input(s) starting at input-04: that batch's partial results "
        "were discarded and the run went on with batches of 1."
    ]


def test_out_of_memory_with_a_batch_of_one_is_a_clean_error() -> None:
    model = OutOfMemoryAbove(limit=0)
    model.train()
    before = snapshot(model)
    with pytest.raises(ReportError, match=r"^out of memory on input input-00 even with a batch of 1 on cpu: try smaller inputs$"):
        reportgen.generate_report(model, rand(3, 3, 6, 6), device="cpu", batch_size=2)
    assert_unchanged(before, model)
    assert no_hooks_anywhere(model)


class FailsOnCall(nn.Module):
    """Raises a plain error from inside the second conv on the n-th forward call."""

    def __init__(self, call: int, error: type[BaseException] = RuntimeError) -> None:
        super().__init__()
        torch.manual_seed(41)
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.head = Head(4)
        self.call, self.error, self.calls = call, error, 0
        self.conv2.register_forward_pre_hook(self._maybe_fail)  # the user's own hook must survive

    def _maybe_fail(self, module: nn.Module, args: object) -> None:
        self.calls += 1
        if self.calls == self.call:
            raise self.error("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.bn(self.conv1(x))))


def test_a_forward_that_raises_mid_batch_names_the_batch_and_leaves_the_model() -> None:
    model = FailsOnCall(call=4)  # call 1: the one-input forward that learns the activation sites
    model.train()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    before = snapshot(model)
    with pytest.raises(ReportError) as caught:
        reportgen.generate_report(model, rand(6, 3, 8, 8), device="cpu", batch_size=2)
    message = str(caught.value)
    assert message == ("the model failed on input batch input-04 .. input-05 of shape [2, 3, 8, 8]: "
                       "RuntimeError: cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
    assert_unchanged(before, model)
    assert len(model.conv2._forward_pre_hooks) == 1  # ours are gone, the user's stays


def test_an_interrupt_inside_the_forward_propagates_and_leaves_the_model() -> None:
    model = FailsOnCall(call=2, error=KeyboardInterrupt)
    model.eval()
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        reportgen.generate_report(model, rand(4, 3, 8, 8), device="cpu", batch_size=2)
    assert_unchanged(before, model)


class NaNForSomeInputs(nn.Module):
    """Channel 1 of the second conv turns NaN (and channel 2 Inf) for inputs whose mean > 0.8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(42)
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.head = Head(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = x.flatten(1).mean(dim=1) > 0.8
        y = self.conv1(x)
        y = y + torch.where(bright, float("nan"), 0.0)[:, None, None, None] * (torch.arange(4) == 1)[None, :, None, None]
        y = y + torch.where(bright, float("inf"), 0.0)[:, None, None, None] * (torch.arange(4) == 2)[None, :, None, None]
        poison = 0.0 * y.flatten(1).sum(dim=1, keepdim=True)  # NaN for the bright inputs only
        return self.head(self.conv2(torch.nan_to_num(y, nan=0.0, posinf=0.0))) + poison


def test_nan_in_activations_is_reported_not_hidden() -> None:
    x = rand(4, 3, 6, 6)
    x[1] += 0.6
    x[3] += 0.6  # inputs 1 and 3 are bright
    model = NaNForSomeInputs()
    before = snapshot(model)
    report = reportgen.generate_report(model, x, device="cpu", batch_size=3)
    assert_unchanged(before, model)
    first = next(s for s in report.model.sections if s.name == "conv1")
    # The conv1 hook sees its own clean output; the NaN is added after it.
    assert sum(first.stats.nonfinite) == 0
    # Inputs 1 and 3 give NaN logits (0 * inf = NaN): said in the notes, null in the JSON.
    assert any("NaN or Inf for 2 input(s)" in note for note in report.model.notes)
    data = json.loads(report.to_json())
    bad = [p for p in data["predictions"] if p["top"][0]["probability"] is None]
    assert [p["input"] for p in bad] == ["input-01", "input-03"]
    check_report(report)


def test_nan_inside_a_captured_layer_is_an_alert_with_counts() -> None:
    torch.manual_seed(43)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1), Head(4))
    with torch.no_grad():
        model[1].weight[2, 0] = float("nan")  # channel 2 of layer 1 is NaN everywhere
    report = reportgen.generate_report(model, rand(3, 3, 6, 6), device="cpu")
    alerts = [a for a in report.model.alerts if a.kind == "nonfinite-activation"]
    assert [(a.layer, a.message) for a in alerts] == [(
        "1", "48 NaN/Inf activation values in 1 channel(s) at the raw conv output (no normalisation or "
             "activation acts on it directly), on all 3 inputs seen.")]
    grid = next(s for s in report.model.sections if s.name == "1").feature_maps[0].grid
    assert 2 in grid.flat_channels and grid.tile_min[2] is None
    assert "NaN" in report.to_html()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"), True),
        (MemoryError(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
        (ValueError("out of memory"), False),  # only allocator errors count
    ],
)
def test_out_of_memory_is_recognised_by_type_and_message(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected
    wrapped = ReportError("the model failed")
    wrapped.__cause__ = error
    assert is_out_of_memory(wrapped) is expected
