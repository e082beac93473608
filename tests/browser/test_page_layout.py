"""Layout a reviewer trips on, measured in headless Chromium (issue 12, point 11).

Reports: the shipped demo (8 labelled inputs, Grad-CAM captions) and the tiny CNN with one input
(filters and feature maps side by side). A broken demo checkpoint fails here; it is not replaced.
"""

from __future__ import annotations

from typing import Any

import pytest

import reportgen
from reportgen.cli import main
from tests.fixtures.models import tiny_cnn, tiny_inputs


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("layout")
    demo = folder / "demo.html"
    assert main(["demo", "-o", str(demo), "-q"]) == 0
    one = reportgen.generate_report(tiny_cnn(), tiny_inputs(1, size=32), device="cpu")
    one.save(folder / "one.html")
    return {"demo": demo, "one": folder / "one.html", "one_report": one}


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    """Do two boxes ({x, y, width, height}) share area (more than a rounding pixel)?"""
    return (min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]) > 1
            and min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]) > 1)


RECTS = """els => els.map(e => Array.from(e.getClientRects())
  .map(r => ({x: r.x, y: r.y, width: r.width, height: r.height})))"""


def test_grad_cam_captions_do_not_overlap(reports: dict[str, Any], visit: Any) -> None:
    page = visit(reports["demo"]).page
    page.locator("#gradcam").scroll_into_view_if_needed()
    labels = page.eval_on_selector_all("#gradcam figure.cam .label", RECTS)
    names = page.eval_on_selector_all("#gradcam figure.cam .name", RECTS)
    assert len(labels) == len(names) >= 8
    # a wrapped label is one bordered box, not fragments whose borders cross the next line
    assert all(len(rects) == 1 for rects in labels)
    boxes = [box for rects in labels + names for box in rects]
    clashes = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if overlap(a, b)]
    assert clashes == []
    figures = page.eval_on_selector_all("#gradcam figure.cam", RECTS)
    frames = [rects[0] for rects in figures]
    assert not any(overlap(a, b) for i, a in enumerate(frames) for b in frames[i + 1:])


def test_single_input_legend_sits_under_its_feature_maps(reports: dict[str, Any], visit: Any) -> None:
    page = visit(reports["one"]).page
    section = page.locator("details.layer").first
    filters = section.locator("figure.filters").bounding_box()
    maps = section.locator("figure.maps").bounding_box()
    legend = section.locator("p.legend", has_text="each tile stretched").bounding_box()
    assert filters and maps and legend
    assert maps["x"] >= filters["x"] + filters["width"]  # one input: maps beside the filters
    assert legend["y"] >= maps["y"] + maps["height"] - 1  # the legend below its maps ...
    assert legend["x"] >= maps["x"] - 1  # ... in their column, not under the filter grid
    assert legend["x"] > filters["x"] + filters["width"]


def test_zoom_names_layer_input_channel_and_colour_scale(reports: dict[str, Any], visit: Any) -> None:
    report = reports["one_report"]
    section_model = report.model.sections[1]
    grid = section_model.feature_maps[0].grid
    page = visit(reports["one"]).page
    section = page.locator("details.layer").nth(1)
    img = section.locator("figure.maps img.tiles").first
    img.scroll_into_view_if_needed()
    img.evaluate("i => i.decode()")
    box = img.bounding_box()
    assert box
    scale = box["width"] / img.evaluate("i => i.naturalWidth")
    tile = 1  # row 0, column 1
    x = (grid.padding + tile * (grid.tile_width + grid.padding) + grid.tile_width / 2) * scale
    y = (grid.padding + grid.tile_height / 2) * scale
    img.click(position={"x": x, "y": y})
    assert page.locator("#zoom").evaluate("d => d.open")
    channel = grid.channels[tile]
    assert page.locator("#zoom-text").inner_text() == (
        f"layer {section_model.name} · input {section_model.feature_maps[0].input_name} · channel {channel}")
    assert page.locator("#zoom-min").inner_text() == f"min {grid.tile_min[tile]:.4g}"
    assert page.locator("#zoom-max").inner_text() == f"max {grid.tile_max[tile]:.4g}"
    assert "viridis" in page.locator("#zoom-scale-text").inner_text()
    shown = page.eval_on_selector_all(
        "#zoom .zoom-bar", "els => els.filter(e => e.offsetWidth > 0).map(e => e.dataset.colormap)")
    assert shown == ["viridis"]
    page.keyboard.press("Escape")

    # the filter grid of the same layer: gray levels, its own words and bar
    filters = section.locator("figure.filters img.tiles")
    filters.focus()
    page.keyboard.press("Enter")
    assert page.locator("#zoom-text").inner_text() == f"layer {section_model.name} · filters · filter 0"
    assert section_model.filters is not None
    assert page.locator("#zoom-min").inner_text() == f"min {section_model.filters.tile_min[0]:.4g}"
    shown = page.eval_on_selector_all(
        "#zoom .zoom-bar", "els => els.filter(e => e.offsetWidth > 0).map(e => e.dataset.colormap)")
    assert shown == ["gray"]


def test_zoom_draws_the_full_resolution_map_of_the_first_input(tmp_path: Any, visit: Any) -> None:
    from PIL import Image

    from tests.helpers import decode

    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(2, size=48), device="cpu", max_size_mb=0)
    path = tmp_path / "zoom.html"
    report.save(path)
    section_model = report.model.sections[0]
    zoom = next(z for z in report.model.zoom_maps if z.anchor == section_model.anchor)
    page = visit(path).page
    for input_row, source in ((0, "full"), (1, "tile")):
        grid = section_model.feature_maps[input_row].grid
        img = page.locator("details.layer").nth(0).locator("figure.maps img.tiles").nth(input_row)
        img.scroll_into_view_if_needed()
        img.evaluate("i => i.decode()")
        box = img.bounding_box()
        assert box
        scale = box["width"] / img.evaluate("i => i.naturalWidth")
        img.click(position={"x": (grid.padding + grid.tile_width / 2) * scale,
                            "y": (grid.padding + grid.tile_height / 2) * scale})
        page.wait_for_function(f"() => document.getElementById('zoom-canvas').dataset.source === '{source}'")
        shown = page.locator("#zoom-resolution").inner_text()
        assert shown.startswith("shown: the full-resolution 48x48 map" if source == "full" else "shown: the 24x24 tile")
        if source == "full":  # a canvas pixel is the full map's pixel, not the pooled tile's
            rgb = decode(zoom.grid.image).convert("RGB")
            fit = 256 / zoom.grid.tile_width
            for cy, cx in ((5, 7), (30, 41), (47, 0)):
                canvas_pixel = page.evaluate(
                    f"() => Array.from(document.getElementById('zoom-canvas').getContext('2d')"
                    f".getImageData({int((cx + 0.5) * fit)}, {int((cy + 0.5) * fit)}, 1, 1).data.slice(0, 3))")
                assert tuple(canvas_pixel) == rgb.getpixel((zoom.grid.padding + cx, zoom.grid.padding + cy))
            assert isinstance(rgb, Image.Image)
        page.keyboard.press("Escape")
