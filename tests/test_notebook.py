"""Notebooks and opening in a browser: `_repr_html_`, `Report.show()`, `reportgen ... --open`.

The iframe is also loaded in real Chromium in tests/browser (test_notebook_iframe_shows_the_report).
"""

from __future__ import annotations

import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.cli import main
from tests.fixtures.models import tiny_cnn, tiny_inputs


@pytest.fixture(scope="module")
def report() -> reportgen.Report:
    return reportgen.generate_report(tiny_cnn(), tiny_inputs(2), device="cpu")


class _Frames(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "iframe":
            self.frames.append(dict(attrs))


def test_repr_html_is_an_isolated_iframe_holding_the_whole_report(report: reportgen.Report) -> None:
    markup = report._repr_html_()
    parser = _Frames()
    parser.feed(markup)
    assert len(parser.frames) == 1
    frame = parser.frames[0]
    assert frame["srcdoc"] == report.to_html()  # unescaped by the parser: the exact page
    assert "allow-scripts" in (frame["sandbox"] or "")
    assert "<script" not in markup  # the report's own script lives only inside srcdoc
    assert "http:" not in markup and "https:" not in markup


def test_show_opens_the_saved_file(
    report: reportgen.Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    saved = report.save(tmp_path / "r.html")
    assert report.show() == saved
    assert opened == [saved.resolve().as_uri()]


def test_show_saves_an_unsaved_report_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    fresh = reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu")
    path = fresh.show()
    assert path.parent == tmp_path and path.suffix == ".html"
    assert opened == [path.resolve().as_uri()]
    assert path.read_text(encoding="utf-8") == fresh.to_html()


MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3))
    """
)


def test_cli_open_opens_the_written_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(MODEL_FILE, encoding="utf-8")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    assert main(["net.py:build", "a.png", "-o", "r.html", "-q"]) == 0
    assert opened == []  # only when asked
    assert main(["net.py:build", "a.png", "-o", "r.html", "-q", "--open"]) == 0
    assert opened == [(tmp_path / "r.html").resolve().as_uri()]
    assert capsys.readouterr().out.split()[-1] == "r.html"
    # a failed run opens nothing
    assert main(["net.py:build", "missing.png", "-o", "r2.html", "-q", "--open"]) == 2
    assert len(opened) == 1
