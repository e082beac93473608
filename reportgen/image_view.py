"""How a picture is shown: its CSS size from its natural size, for every view module.

Below `view.py` and `impact_view.py` (which `view.py` imports), so neither imports the other back.
"""

from __future__ import annotations

from typing import Any

from reportgen.report_model import EncodedImage

GRID_DISPLAY_WIDTH = 320  # CSS px a grid is scaled up to (by whole factors, so pixels stay square)


def display_width(natural: int, target: int = GRID_DISPLAY_WIDTH) -> int:
    """Scale small pictures up by a whole factor (crisp pixels); never shrink large ones."""
    if natural <= 0:
        return target
    factor = max(1, target // natural)
    return natural * factor


def image_view(image: EncodedImage, target: int = GRID_DISPLAY_WIDTH) -> dict[str, Any]:
    width = display_width(image.width, target)
    return {
        "src": image.data_uri,
        "width": width,
        "height": round(image.height * width / max(image.width, 1)),
        "natural": f"{image.width}x{image.height}",
    }
