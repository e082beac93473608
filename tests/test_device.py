"""Device handling: only reduced data leaves the device, and CUDA gives the CPU's report.

The CUDA tests skip on machines without a GPU (CI); they were run on a lent H100.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reportgen
from reportgen.devices import resolve_device
from tests.fixtures.models import tiny_cnn, tiny_inputs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_only_tiles_and_statistics_are_copied_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every .cpu() during analysis moves uint8 tiles or per-channel vectors, never activations."""
    copies: list[tuple[torch.dtype, tuple[int, ...]]] = []
    original = torch.Tensor.cpu

    def recording_cpu(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        copies.append((self.dtype, tuple(self.shape)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", recording_cpu)
    model = tiny_cnn()
    reportgen.generate_report(model, tiny_inputs(6, size=24), device="cpu", max_channels=4, batch_size=3)
    activation_numel = 12 * 24 * 24  # one input's output of the second conv
    assert copies, "expected the capture to copy its reduced results"
    for dtype, shape in copies:
        numel = int(np.prod(shape)) if shape else 1
        if dtype == torch.uint8:
            continue  # quantised tiles: the only per-pixel data that leaves the device
        assert numel < activation_numel, (dtype, shape)


def test_resolve_device_rejects_what_is_not_there() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(reportgen.ReportError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(reportgen.ReportError, match="unknown device"):
        resolve_device("quantum")


@cuda
def test_cuda_report_matches_cpu_report_and_model_returns_to_cpu() -> None:
    model, x = tiny_cnn(), tiny_inputs(4)
    on_cpu = reportgen.generate_report(model, x, device="cpu").to_dict()
    on_gpu = reportgen.generate_report(model, x, device="cuda").to_dict()
    assert next(model.parameters()).device.type == "cpu"
    assert on_gpu["run"]["device"].startswith("cuda")
    for a, b in zip(on_cpu["visualized"], on_gpu["visualized"]):
        np.testing.assert_allclose(a["stats"]["mean"], b["stats"]["mean"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a["stats"]["max"], b["stats"]["max"], rtol=1e-4, atol=1e-5)
    for a, b in zip(on_cpu["predictions"], on_gpu["predictions"]):
        assert [t["index"] for t in a["top"]][:1] == [t["index"] for t in b["top"]][:1]


@cuda
def test_model_already_on_cuda_stays_there() -> None:
    model = tiny_cnn().cuda()
    reportgen.generate_report(model, tiny_inputs(2), device="cuda")
    assert next(model.parameters()).device.type == "cuda"
