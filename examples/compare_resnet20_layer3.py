"""Real weights: the shared CIFAR-10 ResNet-20 against a copy whose `layer3` is re-initialised.

    PYTHONPATH=. python examples/compare_resnet20_layer3.py [--data ../shared/data] [-o out/resnet20-layer3.html]

Loads `resnet20-12fca82f.th` into examples/resnet20_cifar.py's ResNet-20 (A), copies it and
resets every module of `layer3` to PyTorch's default init under seed 0 (B), and compares the
two on the 20 lossless CIFAR-10 test PNGs (`cifar10_foolbox_samples/`, normalised as the model
was trained). Expected: CKA near 1 for every layer before layer3 (their weights are identical,
so their features are too) and clearly lower from layer3 on. Prints CKA per layer and writes
the comparison (HTML and JSON). The data is third-party and not in the repository.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnet20_cifar import resnet20  # examples/, on the path above

import reportgen
from reportgen.checkpoints import LoadedModel, apply_checkpoint
from reportgen.preprocess import Preprocessing

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    parser.add_argument("-o", "--output", default="out/resnet20-layer3.html")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--tap", choices=("activation", "conv"), default="activation")
    args = parser.parse_args()
    data = Path(args.data)
    loaded = LoadedModel(module=resnet20(), name="resnet20", source="examples/resnet20_cifar.py")
    apply_checkpoint(loaded, data / "resnet20-12fca82f.th", trust_pickle=False)
    trained = loaded.module
    reinit = copy.deepcopy(trained)
    torch.manual_seed(0)
    for module in reinit.layer3.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    images = sorted((data / "cifar10_foolbox_samples").glob("*.png"))
    labels = [int(re.search(r"_(\d)\.png$", p.name).group(1)) for p in images]  # type: ignore[union-attr]
    classes = Path(__file__).resolve().parent.joinpath("cifar10_labels.txt").read_text().split()
    report = reportgen.compare_reports(
        trained, reinit, [str(p) for p in images], names=["trained", "layer3 re-initialised"], targets=labels,
        labels=classes, preprocessing=Preprocessing(channels=3, mean=MEAN, std=STD, source="CIFAR-10 training"),
        device="cpu", batch_size=args.batch_size, tap=args.tap)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report.save(output, json_path=output.with_suffix(".json"))
    doc = report.to_dict()
    cka = doc["cka"]
    print(f"{cka['estimator']}; {cka['inputs_used']} inputs in batches of {cka['batch_size']}; tap {args.tap}")
    for layer in cka["layers"]:
        value = "n/a" if layer["value"] is None else f"{layer['value']:.4f}"
        print(f"  {layer['name']:<18} {value}")
    predictions = doc["predictions"]
    print(f"accuracy {predictions['accuracy_a']:.2f} -> {predictions['accuracy_b']:.2f}, agreement "
          f"{predictions['agreement']:.2f}, negative flip rate {predictions['negative_flip_rate']:.2f}")
    print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
