"""Tiny SVG charts (histogram, channel bars, scatter, heatmap) as `EncodedImage` data: URIs.

Plain string building, no matplotlib: a chart costs microseconds. Every text that reaches the
SVG (labels, names) is XML-escaped here, and the SVG is shown through an <img> (a data: URI),
where no script in it could run anyway. Numbers are written with a fixed precision, so the same
data gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from reportgen.grids import embed
from reportgen.report_model import EncodedImage

FONT = "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif"
AXIS = "#8a939e"
BAR = "#1f6feb"
BAD = "#d1242f"
MUTED = "#c9d1d9"
# Categorical colours (Okabe-Ito, colour-blind safe, then a few more); label i gets colour i.
CATEGORICAL = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
    "#7F3C8D", "#11A579", "#3969AC", "#F2B701",
)
OTHER = "#9aa4b1"


def _f(value: float) -> str:
    """Fixed precision coordinates: deterministic bytes, small files."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _document(width: int, height: int, body: Sequence[str], title: str) -> EncodedImage:
    text = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family={quoteattr(FONT)} font-size="10">'
        f"<title>{escape(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
        + "".join(body)
        + "</svg>"
    )
    return embed(text.encode("utf-8"), width=width, height=height, mime="image/svg+xml")


def _number(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def histogram(counts: Sequence[int], low: float, high: float, *, title: str,
              width: int = 220, height: int = 90) -> EncodedImage | None:
    """Bars over [low, high], with the axis ends labelled and a line at 0 when 0 is inside."""
    if not counts or not (math.isfinite(low) and math.isfinite(high)):
        return None
    top, bottom, left, right = 6, height - 16, 4, width - 4
    peak = max(max(counts), 1)
    step = (right - left) / len(counts)
    body = []
    for i, count in enumerate(counts):
        bar = (bottom - top) * count / peak
        if bar > 0:
            body.append(f'<rect x="{_f(left + i * step)}" y="{_f(bottom - bar)}" width="{_f(max(step - 0.5, 0.5))}" '
                        f'height="{_f(bar)}" fill="{BAR}"/>')
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{AXIS}"/>')
    if low < 0 < high:
        zero = left + (right - left) * (0 - low) / (high - low)
        body.append(f'<line x1="{_f(zero)}" y1="{top}" x2="{_f(zero)}" y2="{bottom}" stroke="{BAD}" '
                    f'stroke-dasharray="2,2"/>')
    body.append(f'<text x="{left}" y="{height - 4}" fill="#333">{escape(_number(low))}</text>')
    body.append(f'<text x="{right}" y="{height - 4}" fill="#333" text-anchor="end">{escape(_number(high))}</text>')
    return _document(width, height, body, title)


def channel_bars(values: Sequence[float], *, highlight: Sequence[int] = (), title: str,
                 width: int = 320, height: int = 48, maximum: float = 1.0) -> EncodedImage | None:
    """One bar per channel (value 0..maximum); highlighted channels (e.g. dead ones) in red."""
    if not values:
        return None
    top, bottom = 2, height - 2
    step = width / len(values)
    marked = set(highlight)
    body = [f'<line x1="0" y1="{bottom}" x2="{width}" y2="{bottom}" stroke="{AXIS}"/>']
    for i, value in enumerate(values):
        value = value if math.isfinite(value) else 0.0
        bar = (bottom - top) * min(max(value / maximum, 0.0), 1.0) if maximum > 0 else 0.0
        colour = BAD if i in marked else BAR
        if i in marked and bar < 2:
            bar = bottom - top  # a dead channel gets a full-height red bar: it must be seen
            colour = BAD
        if bar > 0:
            body.append(f'<rect x="{_f(i * step)}" y="{_f(bottom - bar)}" width="{_f(max(step - 0.3, 0.3))}" '
                        f'height="{_f(bar)}" fill="{colour}"/>')
    return _document(width, height, body, title)


def scatter(xs: Sequence[float], ys: Sequence[float], colours: Sequence[str], *,
            marked: Sequence[tuple[int, str]] = (), title: str, size: int = 360) -> EncodedImage | None:
    """Points scaled to fit; `marked` (point index, text) get a ring and their text."""
    if not xs:
        return None
    pad = 14
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    x_span = (x_high - x_low) or 1.0
    y_span = (y_high - y_low) or 1.0

    def at(i: int) -> tuple[float, float]:
        x = pad + (size - 2 * pad) * (xs[i] - x_low) / x_span
        y = size - pad - (size - 2 * pad) * (ys[i] - y_low) / y_span  # up is positive
        return x, y

    radius = 3.0 if len(xs) <= 500 else 2.0
    body = [f'<rect x="0.5" y="0.5" width="{size - 1}" height="{size - 1}" fill="none" stroke="{MUTED}"/>']
    for i in range(len(xs)):
        x, y = at(i)
        body.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{radius}" fill="{colours[i]}" fill-opacity="0.8"/>')
    for i, text in marked:
        x, y = at(i)
        anchor = "end" if x > size / 2 else "start"
        dx = -6 if anchor == "end" else 6
        body.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{radius + 3}" fill="none" stroke="{BAD}" stroke-width="1.5"/>')
        body.append(f'<text x="{_f(x + dx)}" y="{_f(y - 5)}" fill="{BAD}" text-anchor="{anchor}">{escape(text)}</text>')
    return _document(size, size, body, title)


def heatmap(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str,
            cell: int = 18) -> EncodedImage | None:
    """Rows: true class, columns: predicted class; darker = more inputs; counts written in."""
    count = len(matrix)
    if count == 0:
        return None
    title_band = 16  # room for the axis titles: "predicted class" on top, "true class" on the left
    margin = title_band + 8 + min(max((len(label) for label in labels), default=1), 18) * 6
    width = margin + count * cell + 4
    height = margin + count * cell + 4
    peak = max((max(row) for row in matrix), default=0) or 1
    body = []
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            x, y = margin + c * cell, margin + r * cell
            share = value / peak
            if value:
                fill = f"rgb({round(255 - 224 * share)},{round(255 - 144 * share)},{round(255 - 20 * share)})"
            else:
                fill = "#ffffff"
            stroke = BAD if r == c else MUTED
            body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="{stroke}" '
                        f'stroke-width="0.5"/>')
            if value:
                ink = "#ffffff" if share > 0.55 else "#1d2127"
                body.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 3.5}" fill="{ink}" text-anchor="middle" '
                            f'font-size="9">{value}</text>')
    for i, label in enumerate(labels):
        short = label if len(label) <= 18 else label[:17] + "…"
        centre = margin + i * cell + cell / 2 + 3.5
        body.append(f'<text x="{margin - 4}" y="{_f(centre)}" text-anchor="end" fill="#333">{escape(short)}</text>')
        body.append(f'<text transform="translate({_f(centre)},{margin - 4}) rotate(-90)" fill="#333">'
                    f'{escape(short)}</text>')
    middle = margin + count * cell / 2
    body.append(f'<text class="axis-title" x="{_f(middle)}" y="11" text-anchor="middle" fill="#1d2127" '
                f'font-weight="600">predicted class</text>')
    body.append(f'<text class="axis-title" transform="translate(11,{_f(middle)}) rotate(-90)" text-anchor="middle" '
                f'fill="#1d2127" font-weight="600">true class</text>')
    return _document(width, height, body, title)
