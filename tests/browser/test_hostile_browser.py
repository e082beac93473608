"""A real browser opens the hostile-name report: no payload runs (no dialog, window.__pwned never
set, no page error, no request leaves the file), and every permalink opens its own section."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.zoo import HOSTILE_NAMES, hostile_report

pytestmark = pytest.mark.browser


@dataclass
class Watched:
    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def pwned(self) -> Any:
        return self.page.evaluate("() => window.__pwned")


@pytest.fixture()
def watched(browser: Any) -> Iterator[Any]:
    """A fresh page whose dialogs, errors and requests are recorded from before it loads."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def open_page() -> Watched:
        page = context.new_page()
        result = Watched(page)

        def on_dialog(dialog: Any) -> None:
            result.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: result.errors.append(str(error)))
        page.on("request", lambda request: result.requests.append(request.url))
        return result

    yield open_page
    context.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    report = hostile_report()
    path = tmp_path_factory.mktemp("hostile") / "hostile.html"
    report.save(path)
    return path, report


def test_the_detector_works_on_an_unescaped_payload(watched: Any) -> None:
    """Control: the same payloads, pasted raw into a page, do set __pwned and open dialogs."""
    view = watched()
    view.page.set_content("<main>" + HOSTILE_NAMES[0] + HOSTILE_NAMES[1] + "</main>")
    view.page.wait_for_timeout(200)
    assert view.pwned() in (1, 2)
    assert view.dialogs


def test_no_payload_runs_and_every_permalink_opens_its_section(watched: Any, report_file: tuple[Path, Any]) -> None:
    path, report = report_file
    url = path.resolve().as_uri()
    view = watched()
    view.page.goto(url, wait_until="load")
    page = view.page
    assert page.title() == HOSTILE_NAMES[3] + HOSTILE_NAMES[0]

    # Interact: type every payload into the filter box, open every section by its permalink.
    for name in HOSTILE_NAMES:
        page.fill("#layer-filter", name)
    page.fill("#layer-filter", "")
    sections = report.model.sections
    for section in sections:
        page.goto(f"{url}#{section.anchor}")
        state = page.evaluate(
            """(id) => { const el = document.getElementById(id);
                         return el ? [el.tagName, el.open, el.querySelector('h3').textContent] : null; }""",
            section.anchor,
        )
        assert state is not None, section.anchor
        tag, is_open, heading = state
        assert tag == "DETAILS" and is_open, section.name[:40]
        assert heading.replace("#", "", 1).strip() == section.name.strip()
    page.click(f"#{sections[0].anchor} a.permalink")
    assert page.evaluate("() => decodeURIComponent(location.hash)") == f"#{sections[0].anchor}"

    # The sidebar filter still narrows by hostile text (typed as data, matched as data).
    page.fill("#layer-filter", "a<b")
    shown = page.evaluate("() => [...document.querySelectorAll('#nav-layers li')]"
                          ".filter(li => !li.classList.contains('hidden')).length")
    assert shown == 1

    page.wait_for_timeout(300)
    assert view.pwned() is None
    assert view.dialogs == []
    assert view.errors == []
    assert [r for r in view.requests if not r.startswith(("file:", "data:"))] == []
    texts = page.evaluate("() => document.body.innerText")
    for name in HOSTILE_NAMES[:6]:
        assert name in texts
