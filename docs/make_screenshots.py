"""Render the demo report and photograph it in headless Chromium, light and dark.

    PYTHONPATH=. python docs/make_screenshots.py [--fragment ANCHOR]
    PYTHONPATH=. python docs/make_screenshots.py --compare      # `reportgen demo --compare`, light
    PYTHONPATH=. python docs/make_screenshots.py --vit          # torchvision's vit_b_16, light

Writes docs/screenshot-light.png and docs/screenshot-dark.png (the README shows the light one);
with --compare, docs/screenshot-compare-light.png (the README's compare section shows it); with
--vit, docs/screenshot-vit-light.png: torchvision's vit_b_16 with random weights on two drawn
scenes (the README's model families section shows it).
Needs Debian's /usr/bin/chromium and the playwright package; no network. The date is pinned
(SOURCE_DATE_EPOCH) so the pictures change only when the report does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 860}


def render_demo(path: Path, *extra: str) -> None:
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    sys.path.insert(0, str(HERE.parent))
    from reportgen.cli import main

    code = main(["demo", *extra, "-o", str(path), "-q", "--device", "cpu"])
    if code != 0:
        raise SystemExit(f"reportgen demo failed with exit status {code}")


def scene(path: Path, seed: int) -> None:
    """A 224x224 picture of a few coloured discs and bars on a soft gradient: shapes a
    random-weight ViT's token maps visibly follow (no photo ships with the project)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 190, 224, dtype=np.float32)
    background = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (224, 1)), np.tile(ramp[:, None], (1, 224))], -1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y, r = (int(v) for v in rng.integers((30, 30, 14), (194, 194, 40)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 3, x + r, y + r // 3), fill=colour)
    image.save(path)


def render_vit(path: Path) -> None:
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    sys.path.insert(0, str(HERE.parent))
    from reportgen.cli import main

    pictures = [path.parent / f"scene-{k}.png" for k in (1, 2)]
    for seed, picture in enumerate(pictures, start=1):
        scene(picture, seed)
    code = main(["torchvision:vit_b_16", *map(str, pictures), "-o", str(path), "-q", "--device", "cpu"])
    if code != 0:
        raise SystemExit(f"reportgen torchvision:vit_b_16 failed with exit status {code}")


def shoot(page_path: Path, fragment: str, out_dir: Path, *, name: str = "screenshot",
          schemes: tuple[str, ...] = ("light", "dark")) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for scheme in schemes:
                context = browser.new_context(
                    color_scheme=scheme, viewport=VIEWPORT, device_scale_factor=1
                )
                page = context.new_page()
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                # default: the first layer section, filters and feature maps side by side
                page.evaluate(
                    """anchor => {
                  const target = anchor ? document.getElementById(anchor)
                                        : document.querySelector('details.layer');
                  if (target.tagName === 'DETAILS') { target.open = true; }
                  target.scrollIntoView({block: 'start', behavior: 'instant'});
                }""",
                    fragment,
                )
                # lazy pictures of collapsed sections never load, so wait only for those on screen
                page.evaluate(
                    "() => Promise.all(Array.from(document.images).filter(i => i.checkVisibility())"
                    ".map(i => { i.loading = 'eager'; return i.decode().catch(() => 0); }))"
                )
                target = out_dir / f"{name}-{scheme}.png"
                page.screenshot(path=str(target))
                written.append(target)
                context.close()
        finally:
            browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fragment", default="", help="scroll to this anchor (default: the first layer section)"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for the PNGs (default: docs/)"
    )
    parser.add_argument("--compare", action="store_true", help="photograph `reportgen demo --compare` instead")
    parser.add_argument("--vit", action="store_true", help="photograph a report of torchvision's vit_b_16 instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "demo-report.html"
        if args.vit:
            render_vit(page_path)
            shots = shoot(page_path, args.fragment or "layer-encoder.layers.encoder_layer_3", args.out,
                          name="screenshot-vit", schemes=("light",))
        elif args.compare:
            render_demo(page_path, "--compare")
            shots = shoot(page_path, args.fragment or "overview", args.out, name="screenshot-compare",
                          schemes=("light",))
        else:
            render_demo(page_path)
            shots = shoot(page_path, args.fragment, args.out)
        for path in shots:
            print(path)


if __name__ == "__main__":
    main()
