"""The classic tutorial way to look inside a CNN: one matplotlib figure per layer and per input.

    python benchmarks/classic_matplotlib.py MODEL IMAGE... [-o OUTDIR] [--size 224]

Loads the torchvision MODEL with random weights, loads the images with PIL and torchvision
transforms, registers a forward hook on every Conv2d, runs one forward pass, then
  * for every conv layer: an 8x8 `plt.subplots` grid of its first 64 filters (mean over input
    channels), one `imshow` per tile, saved as a PNG;
  * for every conv layer and every input: an 8x8 grid of the first 64 feature-map channels,
    one `imshow` per tile, saved as a PNG.
This is the baseline of target T3: reportgen must be at least 30x faster than this process.
Without -o the figures go to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

GRID = 8  # 8 x 8 tiles = the first 64 filters / channels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="torchvision model name, e.g. resnet18")
    parser.add_argument("images", nargs="+", type=Path, help="input image files")
    parser.add_argument("-o", "--output", type=Path, default=None, help="directory for the PNGs")
    parser.add_argument("--size", type=int, default=224, help="resize and center-crop to SIZE")
    return parser.parse_args()


def tile_grid(tiles: torch.Tensor, title: str, cmap: str) -> Figure:
    """One 8x8 figure with an imshow per tile, the way tutorials draw it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(GRID, GRID, figsize=(8, 8))
    for index, ax in enumerate(axes.flat):
        if index < len(tiles):
            ax.imshow(tiles[index].numpy(), cmap=cmap)
        ax.axis("off")
    fig.suptitle(title)
    return fig


def main() -> None:
    args = parse_args()
    start = time.perf_counter()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inputs import MODEL_SEED

    torch.manual_seed(MODEL_SEED)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    preprocess = transforms.Compose(
        [
            transforms.Resize(args.size),
            transforms.CenterCrop(args.size),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    batch = torch.stack([preprocess(Image.open(path).convert("RGB")) for path in args.images])

    convs = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
    }
    activations: dict[str, torch.Tensor] = {}

    def save_to(name: str) -> Callable[[torch.nn.Module, object, torch.Tensor], None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            activations[name] = output.detach()

        return hook

    handles = [module.register_forward_hook(save_to(name)) for name, module in convs.items()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()

    with tempfile.TemporaryDirectory(prefix="classic-") as scratch:
        out = args.output or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        figures = 0
        for layer_index, (name, conv) in enumerate(convs.items()):
            filters = conv.weight.detach()[: GRID * GRID].mean(dim=1)
            fig = tile_grid(filters, f"{name} filters", cmap="gray")
            fig.savefig(out / f"{layer_index:03d}_filters.png")
            plt.close(fig)
            figures += 1
            for image_index in range(len(args.images)):
                maps = activations[name][image_index, : GRID * GRID]
                fig = tile_grid(maps, f"{name} input {image_index}", cmap="viridis")
                fig.savefig(out / f"{layer_index:03d}_input{image_index:03d}.png")
                plt.close(fig)
                figures += 1
    elapsed = time.perf_counter() - start
    print(f"{figures} figures for {len(convs)} conv layers in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
