"""Train the demo CNN on the procedural dataset and write the checkpoint ``reportgen demo`` ships.

Run from the repository root:

    python examples/train_demo_model.py                 # writes reportgen/data/demo_model.pt
    python examples/train_demo_model.py --epochs 3 --out /tmp/demo_model.pt
    python examples/train_demo_model.py --checkpoints reportgen/data   # also epochs 1, 6 and 12

It is seeded and uses deterministic algorithms, so a rerun on the same machine and library
versions reproduces the checkpoint; it takes a couple of minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
# Let the script run from a plain checkout, before `pip install -e .`.
sys.path.insert(0, str(REPO_ROOT))

from reportgen.demo import (  # noqa: E402 -- needs the sys.path line above
    DEMO_MEAN,
    DEMO_STD,
    build_demo_model,
    make_dataset,
)

DEFAULT_OUT = REPO_ROOT / "reportgen" / "data" / "demo_model.pt"
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 250
# Seeds for the train and test sets differ, so the test images are genuinely unseen.
TRAIN_SEED = 0
TEST_SEED = 1
TORCH_SEED = 0
BATCH_SIZE = 64
PEAK_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 5e-4
# The first layer is what a report shows as filters, so it gets special care. A few minutes of
# training cannot wash out PyTorch's random initialisation, and leftover init noise makes the
# filters look like static. Shrinking conv1's initial weights (harmless: bn1 normalises its
# output scale) lets the learned structure dominate, and a stronger weight decay there keeps
# removing the components no gradient supports, leaving smooth edge and colour detectors.
FIRST_LAYER_INIT_SCALE = 0.1
FIRST_LAYER_WEIGHT_DECAY = 0.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write the state_dict"
    )
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training set")
    parser.add_argument(
        "--checkpoints", type=Path, metavar="DIR",
        help="also save the weights after the first, the middle and the last epoch into DIR as "
             "demo_epochNN.pt (what `reportgen demo --compare` shows; the last equals --out)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    return args


def make_reproducible() -> None:
    torch.manual_seed(TORCH_SEED)
    torch.set_num_threads(2)
    # warn_only: should an op lack a deterministic kernel on some platform, train anyway.
    torch.use_deterministic_algorithms(True, warn_only=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """The model's input contract: per-channel (x - DEMO_MEAN) / DEMO_STD, done by the caller."""
    mean = torch.tensor(DEMO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, len(images), 512):
            logits = model(images[start : start + 512])
            correct += int((logits.argmax(dim=1) == labels[start : start + 512]).sum())
    finally:
        model.train(was_training)
    return correct / len(images)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    first_layer = model.get_parameter("features.conv1.weight")
    with torch.no_grad():
        first_layer.mul_(FIRST_LAYER_INIT_SCALE)
    others = [p for p in model.parameters() if p is not first_layer]
    return torch.optim.AdamW(
        [
            {"params": [first_layer], "weight_decay": FIRST_LAYER_WEIGHT_DECAY},
            {"params": others, "weight_decay": WEIGHT_DECAY},
        ],
        lr=PEAK_LEARNING_RATE,
    )


def checkpoint_epochs(epochs: int) -> tuple[int, ...]:
    """The epochs whose weights --checkpoints saves: the first, the middle and the last."""
    return tuple(sorted({1, (epochs + 1) // 2, epochs}))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
          checkpoints: Path | None = None) -> None:
    optimizer = make_optimizer(model)
    steps_per_epoch = (len(images) + BATCH_SIZE - 1) // BATCH_SIZE
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PEAK_LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_function = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(TORCH_SEED)
    model.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=shuffle)
        total_loss = 0.0
        for start in range(0, len(images), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        print(
            f"epoch {epoch:2d}/{epochs}: loss {total_loss / len(images):.4f}"
            f" ({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        if checkpoints is not None and epoch in checkpoint_epochs(epochs):
            save_atomically(model, checkpoints / f"demo_epoch{epoch:02d}.pt")


def save_atomically(model: nn.Module, out: Path) -> None:
    """Write a plain tensors-only state_dict; a crash mid-write never leaves a torn file."""
    state_dict = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    # Serialise in memory: torch.save names the zip's inner folder after the file it writes to,
    # so saving straight to a random temp name would make every run's bytes differ.
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getvalue())
        # mkstemp creates the file owner-only; the checkpoint ships as package data, so make it
        # readable like any other file in the package.
        os.chmod(temporary, 0o644)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    make_reproducible()

    train_images, train_labels = make_dataset(TRAIN_PER_CLASS, seed=TRAIN_SEED)
    test_images, test_labels = make_dataset(TEST_PER_CLASS, seed=TEST_SEED)
    train_images, test_images = normalise(train_images), normalise(test_images)
    print(f"data: {len(train_images)} train, {len(test_images)} test images", flush=True)

    model = build_demo_model()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters} parameters", flush=True)
    train(model, train_images, train_labels, args.epochs, args.checkpoints)

    train_accuracy = accuracy(model, train_images, train_labels)
    test_accuracy = accuracy(model, test_images, test_labels)
    print(f"train accuracy {train_accuracy:.4f}, test accuracy {test_accuracy:.4f}")

    save_atomically(model.eval(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
