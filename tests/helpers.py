"""Decoding helpers: turn report pictures back into arrays so tests can check pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from reportgen.grids import decode_data_uri
from reportgen.report_model import EncodedImage, TileGrid


def decode(image: EncodedImage) -> Image.Image:
    return Image.open(io.BytesIO(decode_data_uri(image.data_uri)))


MAGENTA = (255, 0, 255)  # documented colour of flat (zero-range or non-finite) tiles


def tile_pixels(grid: TileGrid, tile: int, *, rgb: bool = False) -> np.ndarray:
    """The raw pixels of tile number `tile`: palette indices (P images) or RGB values; with
    `rgb`, the colours a reader sees (palette looked up).

    Found by the documented layout, worked out here rather than asked of reportgen.grids: tiles
    row by row, `padding` pixels around and between them."""
    image = decode(grid.image)
    picture = np.asarray(image.convert("RGB") if rgb else image)
    pad = grid.padding
    assert picture.shape[:2] == (pad + grid.rows * (grid.tile_height + pad),
                                 pad + grid.columns * (grid.tile_width + pad))
    row, column = divmod(tile, grid.columns)
    y, x = pad + row * (grid.tile_height + pad), pad + column * (grid.tile_width + pad)
    return picture[y : y + grid.tile_height, x : x + grid.tile_width]


def run_main_pass(model, names, images, *, batch_size, collectors=(), labels=None, **activation_options):
    """The engine's main pass over `images` (a (N, ...) tensor) on the CPU, observing the raw
    outputs of the modules `names` with an `ActivationCollector(**activation_options)` (when any
    option is given) and `collectors`; `labels`: the inputs' true classes. Returns (activation
    collector or None, the pass)."""
    import torch

    from reportgen.collectors.activations import ActivationCollector
    from reportgen.engine.main_pass import MainPass
    from reportgen.inputs import from_tensor
    from reportgen.sites import RAW_BY_REQUEST

    activations = ActivationCollector(**activation_options) if activation_options else None
    riders = [*([activations] if activations is not None else []), *collectors]
    main = MainPass(model, riders, observed=list(names), plan=None, raw_reason=RAW_BY_REQUEST)
    inputs = from_tensor(images)
    if labels is not None:
        inputs.labels = list(labels)
    with torch.inference_mode():
        main.run(inputs, device=torch.device("cpu"), dtype=torch.float32, batch_size=batch_size)
    return activations, main
