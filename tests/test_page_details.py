"""Page details a reviewer trips on (issue 12, point 11), checked on pixels and numbers.

Expected colours come from matplotlib's own colormaps and from numpy, never from reportgen.
"""

from __future__ import annotations

import numpy as np
import pytest

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
