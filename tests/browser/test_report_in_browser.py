"""The report in headless Chromium: no network, no errors, every picture, every convenience.

Reports: the demo (its shipped checkpoint: if that is broken these tests fail, never swap in
another model; only a missing Chromium or playwright skips, see conftest.py), a torchvision
ResNet-18 (random init, two 64x64 inputs, --max-channels 16) and a model whose layer names hold
spaces, quotes, non-ASCII letters and '<' (permalinks and escaping).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import reportgen
from reportgen.cli import main
from reportgen.view import OPEN_SECTIONS
from tests.fixtures.models import tiny_cnn, tiny_inputs

ODD_NAMES = ["first conv", 'say "hi"', "naïve 层", "<b>bold</b>", "it's", "last"]


class OddNames(nn.Module):
    """Six convs named like nothing a URL fragment likes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        channels = [3, 6, 6, 6, 6, 6, 6]
        for i, name in enumerate(ODD_NAMES):
            self.add_module(name, nn.Conv2d(channels[i], channels[i + 1], 3, padding=1))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ODD_NAMES:
            x = torch.relu(getattr(self, name)(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reports")
    paths: dict[str, Path] = {}

    paths["odd"] = folder / "odd.html"
    report = reportgen.generate_report(
        OddNames(), tiny_inputs(2, size=20), device="cpu", labels=["a", "b", "c"]
    )
    report.save(paths["odd"])

    paths["demo"] = folder / "demo.html"
    assert main(["demo", "-o", str(paths["demo"]), "-q"]) == 0

    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        images.append(folder / f"in{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images[-1])
    paths["resnet18"] = folder / "resnet18.html"
    code = main(
        [
            "torchvision:resnet18",
            *map(str, images),
            "--max-channels",
            "16",
            "--device",
            "cpu",
            "-o",
            str(paths["resnet18"]),
            "-q",
        ]
    )
    assert code == 0
    return paths


LOAD_ALL_IMAGES = """async () => {
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return images.map(img => [img.alt, img.naturalWidth, img.naturalHeight]);
}"""


@pytest.mark.parametrize("which", ["demo", "resnet18", "odd"])
def test_loads_offline_without_errors_and_every_image_decodes(
    reports: dict[str, Path], visit: Any, which: str
) -> None:
    path = reports[which]
    seen = visit(path)
    sizes = seen.page.evaluate(LOAD_ALL_IMAGES)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.outside_requests(path.resolve().as_uri()) == []  # file:// page and data: URIs only
    expected = path.read_text(encoding="utf-8").count("<img ")
    assert len(sizes) == expected > 0
    assert [alt for alt, width, height in sizes if width <= 0 or height <= 0] == []


def test_no_url_of_any_kind_in_the_page(reports: dict[str, Path]) -> None:
    for path in reports.values():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_filter_box_narrows_the_layer_list(reports: dict[str, Path], visit: Any) -> None:
    page = visit(reports["resnet18"]).page
    items = page.locator("#nav-layers li")
    total = items.count()
    assert total == 20  # ResNet-18 has 20 convolutions
    page.fill("#layer-filter", "layer3.")
    visible = [t for t in items.all_inner_texts() if t.strip()]
    shown = page.locator("#nav-layers li:not(.hidden)")
    assert shown.count() == 5 and all(
        text.startswith("layer3.") for text in shown.all_inner_texts()
    )
    assert len(visible) == total  # hidden, not removed
    page.fill("#layer-filter", "DOWNSAMPLE")  # case-insensitive
    assert shown.count() == 3
    page.fill("#layer-filter", "conv2d")  # by type
    assert shown.count() == total
    page.fill("#layer-filter", "no such layer")
    assert shown.count() == 0
    page.fill("#layer-filter", "")
    assert shown.count() == total


def test_sections_collapse_and_expand(reports: dict[str, Path], visit: Any) -> None:
    page = visit(reports["resnet18"]).page
    states = page.eval_on_selector_all("details.layer", "els => els.map(d => d.open)")
    assert states == [i < OPEN_SECTIONS for i in range(len(states))]
    last = page.locator("details.layer").last
    assert not last.evaluate("d => d.open")
    last.locator(":scope > summary").click()
    assert last.evaluate("d => d.open")
    assert last.locator("img.tiles").first.is_visible()
    last.locator(":scope > summary").click()
    assert not last.evaluate("d => d.open")
    assert not last.locator("img.tiles").first.is_visible()


def test_tile_zoom_shows_channel_values_and_statistics(
    reports: dict[str, Path], visit: Any
) -> None:
    page = visit(reports["resnet18"]).page
    section = page.locator("details.layer").nth(1)
    img = section.locator("figure.maps img.tiles").first
    img.scroll_into_view_if_needed()
    img.evaluate("i => i.decode()")
    grid = json.loads(img.get_attribute("data-grid"))
    stats = json.loads(section.get_attribute("data-stats"))
    box = img.bounding_box()
    scale = box["width"] / img.evaluate("i => i.naturalWidth")
    # the middle of the tile in row 1, column 2
    row, column = 1, 2
    x = (
        grid["padding"] + column * (grid["tileWidth"] + grid["padding"]) + grid["tileWidth"] / 2
    ) * scale
    y = (
        grid["padding"] + row * (grid["tileHeight"] + grid["padding"]) + grid["tileHeight"] / 2
    ) * scale
    img.click(position={"x": x, "y": y})
    dialog = page.locator("#zoom")
    assert dialog.evaluate("d => d.open")
    tile = row * grid["columns"] + column
    channel = grid["channels"][tile]
    assert dialog.get_attribute("data-channel") == str(channel)
    text = page.locator("#zoom-text").inner_text()
    assert text.endswith(f" · channel {channel}")
    assert page.locator("#zoom-max").inner_text() == f"max {grid['maxText'].split()[tile]}"
    at = stats["channels"].index(channel)
    stats_text = page.locator("#zoom-stats").inner_text()
    assert page.evaluate("v => Number(v).toPrecision(4)", stats["mean"][at]) in stats_text
    assert f"active {stats['active'][at] * 100:.1f}%" in stats_text
    # the canvas holds the tile, drawn large: not blank
    painted = page.evaluate("""() => {
      const c = document.getElementById('zoom-canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; } return n; }""")
    assert painted > 100
    page.keyboard.press("ArrowRight")
    assert dialog.get_attribute("data-channel") == str(grid["channels"][tile + 1])
    page.keyboard.press("Escape")
    assert not dialog.evaluate("d => d.open")


def test_keyboard_opens_the_zoom(reports: dict[str, Path], visit: Any) -> None:
    page = visit(reports["resnet18"]).page
    tiles = page.locator("img.tiles")
    assert tiles.first.get_attribute("tabindex") == "0"
    tiles.first.focus()
    assert page.evaluate("() => document.activeElement.classList.contains('tiles')")
    page.keyboard.press("Enter")
    dialog = page.locator("#zoom")
    assert dialog.evaluate("d => d.open")
    assert dialog.get_attribute("data-channel") == "0"
    page.keyboard.press("Escape")
    assert not dialog.evaluate("d => d.open")
    # focus returns to the grid it came from
    assert page.evaluate("() => document.activeElement.classList.contains('tiles')")


def test_permalinks_survive_odd_layer_names(reports: dict[str, Path], visit: Any) -> None:
    path = reports["odd"]
    text = path.read_text(encoding="utf-8")
    assert "<b>bold</b>" not in text and html.escape("<b>bold</b>", quote=False) in text
    seen = visit(path)
    page = seen.page
    anchors = page.eval_on_selector_all("details.layer", "els => els.map(d => d.id)")
    names = page.eval_on_selector_all(
        "details.layer h3", "els => els.map(h => h.textContent.replace(/^#\\s*/, ''))"
    )
    assert names == ODD_NAMES  # shown as written: quotes, unicode and '<' intact
    assert len(set(anchors)) == len(anchors)
    assert all(
        a.startswith("layer-") and a.isascii() and " " not in a and '"' not in a for a in anchors
    )
    assert seen.page_errors == []
    # a fresh visit to a permalink of a section that starts collapsed opens it and shows it
    target = anchors[-1]
    assert len(anchors) > OPEN_SECTIONS
    page = visit(path, fragment=target, height=500).page
    section = page.locator(f"details#{target}")
    assert section.evaluate("d => d.open")
    page.wait_for_function(
        "id => { const t = document.getElementById(id).getBoundingClientRect().top;"
        " return t > -1 && t < 500; }",  # sub-pixel layout can leave it at -0.08 px
        arg=target,
        timeout=3000,
    )
    # the sidebar links use the same anchors, and following one opens a collapsed section
    other = anchors[OPEN_SECTIONS]
    page.evaluate("id => { document.getElementById(id).open = false; }", other)
    page.locator(f'#nav-layers a[href="#{other}"]').click()
    page.wait_for_function("id => document.getElementById(id).open", arg=other)
    assert page.evaluate("() => location.hash") == f"#{other}"


def test_without_javascript_everything_is_there(reports: dict[str, Path], visit: Any) -> None:
    path = reports["resnet18"]
    seen = visit(path, js=False)
    page = seen.page
    page.wait_for_load_state("load")
    sizes = page.eval_on_selector_all("img", "els => els.map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == path.read_text(encoding="utf-8").count("<img ") and len(sizes) > 20
    assert all(complete and width > 0 for complete, width in sizes)
    # every section is open and its pictures are on screen when scrolled to
    assert page.eval_on_selector_all("details.layer", "els => els.every(d => d.open)")
    last = page.locator("details.layer").last
    last.scroll_into_view_if_needed()
    assert last.locator("img.tiles").first.is_visible()
    assert page.locator("#summary table").is_visible()
    assert seen.outside_requests(path.resolve().as_uri()) == []


def test_dark_mode_and_print_styles(reports: dict[str, Path], visit: Any, tmp_path: Path) -> None:
    path = reports["demo"]
    light = visit(path, color_scheme="light").page
    dark = visit(path, color_scheme="dark").page
    background = "() => getComputedStyle(document.body).backgroundColor"
    assert light.evaluate(background) == "rgb(255, 255, 255)"
    assert dark.evaluate(background) == "rgb(15, 20, 25)"
    light.screenshot(path=str(tmp_path / "light.png"))
    dark.screenshot(path=str(tmp_path / "dark.png"))
    brightness = [
        np.asarray(Image.open(tmp_path / f"{m}.png").convert("L")).mean() for m in ("light", "dark")
    ]
    assert brightness[0] > 200 > 80 > brightness[1]
    light.emulate_media(media="print")
    assert (
        light.evaluate("() => getComputedStyle(document.querySelector('.sidebar')).display")
        == "none"
    )


def test_notebook_iframe_shows_the_report(
    reports: dict[str, Path], visit: Any, tmp_path: Path
) -> None:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")
    notebook = tmp_path / "notebook.html"
    notebook.write_text(
        f"<!DOCTYPE html><html><body><h1>cell output</h1>{report._repr_html_()}</body></html>",
        encoding="utf-8",
    )
    seen = visit(notebook)
    frame = seen.page.frame_locator("iframe")
    frame.locator("#summary").wait_for()
    inner = next(f for f in seen.page.frames if f != seen.page.main_frame)
    sizes = inner.evaluate(LOAD_ALL_IMAGES)
    assert len(sizes) == report.to_html().count("<img ") > 0
    assert all(width > 0 for _, width, _ in sizes)
    assert frame.locator("h1").inner_text() == report.model.run.title
    assert seen.page_errors == [] and seen.console_errors == []
    assert [
        u for u in seen.outside_requests(notebook.resolve().as_uri()) if u != "about:srcdoc"
    ] == []
