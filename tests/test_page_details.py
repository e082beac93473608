"""Page details a reviewer trips on (issue 12, point 11), checked on pixels and numbers.

Expected colours come from matplotlib's own colormaps and from numpy, never from reportgen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reportgen
from reportgen.grids import GridLayout
from reportgen.report_model import TileGrid
from tests.fixtures.models import tiny_cnn, tiny_inputs
from tests.helpers import decode

MIN_SEPARATION = 60.0  # RGB distance that reads as a different colour at a glance


def ramp(name: str) -> np.ndarray:
    """The 254 colours of a colormap as reportgen documents them, computed with matplotlib."""
    colormaps = pytest.importorskip("matplotlib").colormaps
    return np.floor(colormaps[name](np.linspace(0.0, 1.0, 254))[:, :3] * 255 + 0.5)


def separator_pixels(grid: TileGrid) -> np.ndarray:
    """(n, 3) RGB of every pixel between and around tiles (as the browser shows them)."""
    picture = np.asarray(decode(grid.image).convert("RGB")).astype(float)
    layout = GridLayout(grid.columns, grid.rows, grid.tile_height, grid.tile_width, grid.padding)
    inside = np.zeros(picture.shape[:2], dtype=bool)
    for tile in range(len(grid.channels)):
        y, x = layout.origin(tile)
        inside[y:y + grid.tile_height, x:x + grid.tile_width] = True
    # padding of the empty cells of the last row is separator colour too
    for tile in range(len(grid.channels), layout.rows * layout.columns):
        y, x = layout.origin(tile)
        inside[y:y + grid.tile_height, x:x + grid.tile_width] = True
    return picture[~inside]


@pytest.mark.parametrize("scale, colormap", [("per-filter", "gray"), ("shared", "RdBu_r")])
def test_filter_grid_separators_are_outside_the_colour_scale(scale: str, colormap: str) -> None:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu", filter_scale=scale)
    grid = report.model.sections[1].filters  # deeper layer: a palette grid, not RGB
    assert grid is not None and decode(grid.image).mode == "P"
    seps = separator_pixels(grid)
    assert len(seps) > 0 and (seps == seps[0]).all()
    distances = np.sqrt(((ramp(colormap) - seps[0]) ** 2).sum(axis=1))
    assert distances.min() > MIN_SEPARATION
    assert "lines between tiles" in grid.legend


def test_feature_map_separators_are_outside_viridis_and_named_in_the_legend() -> None:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu")
    grid = report.model.sections[0].feature_maps[0].grid
    seps = separator_pixels(grid)
    assert (seps == seps[0]).all()
    distances = np.sqrt(((ramp("viridis") - seps[0]) ** 2).sum(axis=1))
    assert distances.min() > MIN_SEPARATION
    # the brightest tile level (253) is far from the separator: a bright tile edge stays visible
    assert np.sqrt(((ramp("viridis")[253] - seps[0]) ** 2).sum()) > MIN_SEPARATION
    assert "mid-gray lines between tiles" in grid.legend


def test_tie_note_groups_equal_scores_only() -> None:
    from reportgen.insight_view import tie_note

    assert tie_note([0.9, 0.8695, 0.8695, 0.8695 * (1 + 1e-9), 0.1]) == (
        "tied scores: 3 inputs at 0.8695 — ranking among them is by input order")
    assert tie_note([0.9, 0.8, 0.7]) == ""
    assert tie_note([2.0, 2.0, 1.0, 1.0]) == (
        "tied scores: 2 inputs at 2, 2 inputs at 1 — ranking among them is by input order")


def test_context_box_widens_small_windows_inside_the_image() -> None:
    from reportgen.top_activations import MIN_CROP_WINDOW, context_box

    assert MIN_CROP_WINDOW == 12
    assert context_box((7, 1, 10, 4), 16, 16) == (2, 0, 14, 12)  # centre (8.5, 2.5), shifted right of 0
    assert context_box((13, 13, 16, 16), 16, 16) == (4, 4, 16, 16)  # a corner: shifted back inside
    assert context_box((0, 0, 20, 20), 32, 32) == (0, 0, 20, 20)  # big enough: unchanged
    assert context_box((1, 1, 4, 4), 8, 8) == (0, 0, 8, 8)  # small input: all of it


def test_tied_top_k_scores_are_flagged_in_the_strip() -> None:
    import re

    import torch.nn.functional as F

    from tests.fixtures.insight_models import SpotDetector, spot_dataset

    images = spot_dataset(12, {3: (6.0, 5, 5)})
    images[5] = images[3]
    images[9] = images[3]  # three identical inputs: identical scores on every channel
    model = SpotDetector()
    report = reportgen.generate_report(model, images, device="cpu", batch_size=4, max_inputs_shown=2, top_k=3)
    with torch.no_grad():
        score = float(F.conv2d(images[3:4], model.conv.weight, model.conv.bias, padding=1)[0, 0].max())
    insight = report.model.sections[0].insight
    assert insight is not None and insight.top_strip is not None
    assert insight.top_activations[0].inputs == (3, 5, 9)  # equal scores, input order
    html = report.to_html()
    note = f"channel 0: tied scores: 3 inputs at {score:.4g} — ranking among them is by input order"
    assert re.search(rf'<p class="legend ties">{re.escape(note)}</p>', html)
    assert f"channel 0: input-03 ({score:.4g}), input-05 ({score:.4g}), input-09 ({score:.4g}); tied scores" in html
