"""The hook's per-row reductions: chunked on the CPU, and equal to a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reportgen
from reportgen import capture
from reportgen.capture import Scratch, reduce_rows
from tests.fixtures.models import tiny_cnn, tiny_inputs


def direct(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max and sum per (input, channel), count of values > 0 per channel (NaN is not > 0)."""
    return flat.amax(dim=2), flat.double().sum(dim=2), (flat > 0).double().sum(dim=(0, 2))


def activation(seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(shape, generator=generator)
    flat[flat.abs() < 0.1] = 0.0  # exact zeros are not positive
    return flat


@pytest.mark.parametrize("chunk", [1, 5, 37, 1 << 19])
def test_chunked_rows_equal_direct_computation(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # chunk 1 and 5: every row (11 positions) is its own chunk; 37: chunks end mid-input.
    monkeypatch.setattr(capture, "CHUNK_VALUES", chunk)
    flat = activation(0, (3, 7, 11))
    reduced = reduce_rows(flat, Scratch())
    want_max, want_sum, want_positive = direct(flat)
    assert torch.equal(reduced.max, want_max)
    torch.testing.assert_close(reduced.sum, want_sum, rtol=1e-6, atol=1e-6)
    assert torch.equal(reduced.positives, want_positive)
    assert reduced.positives.dtype == torch.float64 and reduced.finite


def test_nonfinite_rows_are_counted_by_comparison_only_where_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "CHUNK_VALUES", 11)  # one row per chunk
    flat = activation(1, (2, 4, 11))
    flat[0, 1, 3] = float("nan")
    flat[1, 2, 0] = float("inf")
    flat[1, 3, 5] = float("-inf")
    reduced = reduce_rows(flat, Scratch())
    _, _, want_positive = direct(flat)
    assert not reduced.finite
    # relu+sign would have turned the NaN into a NaN count; the comparison counts it as not > 0
    assert torch.equal(reduced.positives, want_positive)
    assert torch.isnan(reduced.max[0, 1]) and reduced.max[1, 2] == float("inf")
    unchunked = reduce_rows(flat, None)
    assert torch.equal(unchunked.positives, want_positive) and not unchunked.finite


def test_scratch_made_in_inference_mode_is_replaced_outside_it() -> None:
    scratch = Scratch()
    with torch.inference_mode():
        inside = scratch.take(16)
    assert inside.is_inference()
    outside = scratch.take(8)  # writing into an inference tensor here would raise
    assert not outside.is_inference()
    torch.clamp_min(torch.ones(8), 0, out=outside)
    assert scratch.take(4).data_ptr() == outside.data_ptr()  # then kept and reused


def test_report_statistics_do_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = tiny_cnn(), tiny_inputs(5)

    def stats() -> dict:
        report = reportgen.generate_report(model, x, device="cpu", batch_size=2)
        return {v["name"]: v["stats"] for v in json.loads(report.to_json())["visualized"]}

    whole = stats()
    monkeypatch.setattr(capture, "CHUNK_VALUES", 50)  # rows of 256 positions: one row per chunk
    chunked = stats()
    assert whole.keys() == chunked.keys() and whole
    for name in whole:
        for key in ("max", "fraction_active", "fraction_inputs_active"):
            assert whole[name][key] == chunked[name][key], (name, key)
        np.testing.assert_allclose(whole[name]["mean"], chunked[name]["mean"], rtol=1e-6, atol=1e-7)


def test_a_volume_is_a_strip_of_time_slices_pooled_slice_by_slice() -> None:
    from reportgen.capture import downsample, frame_slices, spatial_view

    volume = torch.randn(2, 3, 16, 10, 12, generator=torch.Generator().manual_seed(5))
    strip = spatial_view(volume)
    chosen = frame_slices(16)
    assert chosen == [0, 2, 4, 6, 9, 11, 13, 15] and strip.shape == (2, 3, 10, 8 * 12)
    assert torch.equal(strip, torch.cat([volume[:, :, t] for t in chosen], dim=3))
    pooled = downsample(strip, 5, frames=8)
    each = [downsample(volume[:, :, t], 5) for t in chosen]  # 4x4 each: no window across two slices
    assert torch.allclose(pooled, torch.cat(each, dim=3))
