"""1D, 3D and tensor inputs are drawn so the signal shows (issue 12, point 8).

Every expected pixel is computed here from the raw signal with numpy/torch: bin windows,
min/max/mean per pixel column, per-tile min-max levels and plot rows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reportgen
from reportgen import render
from reportgen.filters import filter_tiles
from reportgen.gradcam import grad_cam
from reportgen.inputs import from_tensor
from reportgen.plots import BAND, BACKGROUND, LINE, ZERO
from reportgen.size_budget import (
    Drawing,
    estimate_bytes,
    html_bytes,
    picture_ceiling,
    reduce_analysis,
    reduce_layer,
)
from tests.fixtures.zoo import Head, conv3d, rand
from tests.helpers import run_main_pass, decode, tile_pixels

HEIGHT = 24  # px of a 1D plot
TOP = 253  # the highest colour level


def expected_rows(values: np.ndarray, low: float, high: float, height: int = HEIGHT) -> np.ndarray:
    """Value -> level on [low, high] (x 253, + 0.5, floor) -> row (level 253 at the top)."""
    level = np.floor((values - low) / (high - low) * TOP + 0.5)
    return np.floor((TOP - level) / TOP * (height - 1) + 0.5).astype(int)


def windows(length: int, bins: int) -> list[tuple[int, int]]:
    return [(int(np.floor(i * length / bins)), int(np.ceil((i + 1) * length / bins))) for i in range(bins)]


def positive_1d_model() -> nn.Module:
    """Conv1d with positive weights and bias on positive input: every output is > 0 (no zero line),
    and no nonlinearity or BN follows the conv (its output is the map whatever site is chosen)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 80, stride=4), nn.Conv1d(3, 2, 3), Head(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.rand(3, 1, 80) / 80)
        model[0].bias.fill_(0.5)
    return model.eval()


def audio(count: int = 1, length: int = 16000, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    tone = torch.sin(t / 300.0) * (1 + torch.arange(count, dtype=torch.float32)[:, None])
    return (tone + torch.rand(count, length, generator=generator) * 0.5)[:, None] + 3.0


def test_1d_feature_maps_are_min_max_envelopes_of_the_raw_signal() -> None:
    model = positive_1d_model()
    signal = audio()
    report = reportgen.generate_report(model, signal, device="cpu")
    grid = report.model.sections[0].feature_maps[0].grid
    raw = F.conv1d(signal.double(), model[0].weight.double(), model[0].bias.double(), stride=4)[0].detach().numpy()
    length = raw.shape[1]
    assert length == 3981
    assert (grid.tile_height, grid.tile_width) == (HEIGHT, 64)  # was a 1 x 32 strip
    assert "3981 positions in 64 pixel columns" in grid.legend
    bins = windows(length, 64)
    exact = near = 0
    for channel in range(3):
        tile = tile_pixels(grid, channel)
        values = raw[channel]
        low, high = values.min(), values.max()
        assert grid.tile_min[channel] == pytest.approx(low, rel=1e-5)
        assert grid.tile_max[channel] == pytest.approx(high, rel=1e-5)
        assert ZERO not in tile  # everything is > 0
        for column, (start, end) in enumerate(bins):
            part = values[start:end]
            top, bottom, mean = expected_rows(np.array([part.max(), part.min(), part.mean()]), low, high)
            band = np.flatnonzero(tile[:, column] == BAND)
            line = np.flatnonzero(tile[:, column] == LINE)
            drawn = np.flatnonzero(tile[:, column] != BACKGROUND)
            band_inside = band.size == 0 or (band.min() >= top and band.max() <= bottom)
            exact += band_inside and mean in line and top in drawn and bottom in drawn
            near += (band.size == 0 or (band.min() >= top - 1 and band.max() <= bottom + 1)) and \
                bool(np.abs(line - mean).min() <= 1) and drawn.min() <= top + 1 and drawn.max() >= bottom - 1
    assert near == 3 * 64
    assert exact >= 0.97 * 3 * 64


def test_1d_kernels_are_line_plots_with_a_zero_line() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 4, 80), nn.Conv1d(4, 3, 3), Head(3)).eval()
    report = reportgen.generate_report(model, torch.randn(1, 2, 200), device="cpu")
    first, second = (section.filters for section in report.model.sections[:2])
    assert first is not None and second is not None
    assert (first.tile_height, first.tile_width) == (HEIGHT, 80)  # was 1 x 80
    assert (second.tile_height, second.tile_width) == (HEIGHT, 33)  # 3 taps, 11 px each
    assert "line plots" in first.legend and "mid-gray line = 0" in first.legend
    crossings = 0
    for grid, module, width in ((first, model[0], 1), (second, model[1], 11)):
        weight = module.weight.detach().double().numpy().mean(axis=1)  # (out, taps)
        for number in range(weight.shape[0]):
            taps = weight[number]
            low, high = taps.min(), taps.max()
            tile = tile_pixels(grid, number)
            rows = np.repeat(expected_rows(taps, low, high), width)
            assert (tile[rows, np.arange(rows.size)] == LINE).all()
            if not low < 0 < high:  # no zero line when 0 is off the plot
                assert ZERO not in tile
                continue
            crossings += 1
            zero_row = int(np.floor((TOP - (0 - low) / (high - low) * TOP) / TOP * (HEIGHT - 1) + 0.5))
            assert ZERO in tile[zero_row]
            assert set(np.flatnonzero((tile == ZERO).any(axis=1))) == {zero_row}
    assert crossings >= 4


def test_tensor_images_outside_0_1_are_stretched_and_say_so() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Head(4)).eval()
    images = torch.randn(2, 3, 8, 8) * 2
    report = reportgen.generate_report(model, images, device="cpu")
    first = report.model.inputs[0]
    pixels = np.asarray(decode(first.thumbnail))
    x = images[0].double().numpy()
    expected = np.floor((x - x.min()) / (x.max() - x.min()) * 255 + 0.5).transpose(1, 2, 0)
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert any("stretched from its own min" in note and f"{x.min():.4g}" in note for note in first.notes)
    in_range = reportgen.generate_report(model, torch.rand(1, 3, 8, 8), device="cpu")
    assert not any("stretched" in note for note in in_range.model.inputs[0].notes)


def test_1d_inputs_get_a_waveform_thumbnail() -> None:
    model = positive_1d_model()
    signal = audio(count=2)
    report = reportgen.generate_report(model, signal, device="cpu")
    for record, wave in zip(report.model.inputs, signal[:, 0].double().numpy()):
        assert record.thumbnail is not None
        pixels = np.asarray(decode(record.thumbnail))
        assert pixels.shape == (32, 96)
        gray = {name: int(np.floor(level * 255 / TOP + 0.5)) for name, level in
                (("band", BAND), ("line", LINE), ("background", BACKGROUND))}
        low, high = wave.min(), wave.max()
        hits = 0
        for column, (start, end) in enumerate(windows(wave.size, 96)):
            part = wave[start:end]
            top, bottom, mean = expected_rows(np.array([part.max(), part.min(), part.mean()]), low, high, 32)
            drawn = np.flatnonzero(pixels[:, column] != gray["background"])
            assert drawn.min() <= top + 1 and drawn.max() >= bottom - 1
            hits += pixels[mean, column] == gray["line"] and pixels[top, column] != gray["background"]
        assert hits >= 0.97 * 96
        assert any(note.startswith("waveform") for note in record.notes)


def test_clips_get_a_strip_of_frames() -> None:
    clip = rand(1, 3, 8, 10, 12, seed=5)
    model = nn.Sequential(nn.Conv3d(3, 2, 3, padding=1), Head(2)).eval()
    report = reportgen.generate_report(model, clip, device="cpu")
    record = report.model.inputs[0]
    pixels = np.asarray(decode(record.thumbnail))
    frames = [0, 2, 5, 7]  # 4 frames evenly spread over 8: round(0, 2.33, 4.67, 7)
    assert pixels.shape == (10, 4 * 12 + 3 * 2, 3)
    for number, t in enumerate(frames):
        expected = np.floor(clip[0, :, t].double().numpy() * 255 + 0.5).transpose(1, 2, 0)
        left = number * 14
        assert np.abs(pixels[:, left:left + 12].astype(int) - expected).max() <= 1
        if number:
            assert (pixels[:, left - 2:left] == 255).all()
    assert "frames 0, 2, 5, 7 of 8" in record.notes[-1]


def test_the_not_drawn_sentence_counts_only_inputs_drawn_nowhere() -> None:
    model = positive_1d_model()
    shown = reportgen.generate_report(model, audio(count=3), device="cpu")
    assert "drawn nowhere" not in shown.to_html() and "not drawn" not in shown.to_html()
    few = reportgen.generate_report(model, audio(count=3), device="cpu", max_inputs_shown=1)
    assert "2 more inputs contribute to the statistics but are drawn nowhere" in few.to_html()


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.embed(x[:, 0]).transpose(1, 2)).mean(dim=2))


def test_inputs_without_a_picture_are_listed_with_the_reason() -> None:
    tokens = torch.randint(0, 10, (2, 1, 12), generator=torch.Generator().manual_seed(2))
    report = reportgen.generate_report(TokenNet(), tokens, device="cpu")
    html = report.to_html()
    assert "drawn nowhere" not in html and "not drawn" not in html  # their feature maps are drawn
    assert all(any("no thumbnail: int64" in note for note in record.notes) for record in report.model.inputs)
    assert html.count("no thumbnail: int64") == 2


def reference_cam(activation: torch.Tensor, gradient: torch.Tensor) -> np.ndarray:
    axes = tuple(range(2, activation.dim()))
    cam = torch.relu((gradient.mean(dim=axes, keepdim=True) * activation).sum(dim=1)).detach()
    return (cam / cam.flatten(1).amax(dim=1).reshape(-1, *[1] * (cam.dim() - 1))).numpy()


def test_grad_cam_for_1d_layers_matches_autograd() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(1, 4, 9, stride=2), nn.ReLU(), nn.Conv1d(4, 5, 5), Head(5)).eval()
    signal = torch.randn(2, 1, 300)
    result = grad_cam(model, from_tensor(signal), count=2, device=torch.device("cpu"), dtype=torch.float32,
                      layer="2")
    activation = model[2](model[1](model[0](signal)))
    logits = model[3](activation)
    predicted = logits.argmax(dim=1)
    (gradient,) = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), activation)
    expected = reference_cam(activation, gradient)
    cams = np.stack([r.cam for r in result.records if r.kind == "predicted"])
    assert cams.shape == (2, 142)
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-6)
    # the report (Grad-CAM fused into the main pass): the map pooled to 16 columns for the JSON,
    # drawn as a heat strip under the waveform
    report = reportgen.generate_report(model, signal, device="cpu")
    cam = report.model.insight.gradcam
    assert cam is not None and cam.layer == "2" and "averaged over time" in cam.note
    pooled = F.adaptive_avg_pool1d(torch.from_numpy(expected)[:, None], 16)[:, 0].numpy()
    for entry, row in zip(cam.inputs, pooled):
        (predicted_map,) = entry.maps
        np.testing.assert_allclose(np.asarray(predicted_map.cam)[0], row, atol=1e-4)
        thumb = report.model.inputs[entry.input_index].thumbnail
        assert predicted_map.overlay is not None
        assert (predicted_map.overlay.width, predicted_map.overlay.height) == (thumb.width, thumb.height + 1 + 8)


def test_grad_cam_for_3d_layers_matches_autograd() -> None:
    model = conv3d().eval()
    clip = rand(2, 1, 5, 6, 7, seed=6)
    result = grad_cam(model, from_tensor(clip), count=2, device=torch.device("cpu"), dtype=torch.float32,
                      layer="0")
    activation = model[0](clip)
    logits = model[2](torch.relu(activation))
    predicted = logits.argmax(dim=1)
    (gradient,) = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), activation)
    expected = reference_cam(activation, gradient)
    cams = np.stack([r.cam for r in result.records if r.kind == "predicted"])
    assert cams.shape == (2, 5, 6, 7)
    np.testing.assert_allclose(cams, expected, rtol=1e-5, atol=1e-6)
    report = reportgen.generate_report(model, clip, device="cpu")
    cam = report.model.insight.gradcam
    assert cam is not None and "time and space" in cam.note
    for entry in cam.inputs:
        (predicted_map,) = entry.maps
        hottest = np.unravel_index(int(np.argmax(expected[entry.input_index])), expected.shape[1:])
        assert predicted_map.peak == pytest.approx(tuple((i + 0.5) / s for i, s in zip(hottest, (5, 6, 7))), abs=1e-4)
        thumb = report.model.inputs[entry.input_index].thumbnail
        assert (predicted_map.overlay.width, predicted_map.overlay.height) == (thumb.width, thumb.height)


def test_the_size_budget_narrows_1d_plots_keeping_exact_minima_and_maxima() -> None:
    model = positive_1d_model()
    signal = audio()
    capture, _ = run_main_pass(model, ["0"], signal, batch_size=len(signal), max_channels=3, tile_size=32,
                               keep_inputs=1)
    layer = capture.results()[0]
    assert layer.envelopes[0].shape == (3, 3, 64)
    reduced = reduce_layer(layer, Drawing(tile_size=8, channels=2, inputs=1))
    envelopes = reduced.envelopes[0]
    assert envelopes.shape == (2, 3, 16)  # 2 x the tile size, first 2 channels
    raw = F.conv1d(signal.double(), model[0].weight.double(), model[0].bias.double(), stride=4)[0].detach().numpy()
    for channel in range(2):
        values = raw[channel]
        low, high = values.min(), values.max()
        for column, (start, end) in enumerate(windows(values.size, 16)):
            part = values[start:end]
            expected = np.floor((np.array([part.min(), part.max(), part.mean()]) - low) / (high - low) * TOP + 0.5)
            assert np.abs(envelopes[channel, :, column].astype(int) - expected).max() <= 1


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every analysis the render stage draws sections from, in order."""
    seen: list[object] = []
    original = render._draw_sections

    def spy(analysis, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(analysis)
        return original(analysis, *args, **kwargs)

    monkeypatch.setattr(render, "_draw_sections", spy)
    return seen


def test_the_picture_ceiling_bounds_1d_plots(drawn: list[object]) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv1d(1, 16, 80, stride=4), nn.Conv1d(16, 8, 3), Head(8)).eval()
    report = reportgen.generate_report(model, torch.randn(3, 1, 4000), device="cpu", max_size_mb=0)
    grids = [s.filters for s in report.model.sections if s.filters is not None]
    grids += [fm.grid for s in report.model.sections for fm in s.feature_maps]
    picture_bytes = sum(len(grid.image.data_uri) for grid in grids)
    assert picture_ceiling(drawn[0]) >= picture_bytes  # an upper bound, as the budget relies on


def test_other_channel_counts_are_averaged_and_say_so() -> None:
    model = nn.Sequential(nn.Conv2d(5, 2, 3), Head(2)).eval()
    images = rand(1, 5, 6, 6, seed=8)
    report = reportgen.generate_report(model, images, device="cpu")
    record = report.model.inputs[0]
    expected = np.floor(images[0].double().numpy().mean(axis=0) * 255 + 0.5)
    assert np.abs(np.asarray(decode(record.thumbnail)).astype(int) - expected).max() <= 1
    assert "thumbnail: the mean of its 5 channels" in record.notes


def test_1d_kernels_on_the_shared_scale_centre_zero() -> None:
    weights = torch.randn(4, 2, 7, generator=torch.Generator().manual_seed(9)).double().numpy()
    tiles = filter_tiles(weights, rgb_first_layer=False, scale="shared")
    mean = weights.mean(axis=1)
    bound = np.abs(mean).max()
    assert tiles.tiles.shape == (4, HEIGHT, 7 * 5)  # ceil(32 / 7) = 5 px a tap
    assert "bottom = -" in tiles.legend and "top = +" in tiles.legend
    for number in range(4):
        level = np.floor((mean[number] / bound + 1) / 2 * TOP + 0.5)
        rows = np.repeat(np.floor((TOP - level) / TOP * (HEIGHT - 1) + 0.5).astype(int), 5)
        assert (tiles.tiles[number][rows, np.arange(rows.size)] == LINE).all()
        assert set(np.flatnonzero((tiles.tiles[number] == ZERO).any(axis=1))) == {12}  # 0 is level 126.5
        assert tiles.tile_min[number] == pytest.approx(-bound) and tiles.tile_max[number] == pytest.approx(bound)


def test_the_budget_estimate_of_narrower_1d_plots_is_close_to_the_page(drawn: list[object]) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv1d(1, 32, 80, stride=4), nn.Conv1d(32, 8, 3), Head(8)).eval()
    full = reportgen.generate_report(model, torch.randn(4, 1, 8000), device="cpu", max_size_mb=0)
    full_bytes = html_bytes(full.model)
    drawing = Drawing(tile_size=8, channels=32, inputs=4)  # the plots go from 64 to 16 columns
    narrower = replace(full.model, sections=render.render_sections(reduce_analysis(drawn[0], drawing)))
    assert {fm.grid.tile_width for fm in narrower.sections[0].feature_maps} == {16}
    actual = html_bytes(narrower)
    assert abs(estimate_bytes(full.model, full_bytes, drawing) - actual) < 0.1 * actual
