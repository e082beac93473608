"""Colour lookup tables for palette-mode PNGs, precomputed so rendering never imports matplotlib.

A table has 256 RGB entries: 0..253 are the colour ramp (LEVELS), 254 is padding between tiles
(a separator colour outside the ramp, so a tile's edge never reads as a level), 255 marks flat
tiles (zero range, NaN or Inf). `python -m reportgen.palettes` regenerates
`data/palettes.json` from matplotlib's colormaps (matplotlib costs ~0.5 s to import, which is a
tenth of a whole small report, so it is not imported at run time).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

# Tiles use 254 colour levels (0..253); 254 is padding and 255 marks flat tiles, so one
# palette-mode PNG shows all three at one byte a pixel.
LEVELS = 254
PAD_INDEX = 254
FLAT_INDEX = 255

# Separators between tiles: white was level 253 of gray (and next to RdBu_r's middle), so a
# bright tile edge merged with its border. Each ramp gets a colour at least ~80 RGB units from
# every one of its levels (tests/test_pixels.py checks it against matplotlib's own colormaps).
SEPARATOR_RGB = {
    "viridis": (128, 128, 128),
    "RdBu_r": (128, 128, 128),
    "gray": (64, 128, 224),
}
SEPARATOR_NAMES = {(128, 128, 128): "mid-gray", (64, 128, 224): "blue"}
FLAT_RGB = (255, 0, 255)  # magenta never appears in the ramps used, so a flat tile stands out
COLORMAPS = ("viridis", "gray", "RdBu_r")


@lru_cache(maxsize=None)
def palette(name: str) -> bytes:
    """768 bytes for PIL's putpalette: the colormap's ramp plus the padding and flat colours."""
    table = _load_tables()[name]
    entries = np.zeros((256, 3), dtype=np.uint8)
    entries[:LEVELS] = np.asarray(table, dtype=np.uint8)
    entries[PAD_INDEX] = SEPARATOR_RGB[name]
    entries[FLAT_INDEX] = FLAT_RGB
    return entries.tobytes()


def separator_note(name: str) -> str:
    """The legend's words for the lines between tiles on colormap `name`."""
    return f"{SEPARATOR_NAMES[SEPARATOR_RGB[name]]} lines between tiles (a colour outside the {name} scale)"


@lru_cache(maxsize=1)
def _load_tables() -> dict[str, list[list[int]]]:
    text = resources.files("reportgen.data").joinpath("palettes.json").read_text(encoding="utf-8")
    tables: dict[str, list[list[int]]] = json.loads(text)
    return tables


def _generate() -> dict[str, list[list[int]]]:
    from matplotlib import colormaps

    positions = np.linspace(0.0, 1.0, LEVELS)
    return {
        name: (colormaps[name](positions)[:, :3] * 255 + 0.5).astype(int).tolist()
        for name in COLORMAPS
    }


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).with_name("data") / "palettes.json"
    target.write_text(json.dumps(_generate(), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {target}")
