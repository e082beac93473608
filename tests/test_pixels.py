"""Every tile's pixels match the weights or activations under the documented normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reportgen
from tests.fixtures.models import tiny_cnn, tiny_inputs
from tests.helpers import MAGENTA, decode, tile_pixels


def levels(unit: np.ndarray, top: int) -> np.ndarray:
    return np.floor(unit * top + 0.5).astype(int)


def close_enough(actual: np.ndarray, expected: np.ndarray) -> None:
    """Exact except where float rounding lands on a .5 boundary: off by at most one level."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1
    assert (difference == 0).mean() >= 0.97


@pytest.fixture(scope="module")
def report() -> reportgen.Report:
    return reportgen.generate_report(tiny_cnn(), tiny_inputs(), device="cpu")


def test_first_layer_filters_are_rgb_stretched_per_filter(report: reportgen.Report) -> None:
    weight = tiny_cnn()[0].weight.detach().numpy().astype(np.float64)
    grid = report.model.sections[0].filters
    assert grid is not None and decode(grid.image).mode == "RGB"
    assert grid.channels == tuple(range(8))
    for i in range(8):
        w = weight[i]
        expected = levels((w - w.min()) / (w.max() - w.min()), 255).transpose(1, 2, 0)
        close_enough(tile_pixels(grid, i), expected)
        assert grid.tile_min[i] == pytest.approx(w.min())
        assert grid.tile_max[i] == pytest.approx(w.max())


def test_deeper_filters_are_channel_means_stretched_per_filter(report: reportgen.Report) -> None:
    weight = tiny_cnn()[2].weight.detach().numpy().astype(np.float64)
    grid = report.model.sections[1].filters
    assert grid is not None and decode(grid.image).mode == "P"
    for i in range(12):
        mean = weight[i].mean(axis=0)
        expected = levels((mean - mean.min()) / (mean.max() - mean.min()), 253)
        close_enough(tile_pixels(grid, i), expected)


def test_shared_scale_is_symmetric_and_diverging() -> None:
    model = tiny_cnn()
    report = reportgen.generate_report(model, tiny_inputs(1), device="cpu", filter_scale="shared")
    grid = report.model.sections[1].filters
    assert grid is not None
    mean = model[2].weight.detach().numpy().astype(np.float64).mean(axis=1)
    bound = np.abs(mean).max()
    for i in range(12):
        expected = levels((mean[i] / bound + 1) / 2, 253)
        close_enough(tile_pixels(grid, i), expected)
    assert all(low == pytest.approx(-bound) for low in grid.tile_min)
    assert all(high == pytest.approx(bound) for high in grid.tile_max)
    assert "blue" in grid.legend and "red" in grid.legend


def _assert_maps_show(section, planes: np.ndarray) -> None:
    assert [fm.input_index for fm in section.feature_maps] == [0, 1, 2]
    for fm in section.feature_maps:
        for tile, channel in enumerate(fm.grid.channels):
            plane = planes[fm.input_index, channel]
            if plane.max() == plane.min():
                assert channel in fm.grid.flat_channels
                continue
            expected = levels((plane - plane.min()) / (plane.max() - plane.min()), 253)
            close_enough(tile_pixels(fm.grid, tile), expected)
            assert fm.grid.tile_min[tile] == pytest.approx(plane.min(), rel=1e-5, abs=1e-6)
            assert fm.grid.tile_max[tile] == pytest.approx(plane.max(), rel=1e-5, abs=1e-6)


def test_feature_maps_show_the_activation_site_by_default(report: reportgen.Report) -> None:
    """Conv 0 is followed by ReLU(inplace=True): by default its maps are that ReLU's output, and
    the page says so."""
    model, x = tiny_cnn(), tiny_inputs()
    with torch.no_grad():
        out = torch.relu(model[0](x)).numpy().astype(np.float64)
    section = report.model.sections[0]
    _assert_maps_show(section, out)
    assert section.site == "after 1 (ReLU)"
    assert "Observed after 1 (ReLU)" in report.to_html()


def test_tap_conv_shows_the_raw_conv_output_before_an_inplace_relu() -> None:
    model, x = tiny_cnn(), tiny_inputs()
    with torch.no_grad():
        out = model[0](x).numpy().astype(np.float64)
    assert (out < 0).any(), "test needs negative values that an in-place ReLU would erase"
    report = reportgen.generate_report(tiny_cnn(), x, device="cpu", tap="conv")
    section = report.model.sections[0]
    _assert_maps_show(section, out)
    assert section.site.startswith("the raw conv output (--tap conv")
    assert min(section.stats.min) == pytest.approx(out.min(), rel=1e-5)


def test_downsampled_tiles_are_average_pooled_with_full_resolution_range() -> None:
    model, x = tiny_cnn(), tiny_inputs(1, size=16)
    report = reportgen.generate_report(model, x, device="cpu", layers=["2"])
    from reportgen.analyze import AnalysisOptions, analyze
    from reportgen.inputs import from_tensor

    analysis = analyze(model, from_tensor(x), torch.device("cpu"), AnalysisOptions(layers=("2",), tile_size=8))
    tiles = analysis.layers[0].tiles[0]
    assert tiles.shape == (12, 8, 8)
    with torch.no_grad():
        full = torch.relu(model[2](torch.relu(model[0](x))))  # observed after its ReLU
    pooled = F.avg_pool2d(full, 2)[0].numpy().astype(np.float64)
    full_np = full[0].numpy().astype(np.float64)
    for channel in range(12):
        low, high = full_np[channel].min(), full_np[channel].max()
        expected = levels(np.clip((pooled[channel] - low) / (high - low), 0, 1), 253)
        close_enough(tiles[channel], expected)
    assert report.model.sections[0].name == "2"


def test_flat_and_nonfinite_tiles_render_flat_and_are_marked() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = 0.5  # constant output: zero range
        model[0].weight[2, 0, 0, 0] = float("nan")  # NaN output
    report = reportgen.generate_report(model, tiny_inputs(1), device="cpu", layers=["0"])
    section = report.model.sections[0]
    grid = section.feature_maps[0].grid
    assert grid.flat_channels == (1, 2)
    assert (tile_pixels(grid, 1, rgb=True) == MAGENTA).all()
    assert (tile_pixels(grid, 2, rgb=True) == MAGENTA).all()
    assert grid.tile_min[2] is None and grid.tile_max[1] == pytest.approx(0.5)
    assert section.filters is not None
    assert 1 in section.filters.flat_channels and 2 in section.filters.flat_channels
