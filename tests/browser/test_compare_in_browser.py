"""The compare page in headless Chromium: offline, no errors, every picture decodes (the same
checks as the main report's)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

import reportgen
from tests.browser.test_report_in_browser import LOAD_ALL_IMAGES
from tests.fixtures.models import tiny_cnn, tiny_inputs


def test_compare_page_loads_offline_and_every_image_decodes(tmp_path: Path, visit: Any) -> None:
    a = tiny_cnn(0)
    checkpoints = [copy.deepcopy(a.state_dict())]
    for step in (1, 2):
        with torch.no_grad():
            a[2].weight[step].mul_(-1.0)
            a[6].bias[step] += 3.0
        checkpoints.append(copy.deepcopy(a.state_dict()))
    report = reportgen.compare_reports(tiny_cnn(0), inputs=tiny_inputs(12, size=12), checkpoints=checkpoints,
                                       names=["<i>first</i>", "middle", "last"], targets=[0, 1, 2] * 4,
                                       device="cpu", batch_size=6)
    path = tmp_path / "compare.html"
    report.save(path)
    seen = visit(path)
    sizes = seen.page.evaluate(LOAD_ALL_IMAGES)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.outside_requests(path.resolve().as_uri()) == []
    expected = path.read_text(encoding="utf-8").count("<img ")
    assert len(sizes) == expected > 0
    assert [alt for alt, width, height in sizes if width <= 0 or height <= 0] == []
    assert seen.page.locator("h1").inner_text().startswith("<i>first</i>")
