"""The seeded input batch shared by FLOOR and the PNG files handed to reportgen.

    python benchmarks/inputs.py DIR N SIZE     # writes DIR/input_0000.png ... (N files)

`torch.manual_seed(1)` then `torch.rand(n, 3, size, size)`. Drawing the batch in chunks of B
from the same seed gives bit-identical values (CPU generator; checked with torch 2.14), so
floor.py --batch-size B walks through exactly the images written here without ever holding all
N of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INPUT_SEED = 1
MODEL_SEED = 0


def seeded_batches(n: int, size: int, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the seeded n x 3 x size x size batch in chunks of `batch_size` (default: all n)."""
    import torch

    step = batch_size or n
    torch.manual_seed(INPUT_SEED)
    for start in range(0, n, step):
        yield torch.rand(min(step, n - start), 3, size, size)


def write_pngs(directory: Path, n: int, size: int) -> list[Path]:
    """Write the seeded batch as 8-bit RGB PNGs named by index; return the paths in order."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    paths: list[Path] = []
    for batch in seeded_batches(n, size, batch_size=64):
        # round with +0.5 before the cast, as torchvision.utils.save_image does
        pixels = batch.mul(255).add_(0.5).clamp_(0, 255).byte().permute(0, 2, 3, 1).numpy()
        for image in pixels:
            path = directory / f"input_{len(paths):0{width}d}.png"
            Image.fromarray(image).save(path)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("size", type=int)
    args = parser.parse_args()
    write_pngs(args.directory, args.n, args.size)


if __name__ == "__main__":
    main()
