"""Hostile names: module names, class labels, input names, file names and titles holding markup,
quotes, template syntax, unicode and very long strings are shown as text, never run, and every
anchor and permalink still works. (tests/browser/test_hostile_browser.py opens the page.)"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

import reportgen
from reportgen import cli
from reportgen.render import anchors_for
from tests.fixtures.zoo import HOSTILE_NAMES, check_report, hostile_report, inplace_relu_chain, rand


class Page(HTMLParser):
    """Tags, attributes and the visible text of a page, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for name, _ in self.tags if name == tag)

    def ids(self) -> list[str]:
        return [attrs["id"] or "" for _, attrs in self.tags if "id" in attrs]

    def visible(self) -> str:
        return "".join(self.text)


@pytest.fixture(scope="module")
def report() -> Any:
    return hostile_report()


@pytest.fixture(scope="module")
def page(report: Any) -> Page:
    return Page(report.to_html())


@pytest.fixture(scope="module")
def benign() -> Page:
    return Page(reportgen.generate_report(inplace_relu_chain(), rand(3, 3, 8, 8), device="cpu").to_html())


def test_the_hostile_report_has_the_structure_of_a_benign_one(report: Any, page: Page, benign: Page) -> None:
    check_report(report)  # pictures decode, ids unique, every in-page link lands, nothing external
    for tag in ("script", "style", "iframe", "object", "embed", "form", "svg", "meta", "base", "link"):
        assert page.count(tag) == benign.count(tag), tag
    assert all(not name.startswith("on") for _, attrs in page.tags for name in attrs)
    for tag, attrs in page.tags:
        for name in ("href", "src", "action", "formaction"):
            value = attrs.get(name) or ""
            assert not value.lower().lstrip().startswith("javascript:"), (tag, value)
    assert not any(tag == "img" and (attrs.get("src") or "").startswith("x") for tag, attrs in page.tags)


def test_every_hostile_string_is_shown_as_text(report: Any, page: Page) -> None:
    visible = page.visible()
    for name in HOSTILE_NAMES:
        assert name in visible, name[:40]
    assert "{{ 7*7 }}{% raw %}" in visible  # printed, not evaluated as a template
    assert HOSTILE_NAMES[3] + HOSTILE_NAMES[0] in visible  # the title
    html = report.to_html()
    assert "<script>window" not in html and "<img src=x" not in html and "<svg onload" not in html


def test_anchors_are_safe_unique_and_every_permalink_lands(report: Any, page: Page) -> None:
    sections = report.model.sections
    assert [s.name for s in sections] == list(HOSTILE_NAMES)
    anchors = [s.anchor for s in sections]
    assert len(set(anchors)) == len(anchors)
    assert all(re.fullmatch(r"layer-[A-Za-z0-9_.-]+", a) for a in anchors), anchors
    assert all(len(a) <= 130 for a in anchors)
    ids = page.ids()
    assert len(ids) == len(set(ids))
    details = {attrs.get("id") for tag, attrs in page.tags if tag == "details"}
    permalinks = [attrs["href"] for tag, attrs in page.tags if tag == "a" and "permalink" in (attrs.get("class") or "")]
    assert sorted(p[1:] for p in permalinks) == sorted(anchors)
    assert set(anchors) <= details
    # Before: a module named `filter` got id="layer-filter", the sidebar filter box's id.
    assert report.model.sections[HOSTILE_NAMES.index("filter")].anchor != "layer-filter"


def test_names_survive_exactly_in_the_json(report: Any) -> None:
    data = json.loads(report.to_json())
    assert [layer["name"] for layer in data["visualized"]] == list(HOSTILE_NAMES)
    assert [item["name"] for item in data["inputs"]] == list(HOSTILE_NAMES[:3])
    labels = {top["label"] for prediction in data["predictions"] for top in prediction["top"]}
    assert labels <= set(HOSTILE_NAMES)
    assert data["run"]["title"] == HOSTILE_NAMES[3] + HOSTILE_NAMES[0]


def test_anchor_collisions_get_counters_and_long_names_are_cut() -> None:
    anchors = anchors_for(["a<b", "a>b", "a-b", "a-b-2", "filter", "x" * 500, "x" * 499 + "y", "🙂", "层"])
    assert list(anchors.values()) == [
        "layer-a-b", "layer-a-b-2", "layer-a-b-3", "layer-a-b-2-2", "layer-filter-2",
        "layer-" + "x" * 114, "layer-" + "x" * 114 + "-2", "layer-x", "layer-u5c42",
    ]  # an emoji is no letter (placeholder x); a CJK letter is spelled as its code point


HOSTILE_FILES = ['"><img src=x onerror=alert(1)>.png', "<svg onload=alert(2)>.png", "it's & <b>.png", "ünï 🙂.png"]

MODEL_FILE = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
"""


def test_hostile_file_names_titles_and_labels_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], benign: Page
) -> None:
    from PIL import Image

    folder = tmp_path / '<b onmouseover=alert("dir")>'
    folder.mkdir()
    (folder / "net.py").write_text(MODEL_FILE)
    for index, name in enumerate(HOSTILE_FILES):
        Image.new("RGB", (10, 10), (40 * index, 200, 90)).save(folder / name)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(HOSTILE_NAMES[:3]) + "\n")
    monkeypatch.chdir(tmp_path)
    title = "<title></title><script>alert('title')</script>"
    out = tmp_path / "out.html"
    code = cli.main([f"{folder.name}/net.py:build", *(f"{folder.name}/{n}" for n in HOSTILE_FILES), "-q",
                     "--device", "cpu", "--title", title, "--labels", str(labels), "-o", str(out),
                     "--json", str(tmp_path / "out.json")])
    assert code == 0, capsys.readouterr().err
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    visible = page.visible()
    for name in HOSTILE_FILES:
        assert name in visible
    assert title in visible and page.count("title") == 1
    assert page.count("script") == benign.count("script") and page.count("svg") == benign.count("svg")
    assert "<svg onload" not in html and "<img src=x" not in html and "<script>alert" not in html
    # paths are shown relative to where reportgen ran, which only the Reproduce command's `cd` names
    assert str(tmp_path) not in html.replace(f"cd {tmp_path} &amp;&amp; ", "")
    data = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert {item["name"] for item in data["inputs"]} == set(HOSTILE_FILES)
    assert data["run"]["title"] == title


def test_a_model_class_name_and_hostile_error_messages_stay_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    class Evil(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("line one <script>\nline two\r\nline three")

    with pytest.raises(reportgen.ReportError) as caught:
        reportgen.generate_report(Evil(), rand(1, 3, 4, 4), device="cpu")
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    assert str(caught.value).endswith("RuntimeError: line one <script>")
