"""Real-browser tests: one headless Chromium for the whole session (Debian's /usr/bin/chromium).

Every test here is marked `browser`. They skip, saying why, when Chromium or the `playwright`
package is missing; CI installs both, so there they run. Playwright's own browser download is
not used: it cannot reach the network here, and the system Chromium is what users have.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class Visit:
    """A page opened on a report, with everything it asked the network for and every error."""

    page: Any
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def outside_requests(self, own_url: str) -> list[str]:
        return [url for url in self.requests if url != own_url and not url.startswith("data:")]


@pytest.fixture()
def visit(browser: Any) -> Iterator[Any]:
    """visit(path, js=True, color_scheme="light", fragment="") -> Visit; contexts closed after."""
    contexts: list[Any] = []

    def open_report(
        path: Path,
        *,
        js: bool = True,
        color_scheme: str = "light",
        fragment: str = "",
        width: int = 1280,
        height: int = 900,
    ) -> Visit:
        context = browser.new_context(
            java_script_enabled=js,
            color_scheme=color_scheme,
            viewport={"width": width, "height": height},
        )
        contexts.append(context)
        page = context.new_page()
        result = Visit(page)
        page.on("request", lambda request: result.requests.append(request.url))
        page.on(
            "console",
            lambda message: (
                result.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: result.page_errors.append(str(error)))
        page.goto(path.resolve().as_uri() + (f"#{fragment}" if fragment else ""), wait_until="load")
        return result

    yield open_report
    for context in contexts:
        context.close()
