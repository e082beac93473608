"""The compare report's charts as SVG data: URIs: CKA along depth (lines), and matrices of
values (A's layers x B's layers; layers x checkpoints). Every text is XML-escaped; numbers are
written with a fixed precision so the same data gives the same bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from reportgen.encoded_image import EncodedImage
from reportgen.grids import embed
from reportgen.palettes import LEVELS, palette

FONT = "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif"
AXIS = "#8a939e"
INK = "#1d2127"
MISSING = "#ffffff"
LINE_LAYERS = 8  # lines one chart tells apart (one colour each)
SERIES = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#7F3C8D")


def _f(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _document(width: int, height: int, body: Sequence[str], title: str) -> EncodedImage:
    text = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family={quoteattr(FONT)} font-size="10">'
            f"<title>{escape(title)}</title><rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>"
            + "".join(body) + "</svg>")
    return embed(text.encode("utf-8"), width=width, height=height, mime="image/svg+xml")


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else "…" + label[-(limit - 1):]


def _viridis(value: float) -> str:
    """value in [0, 1] -> the viridis colour of that level (the palette the feature maps use)."""
    table = palette("viridis")
    level = min(LEVELS - 1, max(0, math.floor(value * (LEVELS - 1) + 0.5)))
    r, g, b = table[3 * level: 3 * level + 3]
    return f"rgb({r},{g},{b})"


def lines(series: Sequence[tuple[str, Sequence[float | None]]], labels: Sequence[str], *, title: str,
          y_label: str, width: int = 640, height: int = 250) -> EncodedImage | None:
    """One line per series over the same x positions (layers along depth), y from 0 to 1; a
    missing value breaks the line."""
    if not labels or not series:
        return None
    left, right = 34, width - 60  # room on the right and below for the slanted names
    top = 18 if len(series) == 1 else 26 + 12 * ((len(series) - 1) // 4)  # and above for the legend
    bottom = height - 84
    count = len(labels)
    step = (right - left) / max(count - 1, 1)

    def x(i: int) -> float:
        return left + i * step if count > 1 else (left + right) / 2

    def y(v: float) -> float:
        return bottom - (bottom - top) * min(max(v, 0.0), 1.0)

    body = []
    for level in (0.0, 0.5, 1.0):
        body.append(f'<line x1="{left}" y1="{_f(y(level))}" x2="{right}" y2="{_f(y(level))}" stroke="#e1e4e8"/>')
        body.append(f'<text x="{left - 4}" y="{_f(y(level) + 3.5)}" text-anchor="end" fill="#333">{level:g}</text>')
    body.append(f'<text transform="translate(10,{_f((top + bottom) / 2)}) rotate(-90)" text-anchor="middle" '
                f'fill="{INK}" font-weight="600">{escape(y_label)}</text>')
    every = max(1, math.ceil(count / 24))  # at most ~24 layer names under the axis
    for i, label in enumerate(labels):
        if i % every == 0 or i == count - 1:
            body.append(f'<text transform="translate({_f(x(i) + 3)},{bottom + 6}) rotate(60)" fill="#333" '
                        f'font-size="9">{escape(_short(label, 16))}</text>')
    for number, (name, values) in enumerate(series):
        colour = SERIES[number % len(SERIES)]
        run: list[str] = []
        for i, value in enumerate(values):
            if value is None or not math.isfinite(value):
                if len(run) > 1:
                    body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(run)}"/>')
                run = []
                continue
            run.append(f"{_f(x(i))},{_f(y(value))}")
            body.append(f'<circle cx="{_f(x(i))}" cy="{_f(y(value))}" r="2.2" fill="{colour}"/>')
        if len(run) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(run)}"/>')
        if len(series) > 1:
            lx = left + 8 + (number % 4) * 150
            ly = 14 + (number // 4) * 12  # text baseline
            body.append(f'<rect x="{lx}" y="{ly - 5}" width="10" height="3" fill="{colour}"/>')
            body.append(f'<text x="{lx + 14}" y="{ly}" fill="#333">{escape(_short(name, 22))}</text>')
    return _document(width, height, body, title)


def matrix(values: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], *, title: str,
           row_title: str, col_title: str, maximum: float = 1.0, cell: int = 18) -> EncodedImage | None:
    """Cells coloured on viridis from 0 (dark) to `maximum` (yellow); missing values white with
    a gray outline. Row labels on the left, column labels above."""
    if not rows or not cols:
        return None
    cell = max(4, min(cell, 720 // max(len(cols), 1)))
    row_margin = 16 + 6 * min(max(len(r) for r in rows), 24)
    col_margin = 16 + 5 * min(max(len(c) for c in cols), 24)
    axes = f"{row_title} ↓ · {col_title} →"
    width = max(row_margin + cell * len(cols) + 6, 10 + 6 * len(axes))
    height = col_margin + cell * len(rows) + 6
    body = []
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            x, y = row_margin + c * cell, col_margin + r * cell
            if value is None or not math.isfinite(value):
                body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{MISSING}" stroke="{AXIS}" '
                            f'stroke-width="0.3"/>')
            else:
                share = min(max(value / maximum, 0.0), 1.0) if maximum > 0 else 0.0
                body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_viridis(share)}"/>')
    label_size = 9 if cell >= 9 else 7
    for r, label in enumerate(rows):
        if cell >= 7 or r % max(1, 7 // cell) == 0:
            body.append(f'<text x="{row_margin - 3}" y="{_f(col_margin + r * cell + cell / 2 + 3)}" text-anchor="end" '
                        f'fill="#333" font-size="{label_size}">{escape(_short(label, 24))}</text>')
    for c, label in enumerate(cols):
        if cell >= 7 or c % max(1, 7 // cell) == 0:
            centre = row_margin + c * cell + cell / 2 + 3
            body.append(f'<text transform="translate({_f(centre)},{col_margin - 3}) rotate(-90)" fill="#333" '
                        f'font-size="{label_size}">{escape(_short(label, 24))}</text>')
    body.append(f'<text x="2" y="11" fill="{INK}" font-weight="600">{escape(axes)}</text>')
    return _document(width, height, body, title)
