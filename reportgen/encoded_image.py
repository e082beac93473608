"""`EncodedImage`: a picture ready to inline, the one type both report models hold.

Its own module, below `report_model.py` and `impact_model.py`, so that neither has to import the
other back for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodedImage:
    """A PNG (or SVG) ready to inline as a data: URI."""

    data_uri: str
    width: int
    height: int
    sha256: str
    byte_size: int
