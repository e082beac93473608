"""The HTML is one self-contained file: every picture decodes, nothing points outside."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest
import torch
from PIL import Image

import reportgen
from tests.fixtures.models import tiny_cnn, tiny_inputs


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def page() -> tuple[str, reportgen.Report]:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu", labels=list("abcde"))
    return report.to_html(), report


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    return collector


def test_every_image_is_an_inline_png_that_decodes(page: tuple[str, reportgen.Report]) -> None:
    html, report = page
    images = [attrs for tag, attrs in parse(html).tags if tag == "img"]
    # 2 filter grids + 2 layers x 2 inputs of feature maps + 2 thumbnails
    # + insight: 2 weight histograms (SVG) + 2 per-channel activity bars + 2 Grad-CAM overlays
    assert len(images) == 2 + 4 + 2 + 6
    for attrs in images:
        src = attrs["src"] or ""
        if src.startswith("data:image/svg+xml;base64,"):  # small charts: XML that parses, no script
            root = ElementTree.fromstring(base64.b64decode(src.split(",", 1)[1]))
            assert root.tag.endswith("svg") and int(root.get("width") or 0) > 0 and int(root.get("height") or 0) > 0
            assert not root.findall(".//{http://www.w3.org/2000/svg}script")
            assert attrs.get("alt")
            continue
        assert src.startswith("data:image/png;base64,")
        picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        picture.load()
        assert picture.width > 0 and picture.height > 0
        assert attrs.get("alt")


def test_no_external_reference_of_any_kind(page: tuple[str, reportgen.Report]) -> None:
    html, _ = page
    for tag, attrs in parse(html).tags:
        assert tag not in ("link", "iframe", "object", "embed", "base")
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name)
            if value is None:
                continue
            assert value.startswith(("data:", "#")), f"<{tag} {name}={value[:60]}>"
        if tag == "script":
            assert "src" not in attrs
    assert not re.search(r"https?://", html)
    assert not re.search(r"url\((?!data:)", html)
    assert "@import" not in html


def test_every_selected_layer_has_a_section_and_a_nav_link(page: tuple[str, reportgen.Report]) -> None:
    html, report = page
    tags = parse(html).tags
    ids = {attrs.get("id") for _, attrs in tags}
    hrefs = {attrs.get("href") for tag, attrs in tags if tag == "a"}
    assert [s.name for s in report.model.sections] == ["0", "2"]
    for section in report.model.sections:
        assert section.anchor in ids
        assert f"#{section.anchor}" in hrefs


def test_predictions_and_labels_are_shown(page: tuple[str, reportgen.Report]) -> None:
    html, _ = page
    # independent reference: the model's softmax, ranked here; the page lists each input's top
    # classes by name with their percentages, in input order
    with torch.no_grad():
        probabilities = torch.softmax(tiny_cnn()(tiny_inputs(2)), dim=1)
    section = html.split('<section id="predictions">', 1)[1].split("</section>", 1)[0]
    shown = re.findall(r'<span class="cls">([^<]*)</span>.*?<span class="pct">([0-9.]+)%</span>', section)
    expected = [(list("abcde")[int(i)], float(p) * 100) for row in probabilities
                for p, i in zip(*torch.topk(row, len(row)))]
    assert [label for label, _ in shown] == [label for label, _ in expected]
    for (_, percent), (_, want) in zip(shown, expected):
        assert float(percent) == pytest.approx(want, abs=0.051)  # shown to 0.1 %
    assert "Predictions" in html
