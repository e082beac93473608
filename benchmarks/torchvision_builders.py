"""Every builder in torchvision.models (and .detection, .segmentation, .video, .quantization,
.optical_flow) through the whole CLI, with random weights and no network: one noise image of
224x224, or for video models one animated GIF of 16 frames of 112x112. Prints a markdown table:
builder, family, outcome, seconds, layers visualised, page size (and the error line when a
builder is refused).

    python benchmarks/torchvision_builders.py                   # all but the largest
    python benchmarks/torchvision_builders.py --only 'vit_*'    # a glob
    python benchmarks/torchvision_builders.py --all             # the largest too (hours on 2 cores)

Each builder runs in its own process, one at a time, with a time limit (--timeout, default
600 s). Not a timed test: CPU times depend on the machine.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# too large for a 2-core CPU in reasonable time (run with --all)
LARGEST = ("vit_h_14", "vit_l_16", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "swin3d_s", "swin3d_b")


def family(name: str) -> str:
    from torchvision import models

    module = models.get_model_builder(name).__module__
    for kind in ("detection", "segmentation", "video", "quantization", "optical_flow"):
        if f".{kind}." in module:
            return kind
    return "classification"


def inputs(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image = folder / "noise.png"
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
    clip = folder / "clip.gif"
    frames = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(16)]
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return image, clip


def run(name: str, kind: str, source: Path, folder: Path, timeout: float) -> dict[str, object]:
    out = folder / f"{name}.html"
    argv = [sys.executable, "-m", "reportgen", f"torchvision:{name}", str(source), "--device", "cpu", "-q",
            "-o", str(out), "--json", str(out.with_suffix(".json"))]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "family": kind, "outcome": f"over {timeout:g} s", "seconds": timeout}
    seconds = time.perf_counter() - started
    row: dict[str, object] = {"name": name, "family": kind, "seconds": seconds}
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        row["outcome"] = f"exit {done.returncode}: {lines[-1] if lines else ''}"
        return row
    report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    row.update(outcome="report", layers=len(report.get("visualized", [])), megabytes=out.stat().st_size / 1e6)
    out.unlink()
    out.with_suffix(".json").unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*", help="a glob of builder names")
    parser.add_argument("--all", action="store_true", help="also the largest builders: " + ", ".join(LARGEST))
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    from torchvision import models

    names = [n for n in sorted(models.list_models()) if fnmatch.fnmatch(n, args.only)]
    skipped = [n for n in names if n in LARGEST and not args.all]
    names = [n for n in names if n not in skipped]
    print("| builder | family | outcome | seconds | layers visualised | page MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="reportgen-builders-") as tmp:
        folder = Path(tmp)
        image, clip = inputs(folder)
        rows = []
        for name in names:
            kind = family(name)
            row = run(name, kind, clip if kind == "video" else image, folder, args.timeout)
            rows.append(row)
            print(f"| {name} | {kind} | {row['outcome']} | {row['seconds']:.1f} | {row.get('layers', '')} | "
                  + (f"{row['megabytes']:.2f}" if "megabytes" in row else "") + " |", flush=True)
    reports = sum(row["outcome"] == "report" for row in rows)
    print(f"\n{reports} of {len(rows)} builders tried write a report; not tried: {', '.join(skipped) or 'none'} "
          f"(of {len(names) + len(skipped)} builders)")


if __name__ == "__main__":
    main()
