"""The zoo: odd but legal models all give a valid report (or the honest clean error), with the
numbers right, and every model is left exactly as it was."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reportgen
from reportgen.api import ReportOptions
from reportgen.capture import frame_slices
from tests.fixtures import zoo
from tests.fixtures.zoo import ZOO, assert_unchanged, check_report, rand, snapshot
from tests.helpers import MAGENTA, decode, tile_pixels

ENTRIES = {entry.name: entry for entry in ZOO}


@cache
def run(name: str) -> tuple[nn.Module, torch.Tensor, Any]:
    """Build the zoo model, give it stale grads, run the report; (model, inputs, report or error)."""
    entry = ENTRIES[name]
    model = entry.build()
    inputs = entry.inputs()
    for index, parameter in enumerate(model.parameters()):
        if index % 2 == 0 and not isinstance(parameter, nn.parameter.UninitializedParameter):
            parameter.grad = torch.full_like(parameter, 0.5)  # left over from training
    before = snapshot(model)
    try:
        result: Any = reportgen.generate_report(model, inputs, device="cpu", **entry.options)
    except reportgen.ReportError as exc:
        result = exc
    assert_unchanged(before, model)
    return model, inputs, result


def report_of(name: str) -> Any:
    result = run(name)[2]
    assert isinstance(result, reportgen.Report), f"{name}: {result}"
    return result


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_zoo_model_gives_a_valid_report_or_its_honest_error(name: str) -> None:
    entry = ENTRIES[name]
    model, _, result = run(name)  # run() already asserted the model is unchanged
    if entry.error is not None:
        assert isinstance(result, reportgen.ReportError)
        message = str(result)
        assert re.search(entry.error, message), message
        assert "\n" not in message
        return
    assert isinstance(result, reportgen.Report), f"{name} failed: {result}"
    assert tuple(s.name for s in result.model.sections) == entry.sections
    check_report(result)
    assert result.model.layers, "the summary table is never empty"


def section(report: Any, name: str) -> Any:
    return next(s for s in report.model.sections if s.name == name)


def assert_stats_match(sec: Any, output: torch.Tensor) -> None:
    """Report statistics and input 0's legend numbers equal a direct computation on `output`."""
    out = output.detach().double()
    flat = out.flatten(2)
    np.testing.assert_allclose(sec.stats.mean, flat.mean(dim=2).mean(dim=0).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sec.stats.max, flat.amax(dim=2).amax(dim=0).numpy(), rtol=1e-4, atol=1e-6)
    grid = sec.feature_maps[0].grid
    shown = len(grid.channels)
    view = out[0, :shown]
    if view.dim() == 4:  # volumes: a strip of up to 8 time slices side by side, as documented
        view = torch.cat([view[:, t] for t in frame_slices(view.shape[1])], dim=2)
    np.testing.assert_allclose(grid.tile_min, view.flatten(1).amin(dim=1).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grid.tile_max, view.flatten(1).amax(dim=1).numpy(), rtol=1e-4, atol=1e-6)


def test_inplace_relu_chain_is_observed_after_its_first_relu_or_raw_with_tap_conv() -> None:
    model, x, report = run("inplace-relu-chain")
    with torch.no_grad():
        first = model[0](x)  # the conv output before any ReLU, computed directly
        second = model[2](torch.relu(first))
    assert float(first.min()) < 0 and float(second.min()) < 0  # a ReLU would have removed these
    assert_stats_match(section(report, "0"), torch.relu(first))
    assert_stats_match(section(report, "2"), torch.relu(second))
    assert section(report, "2").site == "after 3 (ReLU)"  # the first of the two in-place ReLUs
    raw = reportgen.generate_report(model, x, device="cpu", tap="conv")
    assert_stats_match(section(raw, "0"), first)  # in-place ReLUs after it cannot reach it
    assert_stats_match(section(raw, "2"), second)
    assert min(section(raw, "2").feature_maps[0].grid.tile_min) < 0


def test_a_conv_called_twice_gets_two_entries_with_their_own_numbers() -> None:
    model, x, report = run("reused-conv")
    with torch.no_grad():
        once = model.shared(torch.relu(model.stem(x)))
        twice = model.shared(torch.relu(once))
    assert_stats_match(section(report, "shared"), torch.relu(once))  # each call at its own site
    assert_stats_match(section(report, "shared#2"), twice)  # nothing activates the second call
    assert section(report, "shared").site == "after relu()"
    assert section(report, "shared#2").site.startswith("the raw conv output")
    rows = [row.name for row in report.model.layers]
    assert "shared" in rows and "shared#2" in rows
    assert section(report, "shared").filters is not None and section(report, "shared#2").filters is None


@pytest.mark.parametrize("name", ["dict-output", "tuple-output"])
def test_dict_and_tuple_outputs_still_give_predictions(name: str) -> None:
    model, x, report = run(name)
    with torch.no_grad():
        output = model(x)
    logits = output["logits"] if isinstance(output, dict) else output[0]
    probabilities = torch.softmax(logits, dim=1)
    assert len(report.model.predictions) == len(x)
    for row, prediction in enumerate(report.model.predictions):
        assert prediction.top[0].index == int(probabilities[row].argmax())
        assert prediction.top[0].probability == pytest.approx(float(probabilities[row].max()), rel=1e-5)
    assert_stats_match(section(report, "conv"), model.conv(x))


def test_conv1d_maps_and_kernels_are_line_plots() -> None:
    model, x, report = run("conv1d")
    first = section(report, "0")
    grid = first.feature_maps[0].grid
    assert (grid.tile_height, grid.tile_width) == (24, 40)  # one column per position (40 <= 64)
    assert first.filters.tile_height == 24 and first.filters.tile_width == 35  # 5 taps, 7 px each
    assert decode(grid.image).height == 1 + grid.rows * 25
    with torch.no_grad():
        assert_stats_match(first, torch.relu(model[0](x)))


def test_conv3d_shows_its_time_slices_side_by_side() -> None:
    model, x, report = run("conv3d")
    sec = section(report, "0")
    assert sec.output_shape == (1, 3, 5, 6, 7)
    assert sec.feature_maps[0].grid.tile_height == 6 and sec.feature_maps[0].grid.tile_width == 5 * 7
    with torch.no_grad():
        assert_stats_match(sec, torch.relu(model[0](x)))
    assert "time (depth) slices all 5 side by side" in sec.feature_maps[0].grid.legend
    assert frame_slices(5) == [0, 1, 2, 3, 4] and frame_slices(16) == [0, 2, 4, 6, 9, 11, 13, 15]


def test_transposed_and_grouped_transposed_filters() -> None:
    _, _, report = run("conv-transpose")
    up = section(report, "2")
    assert up.weight_shape == (4, 5, 3, 3)
    assert len(up.filters.channels) == 5  # one tile per output channel
    grouped = section(run("grouped-transpose")[2], "0")
    assert grouped.weight_shape == (4, 3, 3, 3)
    assert "grouped transposed" in grouped.filter_note


def test_depthwise_grouped_dilated_strided_same() -> None:
    report = report_of("depthwise-grouped")
    assert section(report, "2").weight_shape == (6, 1, 3, 3)
    assert "6 groups" in section(report, "2").filter_note
    assert "2 groups" in section(report, "4").filter_note
    shapes = [s.output_shape for s in report_of("dilated-strided-same").model.sections]
    assert shapes == [(1, 4, 12, 12), (1, 4, 5, 5), (1, 4, 5, 5)]


def test_a_model_without_convolutions_gets_the_summary_only_said_plainly() -> None:
    report = report_of("no-conv")
    assert report.model.sections == ()
    assert [a.kind for a in report.model.alerts] == ["no-conv"]
    assert "summary only" in report.to_html()
    assert [row.type for row in report.model.layers if row.depth == 1] == ["Flatten", "Linear", "ReLU", "Linear"]


def test_functional_convs_are_named_not_silently_dropped() -> None:
    report = report_of("functional-conv")
    notes = " ".join(report.model.notes)
    assert "hooks never fired" in notes and ": conv." in notes
    assert "not torch conv layers" in notes and ": own;" in notes
    # Asked for by name, the module that owns a conv-shaped weight is drawn, filters and all.
    model, x, _ = run("functional-conv")
    drawn = reportgen.generate_report(model, x, device="cpu", layers=["own"])
    own = section(drawn, "own")
    assert own.weight_shape == (5, 4, 3, 3) and own.filters is not None
    with torch.no_grad():
        assert_stats_match(own, model.own(torch.relu(F.conv2d(x, model.conv.weight, model.conv.bias, padding=1))))


def test_deeply_nested_containers() -> None:
    report = report_of("deeply-nested")
    names = [row.name for row in report.model.layers]
    assert "outer.0.blocks.1.0.a" in names
    assert max(row.depth for row in report.model.layers) >= 5


@pytest.mark.parametrize("channels", [1, 4, 12])
def test_inputs_with_1_4_and_12_channels(channels: int) -> None:
    model, x, report = run(f"{channels}-channel")
    sec = section(report, "0")
    assert decode(sec.filters.image).mode == "P"  # only 3-channel first layers are drawn as RGB
    thumb = decode(report.model.inputs[0].thumbnail)
    assert thumb.size == (8, 8) and thumb.mode == "L"
    with torch.no_grad():
        assert_stats_match(sec, torch.relu(model[0](x)))


def test_a_1024_channel_conv_draws_64_and_counts_all() -> None:
    model, x, report = run("1024-channel")
    sec = section(report, "0")
    assert sec.channels_total == 1024 and len(sec.channels_shown) == 64
    assert len(sec.stats.max) == 1024
    with torch.no_grad():
        assert_stats_match(sec, torch.relu(model[0](x)))


def test_1x1_kernels_and_1x1_maps() -> None:
    model, x, report = run("1x1")
    for name in ("0", "2"):
        grid = section(report, name).feature_maps[0].grid
        assert (grid.tile_width, grid.tile_height) == (1, 1)
        # A single value has no range: it is drawn flat, and its value is the legend's min=max.
        assert grid.flat_channels == grid.channels
        assert grid.tile_min == grid.tile_max
        assert tuple(tile_pixels(grid, 0, rgb=True)[0, 0]) == MAGENTA
    with torch.no_grad():
        value = torch.relu(model[0](x))[0, :, 0, 0]
    np.testing.assert_allclose(section(report, "0").feature_maps[0].grid.tile_min, value.numpy(), rtol=1e-5)


def test_nan_zero_and_constant_filters_are_flagged_and_drawn_flat() -> None:
    report = report_of("nan-zero-constant-filters")
    grid = section(report, "0").filters
    assert grid.flat_channels == (0, 1, 2)
    assert grid.tile_min[0] is None and grid.tile_min[1] == 0.0 and grid.tile_min[2] == 0.25
    assert tuple(tile_pixels(grid, 1, rgb=True)[0, 0]) == MAGENTA
    kinds = {a.kind: a.message for a in report.model.alerts}
    assert kinds["nonfinite-weight"] == "1 NaN/Inf weight values."
    assert "filter(s): 1, 2." in kinds["flat-filter"]
    assert "nonfinite-activation" in kinds
    assert any("NaN or Inf for 2 input(s)" in note for note in report.model.notes)


def test_train_mode_batchnorm_and_dropout_run_in_eval_and_are_restored() -> None:
    model, x, report = run("train-mode-bn-dropout")  # run() checked running stats bit for bit
    assert all(module.training for module in model.modules())
    model.eval()
    try:
        with torch.no_grad():
            deep = model[5](model[4](model[3](model[2](model[1](model[0](x))))))
        # eval mode: no dropout, running stats; no activation follows conv 4, so its BN output
        assert_stats_match(section(report, "4"), deep)
        assert section(report, "4").site == "after 5 (BatchNorm2d) (no activation follows on this path)"
    finally:
        model.train()


def test_lazy_layers_run_on_a_copy_and_stay_lazy() -> None:
    model, _, report = run("lazy-conv")
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)
    sec = section(report, "0")
    assert sec.weight_shape == (4, 3, 3, 3) and sec.filters is not None
    assert any("Lazy layers (0)" in note for note in report.model.notes)
    assert report.model.model.total_params == 4 * 3 * 9 + 4 + 4 * 3 + 3


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_half_precision_models_match_float32_or_fail_cleanly(name: str) -> None:
    model, x, result = run(name)
    dtype = torch.bfloat16 if name == "bfloat16" else torch.float16
    try:  # torch may lack the CPU kernel for this dtype: only then may the report refuse
        with torch.no_grad():
            model(x.to(dtype))
    except (RuntimeError, NotImplementedError):
        assert isinstance(result, reportgen.ReportError)
        assert "Half" in str(result) or "not implemented" in str(result)
        return
    assert isinstance(result, reportgen.Report), f"torch runs the {name} model, the report refused: {result}"
    reference = model.float()
    try:
        with torch.no_grad():
            expected = torch.relu(reference[0](x)).double()
    finally:
        model.to(torch.bfloat16 if name == "bfloat16" else torch.float16)
    sec = section(result, "0")
    tolerance = 0.05 if name == "bfloat16" else 0.01
    np.testing.assert_allclose(sec.stats.max, expected.flatten(2).amax(dim=2).amax(dim=0).numpy(), atol=tolerance)


def test_weight_norm_and_spectral_norm_parametrizations() -> None:
    model, _, report = run("weight-spectral-norm")
    for name in ("0", "2"):
        sec = section(report, name)
        with torch.no_grad():
            model.eval()
            effective = model[int(name)].weight.detach()
            model.train()
        assert sec.weight_shape == tuple(effective.shape)
        assert sec.filters is not None
    assert not any("not torch conv layers" in note for note in report.model.notes)


def test_data_parallel_wrapper() -> None:
    model, x, report = run("data-parallel")
    with torch.no_grad():
        assert_stats_match(section(report, "module.0"), torch.relu(model.module[0](x)))


def test_scripted_models_get_summary_predictions_and_a_plain_note() -> None:
    model, x, report = run("scripted")
    assert report.model.sections == ()
    assert any("TorchScript" in note and "hooks" in note for note in report.model.notes)
    assert len(report.model.predictions) == len(x)
    assert report.model.totals.total_params == sum(p.numel() for p in model.parameters())
    assert {row.type for row in report.model.layers} >= {"Conv2d", "ReLU"}


def test_a_forward_that_raises_for_some_inputs_names_the_input() -> None:
    model, _, error = run("raises-on-some-inputs")
    assert isinstance(error, reportgen.ReportError)
    assert str(error).startswith("the model failed on input batch input-02")


def test_a_3x2048x2048_input() -> None:
    model, x, report = run("large-input-3x2048x2048")
    thumb = report.model.inputs[0].thumbnail
    assert (thumb.width, thumb.height) == (96, 96)
    grid = section(report, "0").feature_maps[0].grid
    limit = ReportOptions().tile_size
    assert grid.tile_width <= limit and grid.tile_height <= limit and max(grid.tile_width, grid.tile_height) > limit // 2
    with torch.no_grad():
        out = model[0](x)
    np.testing.assert_allclose(section(report, "0").stats.max, out.flatten(2).amax(dim=2)[0].numpy(), rtol=1e-4)


def test_outputs_that_are_not_class_scores_give_no_predictions() -> None:
    model, x, report = run("vector-output")
    assert report.model.predictions == ()
    with torch.no_grad():
        assert_stats_match(section(report, "conv"), model.conv(x))
    model, x, report = run("integer-token-input")
    assert len(report.model.predictions) == 3
    with torch.no_grad():
        assert_stats_match(section(report, "conv"), model.conv(model.embed(x[:, 0]).transpose(1, 2)))


def test_nan_inputs_are_flagged_not_drawn_as_pictures_of_nothing() -> None:
    report = report_of("nan-input")
    assert any("NaN or Inf for 2 input(s)" in note for note in report.model.notes)
    assert "nonfinite-activation" in {a.kind for a in report.model.alerts}
    assert section(report, "0").feature_maps[0].grid.flat_channels == (0, 1, 2, 3)


def test_zoo_size() -> None:
    assert len(ZOO) >= 33
    assert zoo.no_hooks_anywhere(run("inplace-relu-chain")[0])
