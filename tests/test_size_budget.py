"""--max-size: pictures are re-drawn smaller from the kept analysis until the HTML fits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.errors import ReportError
from reportgen.size_budget import (
    Drawing,
    adaptive_pool_levels,
    estimate_bytes,
    html_bytes,
    ladder,
)
from tests.helpers import tile_pixels


class CountingNet(nn.Module):
    """Two wide convs on 48x48 inputs (pictures dominate the page); counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


def noise_inputs(count: int = 4) -> torch.Tensor:
    return torch.rand(count, 3, 48, 48, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True, scope="module")
def _no_zoom_maps() -> Any:
    """These tests calibrate limits against the page drawn with no limit, which holds every
    full-resolution zoom map, while a limited page holds only what fits their share; the pooled
    maps' budget is what is tested here (the zoom's share: tests/test_zoom_maps.py)."""
    import reportgen.api

    patch = pytest.MonkeyPatch()
    patch.setattr(reportgen.api, "zoom_maps", lambda *args, **kwargs: ())
    yield
    patch.undo()


@pytest.fixture(scope="module")
def full_and_fitted() -> tuple[reportgen.Report, reportgen.Report, int, int, int]:
    # raw conv maps (--tap conv): noise-like, so the pictures dominate the page, as this
    # scenario needs; ReLU outputs are half zeros and compress too well for it
    model = CountingNet()
    full = reportgen.generate_report(model, noise_inputs(), device="cpu", max_size_mb=0, tap="conv")
    full_calls = model.calls
    full_size = len(full.to_html().encode("utf-8"))
    limit = int(full_size * 0.55)
    model.calls = 0
    fitted = reportgen.generate_report(model, noise_inputs(), device="cpu", max_size_mb=limit / 1e6, tap="conv")
    return full, fitted, limit, full_calls, model.calls


def test_adaptive_pool_matches_torch_and_keeps_flat_tiles() -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 254, size=(3, 28, 20), dtype=np.uint8)
    stack[1] = 255  # a flat tile
    pooled = adaptive_pool_levels(stack, 17, 12)
    expected = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(stack).double()[None], (17, 12)
    )[0]
    assert pooled.shape == (3, 17, 12)
    assert np.array_equal(pooled, np.floor(expected.numpy() + 0.5).astype(np.uint8))
    assert (pooled[1] == 255).all()
    assert pooled[[0, 2]].max() <= 253
    assert adaptive_pool_levels(stack, 28, 20) is stack


def test_ladder_shrinks_and_estimates_never_grow(full_and_fitted) -> None:  # type: ignore[no-untyped-def]
    full = full_and_fitted[0]
    start = Drawing(tile_size=24, channels=32, inputs=4)  # 48 px maps were pooled to 24
    steps = list(ladder(start))
    assert steps[-1].inputs == 0
    for before, after in zip([start, *steps], steps):  # one knob at a time, only ever down
        changes = [
            a - b
            for a, b in zip(
                (before.tile_size, before.channels, before.inputs),
                (after.tile_size, after.channels, after.inputs),
            )
        ]
        assert sorted(changes)[:2] == [0, 0] and max(changes) > 0
    first_bytes = html_bytes(full.model)
    estimates = [estimate_bytes(full.model, first_bytes, d) for d in [start, *steps]]
    assert estimates[0] == pytest.approx(first_bytes, rel=0.02)
    assert all(b <= a + 1 for a, b in zip(estimates, estimates[1:]))


def test_fitted_report_is_under_the_limit_without_a_second_forward(full_and_fitted) -> None:  # type: ignore[no-untyped-def]
    full, fitted, limit, full_calls, fitted_calls = full_and_fitted
    size = len(fitted.to_html().encode("utf-8"))
    assert size <= limit < len(full.to_html().encode("utf-8"))
    assert fitted_calls == full_calls  # the analysis was kept: no forward pass was run again
    budget = fitted.model.budget
    assert budget is not None and budget.fits and budget.limit_bytes == limit
    assert (budget.tile_size[1], budget.channels[1], budget.inputs_drawn[1]) < (24, 32, 4)
    # statistics and alerts are those of the full analysis
    for a, b in zip(full.model.sections, fitted.model.sections):
        assert a.stats == b.stats
    assert fitted.model.alerts == full.model.alerts
    # what is drawn matches what the budget says
    for section in fitted.model.sections:
        assert len(section.channels_shown) <= budget.channels[1]
        assert len(section.feature_maps) == budget.inputs_drawn[1]
        for fm in section.feature_maps:
            assert max(fm.grid.tile_width, fm.grid.tile_height) <= budget.tile_size[1]
            assert fm.grid.channels == section.channels_shown


def test_fitted_pixels_are_pooled_captured_tiles(full_and_fitted) -> None:  # type: ignore[no-untyped-def]
    full, fitted = full_and_fitted[0], full_and_fitted[1]

    def tiles_of(grid):  # type: ignore[no-untyped-def]
        return np.stack([tile_pixels(grid, i) for i in range(len(grid.channels))])

    big = full.model.sections[1].feature_maps[0].grid
    small = fitted.model.sections[1].feature_maps[0].grid
    # independent reference: torch's adaptive average pooling of the levels, +0.5 before the cast
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(tiles_of(big)[: len(small.channels)]).double(),
        (small.tile_height, small.tile_width),
    )
    expected = np.floor(pooled.numpy() + 0.5).astype(np.uint8)
    assert (small.tile_height, small.tile_width) != (big.tile_height, big.tile_width)
    assert np.array_equal(tiles_of(small), expected)
    assert small.tile_min == big.tile_min[: len(small.channels)]


def test_report_says_what_was_reduced_and_lists_largest_sections(full_and_fitted) -> None:  # type: ignore[no-untyped-def]
    full, fitted = full_and_fitted[0], full_and_fitted[1]
    page = fitted.to_html()
    assert "less is drawn" in page and "--max-size 0" in page
    assert "Largest layer sections" in page
    # independent reference, read off the page: the bytes of each layer section's filter and
    # feature-map pictures (the ones the budget redraws), largest first, ties in page order
    measured = [
        (anchor, sum(len(uri) for uri in re.findall(r'<img class="tiles" src="(data:[^"]+)"', body)))
        for anchor, body in re.findall(r'<details class="layer" id="([^"]+)"(.*?)</details>', page, re.S)
    ]
    assert [anchor for anchor, _ in measured] == [s.anchor for s in fitted.model.sections]
    expected = sorted((m for m in measured if m[1] > 0), key=lambda m: -m[1])[:5]
    table = page.split('aria-label="Largest layer sections"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<a href="#([^"]+)">[^<]*</a></th><td class="num">([0-9.]+) (kB|MB)</td>', table)
    assert [anchor for anchor, _, _ in rows] == [anchor for anchor, _ in expected]
    for (_, number, unit), (_, size) in zip(rows, expected):
        step = {"kB": 1e3, "MB": 1e6}[unit]  # kB shown to 1 kB, MB to 0.01 MB
        assert abs(float(number) * step - size) <= (0.5 if unit == "kB" else 0.005) * step
    assert "less is drawn" not in full.to_html()
    assert fitted.to_dict()["size_budget"]["limit_bytes"] == fitted.model.budget.limit_bytes  # type: ignore[union-attr]
    assert full.to_dict()["size_budget"] is None


def test_a_report_that_fits_is_untouched() -> None:
    model = CountingNet()
    report = reportgen.generate_report(model, noise_inputs(1), device="cpu", max_size_mb=50)
    assert report.model.budget is None
    assert all(len(s.channels_shown) == 32 for s in report.model.sections)


def test_negative_max_size_is_a_user_error() -> None:
    with pytest.raises(ReportError, match="--max-size"):
        reportgen.generate_report(CountingNet(), noise_inputs(1), device="cpu", max_size_mb=-1)


def test_cli_default_matches_the_library_default() -> None:
    from reportgen import cli, size_budget

    assert cli.DEFAULT_MAX_SIZE_MB == size_budget.DEFAULT_MAX_SIZE_MB
    assert cli.build_parser().parse_args(["m"]).max_size == size_budget.DEFAULT_MAX_SIZE_MB
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["m", "--max-size", "-3"])


def test_a_limit_below_the_page_itself_still_writes_a_report_and_says_so() -> None:
    report = reportgen.generate_report(
        CountingNet(), noise_inputs(2), device="cpu", max_size_mb=0.001
    )
    budget = report.model.budget
    assert budget is not None and not budget.fits
    assert (budget.tile_size[1], budget.channels[1], budget.inputs_drawn[1]) == (4, 1, 0)
    assert "still takes" in budget.message and "still takes" in report.to_html()
    assert all(not s.feature_maps for s in report.model.sections)


def test_cli_says_what_the_budget_reduced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reportgen.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save(noise_inputs(2), tmp_path / "x.pt")
    (tmp_path / "net.py").write_text(
        "from tests.test_size_budget import CountingNet\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    assert (
        main(
            ["net.py:CountingNet", "x.pt", "-o", "full.html", "--max-size", "0", "--device", "cpu"]
        )
        == 0
    )
    assert "To stay under" not in capsys.readouterr().err
    limit = (tmp_path / "full.html").stat().st_size * 0.7 / 1e6
    assert (
        main(
            [
                "net.py:CountingNet",
                "x.pt",
                "-o",
                "r.html",
                "--max-size",
                f"{limit:.4f}",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"reportgen: To stay under --max-size {float(f'{limit:.4f}'):g} MB" in err
    assert (tmp_path / "r.html").stat().st_size <= limit * 1e6


def test_full_size_is_estimated_only_when_the_page_is_predicted_far_over(full_and_fitted) -> None:  # type: ignore[no-untyped-def]
    from reportgen.size_budget import SAMPLE_MARGIN

    full, fitted, limit = full_and_fitted[0], full_and_fitted[1], full_and_fitted[2]
    full_size = len(full.to_html().encode("utf-8"))
    assert full_size > limit * SAMPLE_MARGIN  # so the full page was never rendered, only estimated
    budget = fitted.model.budget
    assert budget is not None and budget.full_bytes_estimated
    assert budget.full_bytes == pytest.approx(full_size, rel=0.02)
    assert "would take about" in budget.message

    # A limit the page is over by less than the sample's margin: the full page is rendered, so
    # measured exactly.
    near = int(full_size / 1.1)
    exact = reportgen.generate_report(CountingNet(), noise_inputs(), device="cpu", max_size_mb=near / 1e6,
                                      tap="conv")
    assert exact.model.budget is not None and not exact.model.budget.full_bytes_estimated
    assert exact.model.budget.full_bytes == full_size
    assert "would take about" not in exact.model.budget.message
    assert len(exact.to_html().encode("utf-8")) <= near


def test_a_drawing_predicted_far_over_the_limit_is_never_drawn_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    from reportgen import render

    drawn: list[tuple[int, int]] = []  # (inputs with feature maps, largest tile side) per drawing
    original = render._draw_sections

    def spy(analysis, *args, **kwargs):  # type: ignore[no-untyped-def]
        # a drawing may have no feature maps at all (inputs 4 -> 0): (0, 0)
        drawn.append((max((len(layer.tiles) for layer in analysis.layers), default=0),
                      max((max(stack.shape[1:]) for layer in analysis.layers for stack in layer.tiles.values()),
                          default=0)))
        return original(analysis, *args, **kwargs)

    monkeypatch.setattr(render, "_draw_sections", spy)
    model = CountingNet()
    # raw conv maps (noise-like, so they compress badly): the pictures dominate the page; ReLU
    # outputs are half zeros and compress too well for 40 % of the page to be reachable
    full_size = len(reportgen.generate_report(model, noise_inputs(), device="cpu", max_size_mb=0,
                                              tap="conv").to_html().encode())
    assert drawn == [(4, 24)]
    drawn.clear()
    fitted = reportgen.generate_report(model, noise_inputs(), device="cpu", max_size_mb=full_size * 0.4 / 1e6,
                                       tap="conv")
    # the first input alone (a sample of full size) and then the drawing that fits; never all 4 at 24 px
    assert drawn[0] == (1, 24) and (4, 24) not in drawn and len(drawn) >= 2
    assert len(fitted.to_html().encode()) <= full_size * 0.4
