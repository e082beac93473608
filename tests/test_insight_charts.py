"""The per-channel activity bars and the confusion matrix say the right thing about the right
channel and the right class: models whose answers are set by hand, expected values computed
here with numpy, checked in the report model and in the pictures on the page."""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

import reportgen
from reportgen.grids import decode_data_uri
from tests.helpers import decode

# Channel c of `ThresholdNet` is > 0 on exactly FRACTIONS[c] of all positions: distinct values,
# out of order, none 0 (a dead channel is drawn as a red column instead of a bar).
FRACTIONS = (0.75, 0.125, 0.5, 1.0, 0.25, 0.875, 0.375, 0.625)
SIDE = 8  # inputs are SIDE x SIDE: 64 positions, so every fraction above is a whole count
BAR_BLUE = (31, 111, 235)


class ThresholdNet(nn.Module):
    """A 1x1 conv with weight 1 and bias -t_c per channel, then ReLU: channel c is > 0 where the
    input pixel is > t_c, before and after the ReLU alike."""

    def __init__(self, thresholds: np.ndarray) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, len(thresholds), 1)
        self.head = nn.Linear(len(thresholds), 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.from_numpy(-thresholds))
            self.head.weight.fill_(0.1)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def threshold_inputs(count: int) -> torch.Tensor:
    """Each input holds the values 0.5, 1.5, ..., 63.5 once, in its own random order."""
    generator = np.random.default_rng(4)
    values = np.arange(SIDE * SIDE, dtype=np.float32) + 0.5
    shuffled = [generator.permutation(values).reshape(1, SIDE, SIDE) for _ in range(count)]
    return torch.from_numpy(np.stack(shuffled))


def test_activity_bar_of_each_channel_is_that_channels_fraction_active() -> None:
    positions = SIDE * SIDE
    thresholds = np.array([positions * (1 - f) for f in FRACTIONS], dtype=np.float32)
    images = threshold_inputs(5)
    # independent reference: the fraction of (input, position) pairs where x - t_c > 0
    pixels = images.numpy().reshape(len(images), -1)
    expected = np.array([(pixels - t > 0).mean() for t in thresholds])
    np.testing.assert_allclose(expected, FRACTIONS)  # the construction does what it says

    model = ThresholdNet(thresholds)
    report = reportgen.generate_report(model, images, device="cpu", max_size_mb=0)
    (section,) = [s for s in report.model.sections if s.name == "conv"]
    np.testing.assert_allclose(section.stats.fraction_active, expected, atol=1e-6)

    chart = section.insight.activity_chart
    picture = np.asarray(decode(chart).convert("RGB"))
    height = picture.shape[0]
    assert picture.shape[1] == len(FRACTIONS)  # one column per channel, channel 0 on the left
    blue = (picture[:-1] == BAR_BLUE).all(axis=2)  # the last row is the baseline
    # bar height in pixels: the fraction of the height - 1 rows above the baseline, rounded
    heights = np.floor(expected * (height - 1) + 0.5).astype(int)
    assert len(set(heights.tolist())) == len(FRACTIONS)  # distinct: a shifted bar cannot match
    for column, bar in enumerate(heights):
        assert blue[:, column].sum() == bar, f"channel {column}"
        assert blue[height - 1 - bar :, column].all()  # drawn up from the baseline
    assert chart.data_uri in report.to_html()  # the page shows this very picture


class FixedAnswers(nn.Module):
    """The logits are the input's per-channel means: each input carries its own prediction."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(classes, classes, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(classes)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _svg_cells(svg: str, count: int) -> tuple[np.ndarray, list[str], list[str]]:
    """The count x count grid of numbers written in the heatmap's cells (0 where none is
    written), by the cells' own positions; the row labels top to bottom and the column labels
    left to right."""
    rect = r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"'
    cells = [(float(x), float(y), float(w)) for x, y, w, h in re.findall(rect, svg) if w == h]
    xs = sorted({x for x, _, _ in cells})
    ys = sorted({y for _, y, _ in cells})
    assert len(xs) == len(ys) == count and len(cells) == count * count
    size = cells[0][2]
    grid = np.zeros((count, count), dtype=int)
    for x, y, number in re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>(\d+)</text>', svg):
        column = next(i for i, left in enumerate(xs) if left <= float(x) <= left + size)
        row = next(i for i, top in enumerate(ys) if top <= float(y) <= top + size)
        grid[row, column] = int(number)
    rows = re.findall(r'<text x="[\d.]+" y="([\d.]+)" text-anchor="end"[^>]*>([^<]*)</text>', svg)
    rotated = r'<text transform="translate\(([\d.]+),[\d.]+\) rotate\(-90\)"[^>]*>([^<]*)</text>'
    columns = re.findall(rotated, svg)
    return (grid, [text for _, text in sorted(rows, key=lambda r: float(r[0]))],
            [text for _, text in sorted(columns, key=lambda c: float(c[0]))])


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions() -> None:
    names = ["cat", "dog", "emu"]
    truth = [0, 0, 0, 0, 1, 1, 1, 2, 2, 0]
    predicted = [1, 1, 1, 0, 0, 2, 2, 2, 2, 2]  # cat->dog x3, dog->cat x1, dog->emu x2, cat->emu x1
    images = torch.zeros(len(truth), len(names), 4, 4)
    images[torch.arange(len(truth)), torch.tensor(predicted)] = 1.0
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, (np.array(truth), np.array(predicted)), 1)
    assert not np.array_equal(expected, expected.T)  # a transposed matrix cannot pass

    report = reportgen.generate_report(FixedAnswers(3), images, device="cpu", targets=truth,
                                       labels=names, max_size_mb=0)
    pc = report.model.insight.per_class
    assert pc.confusion_classes == (0, 1, 2)
    assert np.array_equal(np.array(pc.confusion), expected)
    assert pc.correct == int(np.trace(expected)) and pc.labelled == len(truth)
    pairs = [(t, p, int(expected[t, p])) for t in range(3) for p in range(3) if expected[t, p]]
    assert sorted(pc.confusion_pairs) == pairs

    svg = decode_data_uri(pc.chart.data_uri).decode("utf-8")
    grid, row_labels, column_labels = _svg_cells(svg, 3)
    assert row_labels == column_labels == names
    assert np.array_equal(grid, expected)
    assert pc.chart.data_uri in report.to_html()
