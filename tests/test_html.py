"""The HTML is one self-contained file: every picture decodes, nothing points outside."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from xml.etree import ElementTree

import numpy as np
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
    # + the zoom's colour bars: viridis (feature maps) and gray (second layer's filters)
    assert len(images) == 2 + 4 + 2 + 6 + 2
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


def test_zoom_data_names_layer_input_and_the_colour_scale(page: tuple[str, reportgen.Report]) -> None:
    html, report = page
    tags = parse(html).tags
    grids = [json.loads(attrs["data-grid"] or "") for tag, attrs in tags if tag == "img" and "data-grid" in attrs]
    section = report.model.sections[1]
    maps = section.feature_maps[0]
    shown = next(g for g in grids if g["heading"] == f"layer {section.name} · input {maps.input_name}")
    assert shown["unit"] == "channel" and shown["colormap"] == "viridis"
    assert shown["minText"].split(" ") == [f"{v:.4g}" for v in maps.grid.tile_min]
    assert shown["maxText"].split(" ") == [f"{v:.4g}" for v in maps.grid.tile_max]
    assert "min (dark)" in shown["scale"] and "max (bright)" in shown["scale"]
    filters = next(g for g in grids if g["heading"] == f"layer {section.name} · filters")
    assert filters["unit"] == "filter" and filters["colormap"] == "gray"
    # one colour bar per colormap on the page; its pixels are matplotlib's ramp, low to high
    bars = {attrs["data-colormap"]: attrs["src"] for tag, attrs in tags if tag == "img"
            and "zoom-bar" in (attrs.get("class") or "")}
    assert sorted(bars) == ["gray", "viridis"]
    colormaps = pytest.importorskip("matplotlib").colormaps
    for name, src in bars.items():
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode((src or "").split(",", 1)[1]))).convert("RGB"))
        expected = np.floor(colormaps[name](np.linspace(0, 1, 254))[:, :3] * 255 + 0.5)
        assert picture.shape == (1, 254, 3)
        assert np.abs(picture[0].astype(float) - expected).max() <= 1


@pytest.fixture(scope="module")
def labelled() -> reportgen.Report:
    """Four inputs with true classes; the untrained model gets some of them wrong."""
    return reportgen.generate_report(tiny_cnn(), tiny_inputs(4), device="cpu", labels=list("abcde"),
                                     targets=[0, 1, 2, 3])


def test_confusion_matrix_has_axis_titles(labelled: reportgen.Report) -> None:
    per_class = labelled.model.insight.per_class if labelled.model.insight else None
    assert per_class is not None and per_class.chart is not None
    svg = ElementTree.fromstring(base64.b64decode(per_class.chart.data_uri.split(",", 1)[1]))
    texts = list(svg.iter("{http://www.w3.org/2000/svg}text"))
    titles = {t.text: t for t in texts if t.text in ("true class", "predicted class")}
    assert sorted(titles) == ["predicted class", "true class"]
    true_title, predicted_title = titles["true class"], titles["predicted class"]
    assert "rotate(-90)" in (true_title.get("transform") or "")  # runs along the rows
    labels = [t for t in texts if t.text not in titles and t.get("font-size") != "9"]  # not the counts
    # the row title is left of every row label, the column title above every column label
    row_right = [float(t.get("x") or 0) - 6 * len(t.text or "") for t in labels if t.get("text-anchor") == "end"]
    title_x = float(re.findall(r"translate\(([\d.]+),", true_title.get("transform") or "")[0])
    assert row_right and title_x + 6 < min(row_right)
    columns = [(float(m), len(t.text or "")) for t in labels
               for m in re.findall(r"translate\([\d.]+,([\d.]+)\) rotate", t.get("transform") or "")]
    assert columns  # a column label rises from its anchor by about 6 px a character
    assert float(predicted_title.get("y") or 0) < min(y - 6 * n for y, n in columns)


def test_overview_starts_with_accuracy_alerts_and_the_misclassified(labelled: reportgen.Report) -> None:
    import torch

    targets = [0, 1, 2, 3]
    with torch.no_grad():
        predicted = tiny_cnn()(tiny_inputs(4)).argmax(dim=1).tolist()
    wrong = [i for i, (p, t) in enumerate(zip(predicted, targets)) if p != t]
    assert wrong  # the untrained model gets some wrong, so the headline has all three parts
    html = labelled.to_html()
    header = html[html.index('<header id="overview">'):html.index("</header>")]
    assert header.index('class="headline"') < header.index('class="kv"')  # before the model facts
    block = re.search(r'<ul class="headline">(.*?)</ul>', header, re.S)
    assert block is not None
    items = [re.sub(r"<[^>]+>", "", item).strip() for item in re.findall(r"<li[^>]*>(.*?)</li>", block.group(1), re.S)]
    right = len(targets) - len(wrong)
    assert items[0] == f"Accuracy {right / len(targets) * 100:.1f}%: {right} of {len(targets)} labelled inputs correct"
    alerts = len(labelled.model.alerts)
    assert re.fullmatch(rf"{alerts} alerts?( \(\d+ critical\))?", items[1]) if alerts else items[1] == "No alerts"
    names = [item.name for item in labelled.model.inputs]
    assert items[2].startswith(f"Misclassified {len(wrong)}: ")
    for i in wrong:
        assert f"{names[i]} (true {'abcde'[targets[i]]}, predicted {'abcde'[predicted[i]]})" in items[2]
