"""Detection boxes and segmentation maps drawn on the inputs' thumbnails (numpy only).

- Detection: the kept boxes (collectors/dense.py: the highest scores) as 1 px outlines, colour
  by rank (`RANK_COLOURS`), the lowest score drawn first so the best box is on top. A box
  (x1, y1, x2, y2) in input pixels covers thumbnail columns floor(x1 * w / W) to
  ceil(x2 * w / W) - 1 (and rows alike), clipped to the thumbnail; the legend gives each box's
  label and score in the same colour.
- Segmentation: the argmax class map, nearest-neighbour onto the thumbnail (thumbnail pixel (i, j)
  takes map cell (floor((i + 0.5) * H / h), floor((j + 0.5) * W / w))), blended with the class's
  colour (`CLASS_COLOURS[class % 20]`): pixel = floor(thumb * (1 - a) + colour * a + 0.5),
  a = `SEGMENTATION_ALPHA`; the legend lists each class present with its fraction of the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from reportgen.analysis import DenseRecord, InputRecord
from reportgen.grids import embed, encode_png
from reportgen.report_model import DenseInput, DenseItem, DenseOutputs

# Tableau 20 (matplotlib's tab20): distinct, and none of them magenta
CLASS_COLOURS = (
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138),
    (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213), (140, 86, 75), (196, 156, 148),
    (227, 119, 194), (247, 182, 210), (127, 127, 127), (199, 199, 199), (188, 189, 34), (219, 219, 141),
    (23, 190, 207), (158, 218, 229),
)
RANK_COLOURS = ((255, 255, 0), (0, 255, 255), (255, 0, 0), (0, 255, 0), (255, 128, 0))  # best box first
SEGMENTATION_ALPHA = 0.5
MAX_LEGEND = 10  # classes listed per segmented input (the largest fractions)


def hex_colour(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def as_rgb(thumbnail: np.ndarray) -> np.ndarray:
    return np.repeat(thumbnail[..., None], 3, axis=2) if thumbnail.ndim == 2 else thumbnail.copy()


def box_pixels(box: Sequence[float], input_hw: Sequence[int], thumb_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) thumbnail pixels, inclusive, of a box in input pixels (module doc)."""
    (height, width), (thumb_h, thumb_w) = input_hw, thumb_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    left = min(max(math.floor(x1 * thumb_w / width), 0), thumb_w - 1)
    top = min(max(math.floor(y1 * thumb_h / height), 0), thumb_h - 1)
    right = min(max(math.ceil(x2 * thumb_w / width) - 1, left), thumb_w - 1)
    bottom = min(max(math.ceil(y2 * thumb_h / height) - 1, top), thumb_h - 1)
    return top, left, bottom, right


def draw_boxes(thumbnail: np.ndarray, boxes: np.ndarray, input_hw: Sequence[int]) -> np.ndarray:
    picture = as_rgb(thumbnail)
    for rank in range(len(boxes) - 1, -1, -1):
        top, left, bottom, right = box_pixels(boxes[rank], input_hw, picture.shape[:2])
        colour = np.asarray(RANK_COLOURS[rank % len(RANK_COLOURS)], dtype=np.uint8)
        picture[top, left:right + 1] = colour
        picture[bottom, left:right + 1] = colour
        picture[top:bottom + 1, left] = colour
        picture[top:bottom + 1, right] = colour
    return picture


def nearest(classes: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.floor((np.arange(height) + 0.5) * classes.shape[0] / height).astype(int)
    columns = np.floor((np.arange(width) + 0.5) * classes.shape[1] / width).astype(int)
    return classes[rows[:, None], columns[None, :]]


def draw_classes(thumbnail: np.ndarray, classes: np.ndarray) -> np.ndarray:
    picture = as_rgb(thumbnail).astype(np.float64)
    table = np.asarray(CLASS_COLOURS, dtype=np.float64)
    colour = table[nearest(classes, *picture.shape[:2]) % len(CLASS_COLOURS)]
    blended = picture * (1 - SEGMENTATION_ALPHA) + colour * SEGMENTATION_ALPHA
    return np.floor(blended + 0.5).clip(0, 255).astype(np.uint8)


def render_dense(records: Sequence[DenseRecord], inputs: Sequence[InputRecord], *, random_weights: bool,
                 label_of: Callable[[int | None], str | None]) -> DenseOutputs | None:
    """The report's block of detection or segmentation outputs (None when there are none)."""
    if not records:
        return None
    kind = records[0].kind
    by_index = {record.index: record for record in inputs}
    drawn = []
    for record in records:
        found = by_index.get(record.index)
        thumbnail = found.thumbnail if found is not None else None
        if record.kind == "detection":
            items = tuple(DenseItem(class_index=int(label), label=label_of(int(label)) or str(int(label)),
                                    value=float(score), colour=hex_colour(RANK_COLOURS[rank % len(RANK_COLOURS)]),
                                    box=tuple(round(float(v), 2) for v in box))
                          for rank, (box, score, label) in enumerate(zip(record.boxes, record.scores, record.labels)))
            picture = draw_boxes(thumbnail, record.boxes, found.shape[-2:]) \
                if thumbnail is not None and found is not None and len(found.shape) == 3 else None
            total = record.total_boxes
        else:
            ranked = sorted(record.fractions.items(), key=lambda item: (-item[1], item[0]))
            items = tuple(DenseItem(class_index=k, label=label_of(k) or str(k), value=fraction,
                                    colour=hex_colour(CLASS_COLOURS[k % len(CLASS_COLOURS)]))
                          for k, fraction in ranked[:MAX_LEGEND])
            picture = draw_classes(thumbnail, record.classes) \
                if thumbnail is not None and record.classes is not None else None
            total = len(record.fractions)
        image = embed(encode_png(picture), width=picture.shape[1], height=picture.shape[0]) \
            if picture is not None else None
        drawn.append(DenseInput(input_index=record.index, input_name=found.name if found is not None else str(record.index),
                                image=image, items=items, total=total))
    return DenseOutputs(kind=kind, note=_note(kind, random_weights), inputs=tuple(drawn))


def _note(kind: str, random_weights: bool) -> str:
    warning = (" The model has random weights: these outputs mean nothing about the inputs; they show what "
               "the model's untrained head produces." if random_weights else "")
    if kind == "detection":
        return (f"The model's detections: per input the {len(RANK_COLOURS)} highest-scoring boxes, outlined on the "
                "thumbnail in the colour of their legend entry (the best in yellow, drawn on top), with label and "
                f"score.{warning}")
    return (f"The model's segmentation: the class with the highest score at each pixel (argmax), blended at "
            f"{SEGMENTATION_ALPHA:.0%} over the thumbnail in the class's colour; the legend gives each class's "
            f"fraction of the pixels (the {MAX_LEGEND} largest).{warning}")
