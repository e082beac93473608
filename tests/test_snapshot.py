"""Snapshot of the report model (pdoc's habit): the numbers and pictures of a tiny report.

The snapshot must hold on any CPU: conv and BLAS kernels differ in the last digits between
machines, so the comparison is by tolerance, not by bytes:

- floats: relative 1e-4, with an absolute floor of 1e-6 for values near 0;
- numbers inside strings (messages, SVG charts): the same tolerance, or one unit in the finer
  one's last printed decimal when that is larger (0.5751 vs 0.575 is one value rounded either
  side); integers in text are counts and must match;
- PNG pictures: decoded pixels (not PNG bytes, which depend on the zlib version) within one level.

Gold entries written before this comparison (`pixels_sha256`, `svg_sha256`) are compared by
hash. Library versions are masked. Regenerate after an intended change with:

    REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_snapshot.py
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
import zlib
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
REL_TOL = 1e-4
ABS_TOL = 1e-6
PIXEL_LEVELS = 1
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
MAX_REPORTED = 20


def normalise(value: Any) -> Any:
    """The report model as plain JSON values, with every picture reduced to its content."""
    if isinstance(value, dict):
        if "data_uri" in value and value["data_uri"].startswith("data:image/svg+xml"):
            text = decode_data_uri(value["data_uri"]).decode("utf-8")
            return {"mode": "svg", "width": value["width"], "height": value["height"], "svg": text}
        if "data_uri" in value:
            picture = Image.open(io.BytesIO(decode_data_uri(value["data_uri"])))
            pixels = np.ascontiguousarray(np.asarray(picture))
            return {"mode": picture.mode, "width": value["width"], "height": value["height"],
                    "pixels_shape": list(pixels.shape), "pixels_dtype": str(pixels.dtype),
                    "pixels_zlib": base64.b64encode(zlib.compress(pixels.tobytes(), 9)).decode("ascii")}
        return {k: normalise(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _pixels(entry: dict[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(entry["pixels_zlib"]))
    return np.frombuffer(raw, dtype=entry["pixels_dtype"]).reshape(entry["pixels_shape"])


def _close(actual: float, gold: float, unit: float = 0.0) -> bool:
    if math.isnan(actual) or math.isnan(gold):
        return math.isnan(actual) and math.isnan(gold)
    return math.isclose(actual, gold, rel_tol=REL_TOL, abs_tol=max(ABS_TOL, unit * (1 + 1e-9)))


def _last_digit_unit(text: str) -> float:
    """One unit in the last printed digit of a decimal as written ('0.575' -> 0.001); 0 for an
    integer, which is a count more often than a rounded value."""
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def _string_differs(actual: str, gold: str) -> bool:
    if actual == gold:
        return False
    if NUMBER.sub("#", actual) != NUMBER.sub("#", gold):
        return True
    pairs = zip(NUMBER.findall(actual), NUMBER.findall(gold))
    return not all(_close(float(a), float(g), min(_last_digit_unit(a), _last_digit_unit(g))) for a, g in pairs)


def _picture_differences(actual: dict[str, Any], gold: dict[str, Any], path: str) -> list[str]:
    if actual["mode"] == "svg":
        if "svg_sha256" in gold:  # gold written before the tolerant comparison
            same = hashlib.sha256(actual["svg"].encode("utf-8")).hexdigest() == gold["svg_sha256"]
            return [] if same else [f"{path}: SVG differs from the gold hash"]
        return [f"{path}: SVG differs beyond the tolerance"] if _string_differs(actual["svg"], gold["svg"]) else []
    pixels = _pixels(actual)
    if "pixels_sha256" in gold:  # gold written before the tolerant comparison
        same = hashlib.sha256(pixels.tobytes()).hexdigest() == gold["pixels_sha256"]
        return [] if same else [f"{path}: pixels differ from the gold hash"]
    expected = _pixels(gold)
    if pixels.shape != expected.shape:
        return [f"{path}: picture is {list(pixels.shape)}, gold {list(expected.shape)}"]
    worst = int(np.abs(pixels.astype(np.int64) - expected.astype(np.int64)).max(initial=0))
    return [f"{path}: pixels differ by up to {worst} levels"] if worst > PIXEL_LEVELS else []


def differences(actual: Any, gold: Any, path: str = "") -> list[str]:
    """Where `actual` and `gold` differ beyond the tolerances above (empty: they match)."""
    if isinstance(actual, dict) and isinstance(gold, dict):
        if "mode" in actual and ("pixels_zlib" in actual or "svg" in actual):
            meta = ("mode", "width", "height")
            if any(actual[k] != gold.get(k) for k in meta):
                return [f"{path}: picture {[actual[k] for k in meta]} vs gold {[gold.get(k) for k in meta]}"]
            return _picture_differences(actual, gold, path)
        if set(actual) != set(gold):
            return [f"{path}: keys {sorted(set(actual) ^ set(gold))} are in only one of the two"]
        return [d for key in sorted(actual) for d in differences(actual[key], gold[key], f"{path}.{key}")]
    if isinstance(actual, list) and isinstance(gold, list):
        if len(actual) != len(gold):
            return [f"{path}: {len(actual)} items, gold {len(gold)}"]
        return [d for i, (a, g) in enumerate(zip(actual, gold)) for d in differences(a, g, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(actual, float) or isinstance(gold, float):
        if isinstance(actual, numbers) and isinstance(gold, numbers) and not isinstance(actual, bool) \
                and not isinstance(gold, bool) and _close(float(actual), float(gold)):
            return []
        return [f"{path}: {actual!r} vs gold {gold!r}"]
    if isinstance(actual, str) and isinstance(gold, str):
        return [f"{path}: {actual!r} vs gold {gold!r}"] if _string_differs(actual, gold) else []
    return [] if actual == gold and type(actual) is type(gold) else [f"{path}: {actual!r} vs gold {gold!r}"]


def current_snapshot() -> dict[str, Any]:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(3), device="cpu", labels=list("abcde"))
    plain = to_plain(report.model, images=True)
    plain["run"].update(torch_version="<torch>", torchvision_version="<torchvision>",
                        reportgen_version="<reportgen>", date="<date>")
    return normalise(plain)


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    return current_snapshot()


def test_report_model_matches_gold(snapshot: dict[str, Any]) -> None:
    if os.environ.get("REPORTGEN_UPDATE_GOLD"):
        GOLD.parent.mkdir(parents=True, exist_ok=True)
        GOLD.write_text(json.dumps(snapshot, indent=1, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
        pytest.skip("gold file regenerated")
    assert GOLD.exists(), "no gold file: run REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_snapshot.py"
    found = differences(snapshot, json.loads(GOLD.read_text(encoding="utf-8")))
    assert not found, f"{len(found)} difference(s) from the gold file:\n" + "\n".join(found[:MAX_REPORTED])


def _map_floats(value: Any, change: Any) -> Any:
    if isinstance(value, dict):
        return {k: _map_floats(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_floats(v, change) for v in value]
    return change(value) if isinstance(value, float) else value


def _pictures(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        if "pixels_zlib" in value:
            return [value]
        return [p for v in value.values() for p in _pictures(v)]
    if isinstance(value, list):
        return [p for v in value for p in _pictures(v)]
    return []


def _with_pixels(entry: dict[str, Any], pixels: np.ndarray) -> None:
    entry["pixels_zlib"] = base64.b64encode(zlib.compress(np.ascontiguousarray(pixels).tobytes())).decode("ascii")


def test_floats_within_1e6_relative_pass_and_a_one_percent_change_fails(snapshot: dict[str, Any]) -> None:
    nudged = _map_floats(snapshot, lambda v: v * (1 + 1e-6) + 1e-9)
    assert _map_floats(snapshot, lambda v: v) != nudged  # the nudge did change the numbers
    assert differences(nudged, snapshot) == []
    changed = json.loads(json.dumps(snapshot))
    changed["predictions"][0]["top"][0]["probability"] *= 1.01
    found = differences(changed, snapshot)
    assert len(found) == 1 and found[0].startswith(".predictions[0].top[0].probability")


def test_pixels_within_one_level_pass_and_two_levels_fail(snapshot: dict[str, Any]) -> None:
    pictures = _pictures(snapshot)
    assert pictures, "the snapshot holds PNG pictures"
    nudged = json.loads(json.dumps(snapshot))
    for entry in _pictures(nudged):
        pixels = _pixels(entry).astype(np.int64)
        _with_pixels(entry, np.where(pixels < 128, pixels + 1, pixels - 1).astype(entry["pixels_dtype"]))
    assert differences(nudged, snapshot) == []
    changed = json.loads(json.dumps(snapshot))
    entry = _pictures(changed)[0]
    pixels = _pixels(entry).copy()
    pixels.flat[0] = pixels.flat[0] + 3 if pixels.flat[0] < 128 else pixels.flat[0] - 3
    _with_pixels(entry, pixels)
    found = differences(changed, snapshot)
    assert len(found) == 1 and "differ by up to 3 levels" in found[0]


def test_numbers_in_text_allow_last_digit_rounding_only() -> None:
    assert not _string_differs("Grad-CAM 0.5751 at x=12", "Grad-CAM 0.575 at x=12")
    assert not _string_differs("min -0.88307", "min -0.883071")
    assert not _string_differs("0.576", "0.575")  # 0.5755 rounded either side
    assert _string_differs("Grad-CAM 0.577 at x=12", "Grad-CAM 0.575 at x=12")
    assert _string_differs("3 dead channels", "4 dead channels")
    assert _string_differs("3 dead channels", "3 dead filters")


def test_gold_hashes_from_before_the_tolerant_comparison_are_exact(snapshot: dict[str, Any]) -> None:
    entry = _pictures(snapshot)[0]
    pixels = _pixels(entry)
    old = {k: entry[k] for k in ("mode", "width", "height")}
    old["pixels_sha256"] = hashlib.sha256(pixels.tobytes()).hexdigest()
    assert differences(entry, old) == []
    old["pixels_sha256"] = hashlib.sha256(pixels.tobytes() + b"x").hexdigest()
    assert differences(entry, old) != []
