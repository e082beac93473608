"""The assemble stage: one Jinja2 environment, one render function, one HTML string.

The environment is built once (autoescape on, StrictUndefined so a missing value fails loudly,
trim/lstrip blocks). CSS and JS are inlined with `{% include %}`; pictures are data: URIs.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2

from reportgen import view
from reportgen.report_model import ReportModel


def templates_dir() -> Path:
    """The templates that belong to this very copy of reportgen.

    Installed from a wheel they sit inside the package (reportgen/templates); in a checkout
    they sit beside it (templates/). Both are looked up relative to this file, so a checkout
    run with PYTHONPATH never picks up another copy's templates through an editable install.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "report.html.jinja2").is_file():
            return candidate
    return Path(str(resources.files("reportgen.templates")))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(report: ReportModel) -> str:
    return environment().get_template("report.html.jinja2").render(page=view.page(report))
