"""Snapshot of the report model (pdoc's habit): the numbers and pictures of a tiny report.

Pictures are compared by a hash of their decoded pixels (not PNG bytes, which depend on the
zlib version); floats are rounded to 6 significant digits; library versions are masked.
Regenerate after an intended change with:

    REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_snapshot.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.grids import decode_data_uri
from reportgen.report_model import to_plain
from tests.fixtures.models import tiny_cnn, tiny_inputs

GOLD = Path(__file__).parent / "gold" / "tiny_cnn_report_model.json"


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        if "data_uri" in value and value["data_uri"].startswith("data:image/svg+xml"):
            # SVG charts are text written with fixed precision: their bytes are the snapshot
            return {"mode": "svg", "width": value["width"], "height": value["height"],
                    "svg_sha256": hashlib.sha256(decode_data_uri(value["data_uri"])).hexdigest()}
        if "data_uri" in value:
            picture = Image.open(io.BytesIO(decode_data_uri(value["data_uri"])))
            pixels = np.asarray(picture)
            return {"mode": picture.mode, "width": value["width"], "height": value["height"],
                    "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}
        return {k: normalise(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def current_snapshot() -> dict[str, Any]:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(3), device="cpu", labels=list("abcde"))
    plain = to_plain(report.model, images=True)
    plain["run"].update(torch_version="<torch>", torchvision_version="<torchvision>",
                        reportgen_version="<reportgen>", date="<date>")
    return normalise(plain)


def test_report_model_matches_gold() -> None:
    snapshot = current_snapshot()
    text = json.dumps(snapshot, indent=1, sort_keys=True, allow_nan=False) + "\n"
    if os.environ.get("REPORTGEN_UPDATE_GOLD"):
        GOLD.parent.mkdir(parents=True, exist_ok=True)
        GOLD.write_text(text, encoding="utf-8")
        pytest.skip("gold file regenerated")
    assert GOLD.exists(), "no gold file: run REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_snapshot.py"
    gold = json.loads(GOLD.read_text(encoding="utf-8"))
    assert snapshot == gold
