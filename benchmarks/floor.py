"""FLOOR: the least work any tool must do to show a CNN's activations on N inputs.

    python benchmarks/floor.py MODEL N SIZE [--device cpu|cuda] [--batch-size B]

Imports torch and torchvision, builds the torchvision MODEL with random weights
(`torch.manual_seed(0)`), draws the seeded N x 3 x SIZE x SIZE batch (`torch.manual_seed(1)`,
`torch.rand`, see inputs.py) and runs the forward pass under `torch.inference_mode()` in eval
mode: one forward, or ceil(N / B) forwards with --batch-size B. With --device cuda the model and
each batch live on the GPU and the process synchronizes before it exits.

Measured as a whole process by run.py; reportgen's targets are ratios to this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="torchvision model name, e.g. resnet50")
    parser.add_argument("n", type=int, help="number of inputs")
    parser.add_argument("size", type=int, help="input height and width in pixels")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="forward B inputs at a time"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("N, SIZE and --batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    # Arguments first, torch second: `floor.py --help` stays torch-free, which run.py's
    # --self-test uses to exercise the T6 (no torch on --help) check.
    args = parse_args(argv)

    import torch
    import torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inputs import MODEL_SEED, seeded_batches

    device = torch.device(args.device)
    torch.manual_seed(MODEL_SEED)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    with torch.inference_mode():
        for batch in seeded_batches(args.n, args.size, args.batch_size):
            model(batch.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
