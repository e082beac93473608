"""Decoding helpers: turn report pictures back into arrays so tests can check pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from reportgen.grids import GridLayout, decode_data_uri
from reportgen.report_model import EncodedImage, TileGrid


def decode(image: EncodedImage) -> Image.Image:
    return Image.open(io.BytesIO(decode_data_uri(image.data_uri)))


def tile_pixels(grid: TileGrid, tile: int) -> np.ndarray:
    """The raw pixels of tile number `tile`: palette indices (P images) or RGB values."""
    picture = np.asarray(decode(grid.image))
    layout = GridLayout(grid.columns, grid.rows, grid.tile_height, grid.tile_width, grid.padding)
    y, x = layout.origin(tile)
    return picture[y : y + grid.tile_height, x : x + grid.tile_width]
