"""Dataset-wide top activations: for each shown channel, the k inputs that excite it most.

The ranking itself runs inside the capture hook (`capture._Accumulator._update_insight`): per
channel it keeps the top-k (max activation, input index, peak cell) on the device, so memory is
flat in the number of inputs. This module turns those winners into what the report shows, the
Zeiler & Fergus view: for each winner, the input window that the peak cell sees, cropped from the
input (reloaded with `InputSet.load(i)`, each winner once) and scaled to `CROP_SIZE` pixels.

The window of a layer's cell (its receptive field, stride and first pixel) comes from
`geometry.py`, recorded with the summary's forward pass: exact for any kernel, stride, padding and
dilation, through branches and residual adds; a layer whose geometry cannot be known gets no
window (and the page says why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import CapturedLayer, Winners
from reportgen.devices import one_cpu_thread
from reportgen.geometry import Geometry, unknown
from reportgen.inputs import InputSet
from reportgen.preprocess import seen_image
from reportgen.report_model import ChannelTop
from reportgen.summary import SummaryRow
from reportgen.tokens import token_geometry

CROP_SIZE = 24  # pixels a side of one crop in the strip
# Input pixels a crop shows at least, a side: a 3x3 window (conv1) scaled to 24 px is nine blocks
# that show nothing recognisable, so small windows are cut with context around them and outlined.
MIN_CROP_WINDOW = 12
CROP_LEGEND = (f"each crop is the input window the peak cell sees, scaled to {CROP_SIZE}x{CROP_SIZE} px (area "
               f"average when shrinking, nearest when growing); a window under {MIN_CROP_WINDOW} px a side is "
               f"cut with the pixels around it ({MIN_CROP_WINDOW} px a side, or the whole input if smaller) and "
               "the window outlined by a dotted black-and-white line")


class KeyedLayer(Protocol):
    """What `layer_geometry` reads of a layer call (a CapturedLayer, or capture's Winners)."""

    @property
    def key(self) -> str: ...

    @property
    def geometry_key(self) -> str: ...


def layer_geometry(rows: Sequence[SummaryRow], layers: Sequence[KeyedLayer],
                   input_spatial: Sequence[int] = ()) -> dict[str, Geometry]:
    """The geometry of each layer call (known or, with the reason, unknown), from the summary
    rows, keyed by the layer call. Its cells are those of its activation site: after a residual
    add that is the block output, whose window is the union of both branches' (a 1x1 shortcut
    conv alone sees far less), so the site's module call is looked up first. A transformer's
    token map (its site has a token grid) has the geometry of its grid on `input_spatial`
    (`tokens.token_geometry`): the flow of tokens through reshapes is not followed."""
    recorded = {row.name: row.geometry for row in rows}
    missing = unknown("the forward pass was not followed (no summary of it)")
    found = {}
    for layer in layers:
        site = getattr(layer, "site", None)
        if site is not None and site.grid:
            found[layer.key] = token_geometry(site.grid, site.mixing, input_spatial)
            continue
        found[layer.key] = (recorded.get(getattr(layer, "geometry_key", "") or layer.key)
                            or recorded.get(layer.key) or missing)
    return found


def windows(peaks: np.ndarray, geometry: Geometry, input_spatial: Sequence[int]) -> np.ndarray:
    """(..., 4) boxes (top, left, bottom, right) in input pixels of the windows that peak cells
    (..., dims) of a layer with known `geometry` see, clipped to the input; a 1D window is one row
    high."""
    start = np.asarray(geometry.first) + peaks * np.asarray(geometry.stride)
    size = np.asarray(geometry.receptive_field)
    low = np.maximum(start, 0)
    high = np.minimum(start + size, np.asarray(input_spatial, dtype=int))
    if peaks.shape[-1] == 1:
        zero = np.zeros_like(low[..., 0])
        return np.stack([zero, low[..., 0], zero + 1, high[..., 0]], axis=-1)
    return np.stack([low[..., 0], low[..., 1], high[..., 0], high[..., 1]], axis=-1)


def window(peak: Sequence[int], geometry: Geometry, input_spatial: Sequence[int]) -> tuple[int, ...]:
    """The box of one peak cell (see `windows`)."""
    return tuple(int(v) for v in windows(np.asarray(peak)[None], geometry, input_spatial)[0])


def unravel(position: int, spatial: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unravel_index(int(position), tuple(int(s) for s in spatial)))


def channel_tops(
    layer: CapturedLayer,
    names: Sequence[str],
    geometry: Geometry | None,
    input_spatial: Sequence[int],
) -> tuple[ChannelTop, ...]:
    """The kept winners of every shown channel, in rank order (empty entries dropped)."""
    if layer.top_scores is None or layer.top_inputs is None or layer.top_positions is None:
        return ()
    scores, indices, positions = layer.top_scores, layer.top_inputs, layer.top_positions
    spatial = tuple(int(d) for d in layer.spatial_shape)
    located = positions >= 0
    # peaks and windows of all entries at once (numpy), then plain values per entry
    peaks = np.stack(np.unravel_index(np.where(located, positions, 0), spatial), axis=-1) if spatial else None
    boxes = None
    if peaks is not None and geometry is not None and geometry.known and len(spatial) == len(input_spatial):
        boxes = windows(peaks, geometry, input_spatial)
    score_rows, index_rows = scores.tolist(), indices.tolist()
    peak_rows = peaks.tolist() if peaks is not None else None
    box_rows = boxes.tolist() if boxes is not None else None
    located_rows = located.tolist()
    tops = []
    for row, channel in enumerate(layer.channels_shown[: scores.shape[0]]):
        # -inf scores: fewer inputs than k
        kept = [column for column, score in enumerate(score_rows[row]) if math.isfinite(score) or score > 0]
        found = [located_rows[row][column] for column in kept]
        tops.append(ChannelTop(
            channel=int(channel),
            inputs=tuple(index_rows[row][column] for column in kept),
            names=tuple(names[i] if 0 <= i < len(names) else str(i) for i in (index_rows[row][c] for c in kept)),
            scores=tuple(score_rows[row][column] for column in kept),
            peaks=tuple(tuple(peak_rows[row][c]) if ok and peak_rows is not None else ()
                        for c, ok in zip(kept, found)),
            boxes=tuple(tuple(box_rows[row][c]) if ok and box_rows is not None else (0, 0, 0, 0)
                        for c, ok in zip(kept, found)),
        ))
    return tuple(tops)


def display_image(sample: torch.Tensor, inputs: InputSet) -> torch.Tensor | None:
    """(3, H, W) float in [0, 1]: the input as the model saw it, de-normalised, like thumbnails."""
    image = seen_image(sample, inputs.preprocessing)
    if image is None:
        return None
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def crop(image: torch.Tensor, box: tuple[int, ...], size: int = CROP_SIZE) -> np.ndarray:
    """The box cut from a (3, H, W) [0, 1] image, scaled to size x size, as uint8 (size, size, 3):
    area-averaged when the box is at least `size` a side, else nearest-neighbour."""
    return _scaled([image], [box], size)[0]


def _scaled(images: Sequence[torch.Tensor], boxes: Sequence[Sequence[int]], size: int) -> list[np.ndarray]:
    """`crop` of each (image, box) pair; boxes of one size are scaled in one call (thousands of
    crops are cut in dataset mode, and one call per crop cost more than the scaling)."""
    pieces = []
    for image, (top, left, bottom, right) in zip(images, boxes):
        pieces.append(image[:, top:max(bottom, top + 1), left:max(right, left + 1)])
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for index, piece in enumerate(pieces):
        by_shape.setdefault((tuple(piece.shape), piece.dtype), []).append(index)
    scaled: list[np.ndarray] = [np.empty(0, dtype=np.uint8)] * len(pieces)
    for (shape, _), members in by_shape.items():
        stack = torch.stack([pieces[i] for i in members])
        if shape[1] >= size and shape[2] >= size:
            # interpolate(mode="area") is adaptive_avg_pool2d, called here without its Python checks
            pooled = F.adaptive_avg_pool2d(stack, (size, size))
        else:
            pooled = F.interpolate(stack, size=(size, size), mode="nearest")
        values = (np.clip(pooled.numpy(), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        for row, index in enumerate(members):
            scaled[index] = values[row].copy()
    return scaled


def context_box(box: Sequence[int], height: int, width: int, minimum: int = MIN_CROP_WINDOW) -> tuple[int, ...]:
    """`box` (top, left, bottom, right) widened to at least `minimum` pixels a side (or the whole
    image where it is smaller), centred on the box and shifted to stay inside the image."""
    widened = []
    for low, high, limit in ((box[0], box[2], height), (box[1], box[3], width)):
        size = min(max(high - low, minimum), limit)
        start = min(max((low + high - size) // 2, 0), limit - size)
        widened.append((start, start + size))
    return widened[0][0], widened[1][0], widened[0][1], widened[1][1]


def crop_in_context(image: torch.Tensor, box: Sequence[int], size: int = CROP_SIZE) -> np.ndarray:
    """Like `crop`, but a window smaller than `MIN_CROP_WINDOW` is cut with the pixels around it
    (`context_box`) and outlined (1 px, pixels alternately white and black, so the line shows on
    any picture), so a 3x3 window shows where in the input it sits."""
    return crops_in_context([image], [box], size)[0]


def crops_in_context(images: Sequence[torch.Tensor], boxes: Sequence[Sequence[int]],
                     size: int = CROP_SIZE) -> list[np.ndarray]:
    """`crop_in_context` of each (image, box) pair, scaled together (`_scaled`)."""
    exact, wide_boxes = [], []
    for image, box in zip(images, boxes):
        top, left, bottom, right = (int(v) for v in box)
        bottom, right = max(bottom, top + 1), max(right, left + 1)
        exact.append((top, left, bottom, right))
        wide_boxes.append(context_box((top, left, bottom, right), int(image.shape[1]), int(image.shape[2])))
    pictures = _scaled(images, wide_boxes, size)
    for picture, wide, (top, left, bottom, right) in zip(pictures, wide_boxes, exact):
        if wide == (top, left, bottom, right):
            continue
        scale_y = size / (wide[2] - wide[0])
        scale_x = size / (wide[3] - wide[1])
        y0, x0 = int((top - wide[0]) * scale_y), int((left - wide[1]) * scale_x)
        y1 = min(size, math.ceil((bottom - wide[0]) * scale_y)) - 1
        x1 = min(size, math.ceil((right - wide[1]) * scale_x)) - 1
        ring = np.zeros((size, size), dtype=bool)
        ring[[y0, y1], x0:x1 + 1] = True
        ring[y0:y1 + 1, [x0, x1]] = True
        rows, columns = np.nonzero(ring)
        picture[rows, columns] = np.where(((rows + columns) % 2 == 0)[:, None], 255, 0).astype(np.uint8)
    return pictures


class CropCollector:
    """Crops of the top-k winners, cut while their batch is still in memory (dataset mode).

    After each batch, every winner that entered a drawn channel's top-k in it gets its crop cut
    from that batch; crops of inputs that have since left every top-k are dropped, so memory
    stays (layers x channels x k) crops however many inputs run. Reloading the winners after
    the pass instead decoded and preprocessed nearly every input a second time (249 of 256 for
    resnet18: 1.4 s). Any winner without a crop here is reloaded by `collect_crops`.
    """

    def __init__(self, model: nn.Module, inputs: InputSet, *, channels: int, size: int = CROP_SIZE) -> None:
        self.model = model
        self.inputs = inputs
        self.channels = channels
        self.size = size
        # (layer key, row, input) -> (its window in the input, the crop)
        self.crops: dict[tuple[str, int, int], tuple[tuple[int, ...], np.ndarray]] = {}
        self._geometry: dict[str, Geometry] | None = None
        self._input_spatial: tuple[int, ...] = ()

    def update(self, winners: Sequence[Winners], rows: Sequence[SummaryRow], batch: torch.Tensor, start: int) -> None:
        """Cut the crops of winners from `batch` (inputs start..), drop those no longer winning."""
        with one_cpu_thread():  # thousands of tiny pooling ops (see `one_cpu_thread`)
            self._update(winners, rows, batch, start)

    def _update(self, winners: Sequence[Winners], rows: Sequence[SummaryRow], batch: torch.Tensor, start: int) -> None:
        spatial = tuple(int(d) for d in batch.shape[2:])
        if self._geometry is None:  # the first batch fixes it, as `layer_geometry` does after the pass
            self._input_spatial = spatial
            self._geometry = layer_geometry(rows, winners, spatial) if len(spatial) == 2 else {}
        stop = start + int(batch.shape[0])
        images: dict[int, torch.Tensor | None] = {}
        winning: set[tuple[str, int, int]] = set()
        wanted: list[tuple[tuple[str, int, int], torch.Tensor, tuple[int, ...]]] = []  # (entry, image, box)
        for found in winners:
            geometry = self._geometry.get(found.key)
            for row, (indices, positions) in enumerate(zip(found.inputs.tolist(), found.positions.tolist())):
                for index, position in zip(indices, positions):
                    entry = (found.key, row, index)
                    winning.add(entry)
                    if entry in self.crops or not start <= index < stop or position < 0 or geometry is None \
                            or not geometry.known or spatial != self._input_spatial:
                        continue
                    if index not in images:
                        images[index] = display_image(batch[index - start], self.inputs)
                    image = images[index]
                    if image is not None:
                        wanted.append((entry, image, window(unravel(position, found.spatial_shape), geometry, spatial)))
        pictures = crops_in_context([image for _, image, _ in wanted], [box for _, _, box in wanted], self.size)
        for (entry, _, box), picture in zip(wanted, pictures):
            self.crops[entry] = (box, picture)
        for entry in [e for e in self.crops if e not in winning]:
            del self.crops[entry]


def _cut(box: Sequence[int]) -> bool:
    """Whether a (top, left, bottom, right) box holds any pixel."""
    return box[2] > box[0] and box[3] > box[1]


def collect_crops(
    tops: dict[str, tuple[ChannelTop, ...]],
    inputs: InputSet,
    *,
    channels: int,
    size: int = CROP_SIZE,
    known: dict[tuple[str, int, int], tuple[tuple[int, ...], np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Per layer key, (channels, k, size, size, 3) uint8 crops of the first `channels` channels.

    Crops in `known` (a `CropCollector`'s, keyed by layer key, row and input, with the window
    they were cut from) are used when their window is the winner's. Each other winning input is loaded once (sorted by index), all its crops cut, and then
    dropped, so at most one full input is in memory at a time. Missing entries stay white.
    """
    known = known or {}
    wanted: dict[int, list[tuple[str, int, int, tuple[int, ...]]]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for key, layer_tops in tops.items():
        chosen = layer_tops[:channels]
        k = max((len(t.inputs) for t in chosen), default=0)
        if not chosen or k == 0 or not any(_cut(box) for t in chosen for box in t.boxes):
            continue  # no window known (the page says why): no strip of blank crops
        shapes[key] = (len(chosen), k)
    strips = {key: np.full((rows, k, size, size, 3), 255, dtype=np.uint8) for key, (rows, k) in shapes.items()}
    for key, layer_tops in tops.items():
        for row, channel_top in enumerate(layer_tops[: shapes.get(key, (0, 0))[0]]):
            for column, (index, box) in enumerate(zip(channel_top.inputs, channel_top.boxes)):
                if not _cut(box):
                    continue
                cut = known.get((key, row, index))
                if cut is not None and cut[0] == tuple(box) and cut[1].shape == (size, size, 3):
                    strips[key][row, column] = cut[1]
                else:
                    wanted.setdefault(index, []).append((key, row, column, box))
    for index in sorted(wanted):
        image = display_image(inputs.load(index), inputs)
        if image is None:
            continue
        for key, row, column, box in wanted[index]:
            strips[key][row, column] = crop_in_context(image, box, size)
    return strips
