"""How often the untrained-weights test is right: detection on fresh inits, false positives on
trained weights, pooled (the "looks untrained" alert) and per layer (the "vs. default init" line).

    python benchmarks/init_test_rates.py                  # ~1-2 min of one CPU thread
    python benchmarks/init_test_rates.py --seeds 3        # fewer fresh seeds per architecture
    python benchmarks/init_test_rates.py --layers         # also every trained layer's distances

Needs shared/data beside this checkout or one level up (or --data DIR): the trained CIFAR-10 ResNet-20
checkpoint and the MNIST test images (see its README). Nothing is downloaded.

FRESH models (should be flagged), `--seeds` seeds each unless noted: torchvision resnet18,
alexnet and vgg11 as built (random init, `torch.manual_seed(seed)`; vgg11 and alexnet at most
3 seeds: their classifiers make each build ~1 s), mobilenet_v2 (depthwise convs), the demo
architecture, the ResNet-20 of examples/resnet20_cifar.py with PyTorch's default init and with the
kaiming_normal_ (fan_in) init its checkpoint's training code used, the two MNIST CNNs below, and
a small factory CNN with a grouped conv and a ConvTranspose2d.

TRAINED models (should not be flagged): the shared ResNet-20 (91.8 % on CIFAR-10), the shipped
demo model (reportgen/data/demo_model.pt), and MNIST CNNs trained here for one epoch (Adam, lr
1e-3, batch 64) on the first 4,000 (small) or 2,000 (wide) images of the MNIST test file, seeds
0.. (`--mnist-seeds`); their accuracy on the next 1,000 images is printed.
BRIEF models (reported apart, neither side): the small MNIST CNN after 10 and 30 Adam steps,
where a test on the weights alone cannot be expected to tell.

Pooled: `weight_stats.untrained_test` as `insight.collect` calls it (every conv layer); a model
is flagged when its `match` is set. Per layer: `LayerInitTest.verdict` of each conv layer.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from reportgen.demo import build_demo_model, load_demo_model  # noqa: E402
from reportgen.weight_stats import TRAINED_CLOSEST, untrained_test  # noqa: E402
from resnet20_cifar import resnet20  # noqa: E402


def mnist_small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10))


def mnist_wide() -> nn.Module:
    """The CNN of pytorch/examples mnist (conv 1->32->64, 3x3), without dropout."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))


def grouped_factory() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3, groups=8), nn.ReLU(),
                         nn.ConvTranspose2d(64, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 4, 1))


def akamaster_resnet20() -> nn.Module:
    """ResNet-20 initialised as github.com/akamaster/pytorch_resnet_cifar10 does (`_weights_init`)."""
    model = resnet20()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return model


def read_mnist(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(data / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(data / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    x = (torch.from_numpy(images.copy()).float() / 255 - 0.1307) / 0.3081
    return x, torch.from_numpy(labels.astype(np.int64))


def train_mnist(build: Callable[[], nn.Module], seed: int, images: torch.Tensor, labels: torch.Tensor, *,
                count: int, steps: int | None = None) -> tuple[nn.Module, float]:
    """One epoch over the first `count` images (or only `steps` batches); accuracy on the next 1,000."""
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(count)
    for step, start in enumerate(range(0, count, 64)):
        if steps is not None and step >= steps:
            break
        batch = order[start:start + 64]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held = slice(count, count + 1000)
        accuracy = float((model(images[held]).argmax(1) == labels[held]).float().mean())
    return model, accuracy


def trained_resnet20(data: Path) -> nn.Module:
    model = resnet20()
    state = torch.load(data / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return model


def fresh_models(seeds: int) -> Iterator[tuple[str, Callable[[], nn.Module], int]]:
    import torchvision

    yield "torchvision resnet18", lambda: torchvision.models.resnet18(), seeds
    yield "torchvision mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), seeds
    yield "torchvision alexnet", lambda: torchvision.models.alexnet(), min(seeds, 3)
    yield "torchvision vgg11", lambda: torchvision.models.vgg11(), min(seeds, 3)
    yield "demo architecture", build_demo_model, seeds
    yield "resnet20 (default init)", resnet20, seeds
    yield "resnet20 (kaiming_normal_ fan_in)", akamaster_resnet20, seeds
    yield "mnist small CNN", mnist_small, seeds
    yield "mnist wide CNN", mnist_wide, seeds
    yield "grouped + transposed factory", grouped_factory, seeds


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight for name, module in model.named_modules()
            if isinstance(module, nn.modules.conv._ConvNd)}


def judge(model: nn.Module) -> tuple[bool, float, Counter[str], list]:
    """(pooled flag, pooled KS distance / critical value, per-layer verdict counts, per-layer tests)."""
    verdict, layers = untrained_test(conv_weights(model))
    return (bool(verdict.match), verdict.distance / verdict.critical,
            Counter(test.verdict for test in layers.values()), list(layers.items()))


class Tally:
    def __init__(self) -> None:
        self.models = 0
        self.flagged = 0
        self.verdicts: Counter[str] = Counter()
        self.ratios: list[float] = []  # pooled KS distance / critical value, per model

    def add(self, flagged: bool, ratio: float, counts: Counter[str]) -> None:
        self.models += 1
        self.flagged += flagged
        self.ratios.append(ratio)
        self.verdicts.update(counts)


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="default: shared/data beside this checkout, or one level up")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--mnist-seeds", type=int, default=5)
    parser.add_argument("--layers", action="store_true", help="print every trained layer's test")
    args = parser.parse_args()
    candidates = [args.data] if args.data else [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
    args.data = next((c for c in candidates if (c / "resnet20-12fca82f.th").exists()), None)
    if args.data is None:
        parser.error(f"no resnet20-12fca82f.th in {', '.join(map(str, candidates))}: pass --data DIR")
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    fresh, trained, brief = Tally(), Tally(), Tally()
    for name, build, seeds in fresh_models(args.seeds):
        group = Tally()
        for seed in range(seeds):
            torch.manual_seed(seed)
            flagged, ratio, counts, _ = judge(build())
            group.add(flagged, ratio, counts)
            fresh.add(flagged, ratio, counts)
        rows.append(("fresh", name, share(group.flagged, group.models), f"max {max(group.ratios):.2f}",
                     dict(group.verdicts)))
    images, labels = read_mnist(args.data)
    trained_models: list[tuple[str, Callable[[], nn.Module]]] = [
        ("ResNet-20 CIFAR-10 (shared checkpoint)", lambda: trained_resnet20(args.data)),
        ("demo model (shipped)", load_demo_model),
    ]
    for seed in range(args.mnist_seeds):
        trained_models.append((f"mnist small CNN, 1 epoch of 4,000, seed {seed}",
                               lambda s=seed: train_mnist(mnist_small, s, images, labels, count=4000)))
    trained_models.append(("mnist wide CNN, 1 epoch of 2,000, seed 0",
                           lambda: train_mnist(mnist_wide, 0, images, labels, count=2000)))
    closest: list[tuple[float, str]] = []
    for name, make in trained_models:
        built = make()
        model, accuracy = built if isinstance(built, tuple) else (built, None)
        flagged, ratio, counts, layers = judge(model)
        trained.add(flagged, ratio, counts)
        label = name + (f" (acc {accuracy:.3f})" if accuracy is not None else "")
        rows.append(("trained", label, "FLAGGED" if flagged else "no", f"{ratio:.2f}", dict(counts)))
        for layer, test in layers:
            closest.append((test.distances[0].distance, f"{name}: {layer} (n={test.sample})"))
            if args.layers:
                print(f"  {name:45s} {layer:18s} n={test.sample:6d} crit={test.critical:.4f} {test.verdict:12s}",
                      ", ".join(f"{d.init} {d.distance:.4f}" for d in test.distances))
    for steps in (10, 30):
        model, accuracy = train_mnist(mnist_small, 0, images, labels, count=4000, steps=steps)
        flagged, ratio, counts, _ = judge(model)
        brief.add(flagged, ratio, counts)
        rows.append(("brief", f"mnist small CNN, {steps} Adam steps (acc {accuracy:.3f})",
                     "FLAGGED" if flagged else "no", f"{ratio:.2f}", dict(counts)))

    print(f"{'group':8s} {'model':58s} {'pooled flagged':16s} {'D/crit':10s} per-layer verdicts")
    for group, name, flagged, ratio, verdicts in rows:
        print(f"{group:8s} {name:58s} {flagged:16s} {ratio:10s} {verdicts}")
    print()
    print(f"pooled detection rate (fresh flagged):        {share(fresh.flagged, fresh.models)}")
    print(f"pooled false-positive rate (trained flagged): {share(trained.flagged, trained.models)}")
    print(f"pooled D / critical: fresh at most {max(fresh.ratios):.2f}, trained at least {min(trained.ratios):.2f}")
    fresh_layers = sum(fresh.verdicts.values())
    trained_layers = sum(trained.verdicts.values())
    for label, tally, count in (("fresh:  ", fresh, fresh_layers), ("trained:", trained, trained_layers)):
        print(f"per layer, {label} " + ", ".join(
            f"{verdict} {share(tally.verdicts[verdict], count)}" for verdict in ("matches", "cannot tell", "differs")))
    closest.sort()
    print(f"closest trained layers to a default init (TRAINED_CLOSEST = {TRAINED_CLOSEST}):")
    for distance, where in closest[:3]:
        print(f"  KS {distance:.4f}  {where}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
