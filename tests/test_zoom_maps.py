"""The tile zoom shows the map a tile was pooled from (issue 12, point 11): the first input's
maps before pooling, within a share of the size budget, and says what it shows."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch

import reportgen
from reportgen.api import ZOOM_SHARE
from tests.fixtures.models import tiny_cnn, tiny_inputs
from tests.helpers import decode, tile_pixels


def _grids(page: str) -> list[dict]:
    return [json.loads(html.unescape(raw)) for raw in re.findall(r'data-grid="([^"]*)"', page)]


def test_zoom_map_is_the_full_resolution_site_of_input_0() -> None:
    model, x = tiny_cnn(), tiny_inputs(3, size=48)
    report = reportgen.generate_report(model, x, device="cpu", max_size_mb=0)
    with torch.no_grad():
        site = torch.relu(model[0](x))[0].numpy().astype(np.float64)  # conv 0, after its ReLU
    zoom = next(z for z in report.model.zoom_maps if z.anchor == report.model.sections[0].anchor)
    assert zoom.input_index == 0 and zoom.full_shape == (48, 48)
    assert (zoom.grid.tile_height, zoom.grid.tile_width) == (48, 48)  # not the 32 px tiles
    assert report.model.sections[0].feature_maps[0].grid.tile_width == 24
    for tile, channel in enumerate(zoom.grid.channels):
        plane = site[channel]
        if plane.max() == plane.min():
            continue
        expected = np.floor((plane - plane.min()) / (plane.max() - plane.min()) * 253 + 0.5)
        difference = np.abs(tile_pixels(zoom.grid, tile).astype(int) - expected.astype(int))
        assert difference.max() <= 1 and (difference == 0).mean() > 0.97
    # the page links each grid to what its zoom shows, in words
    page = report.to_html()
    grids = {g["zoomKey"]: g for g in _grids(page) if g.get("zoomKey")}
    first = grids[f"{zoom.anchor}:0"]
    assert first["resolution"] == "the full-resolution 48x48 map (the page draws it pooled to 24x24)"
    assert grids[f"{zoom.anchor}:1"]["resolution"] == ("the 24x24 tile as drawn, average-pooled from 48x48: the "
                                                       "full-resolution maps are kept for the first input only")
    assert f'data-key="{zoom.anchor}:0"' in page
    assert decode(zoom.grid.image).size[0] > decode(report.model.sections[0].feature_maps[0].grid.image).size[0]


def test_maps_that_were_not_pooled_need_no_zoom_map() -> None:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(1, size=16), device="cpu", max_size_mb=0)
    assert report.model.zoom_maps == ()
    grids = [g for g in _grids(report.to_html()) if g.get("zoomKey")]
    assert grids and all(g["resolution"] == "the full-resolution 16x16 map" for g in grids)


@pytest.mark.parametrize("limit_mb", [0.2, 0.5, 1.0])
def test_zoom_maps_stay_within_their_share_of_the_size_budget(limit_mb: float) -> None:
    unlimited = reportgen.generate_report(tiny_cnn(), tiny_inputs(2, size=96), device="cpu", max_size_mb=0)
    sizes = [len(z.grid.image.data_uri) for z in unlimited.model.zoom_maps]  # both layers, in page order
    assert len(sizes) == 2
    allowance = ZOOM_SHARE * limit_mb * 1e6
    expected, used = [], 0  # greedy in page order: a map that does not fit is left out
    for index, size in enumerate(sizes):
        if used + size <= allowance:
            expected.append(index)
            used += size
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(2, size=96), device="cpu", max_size_mb=limit_mb)
    anchors = [section.anchor for section in report.model.sections]
    assert [anchors.index(z.anchor) for z in report.model.zoom_maps] == expected
    assert sum(len(z.grid.image.data_uri) for z in report.model.zoom_maps) <= allowance
    assert len(report.to_html().encode()) <= limit_mb * 1e6 or not report.model.budget.fits
    kept = {z.anchor for z in report.model.zoom_maps}
    grids = {g["zoomKey"]: g for g in _grids(report.to_html()) if g.get("zoomKey")}
    for section in report.model.sections:
        if section.anchor not in kept and section.feature_maps:
            assert "did not fit the zoom's share of --max-size" in grids[f"{section.anchor}:0"]["resolution"]
