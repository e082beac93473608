"""How long filter ablation takes, batched (reportgen.ablation) versus one forward per ablated channel.

    python benchmarks/ablation_speed.py                      # resnet18, 256 inputs 3x64x64, 16 ch/layer
    python benchmarks/ablation_speed.py --threads 2 --json out.json
    python benchmarks/ablation_speed.py --max-channels 64 --naive-sample 2 --layers 'layer4.*'

Model: torchvision resnet18 with random weights (`torch.manual_seed(0)`, 1000 classes), eval mode.
Inputs: `--inputs` seeded `torch.rand` images of 3 x SIZE x SIZE with labels `i % 1000`.
Layers: every Conv2d (20 in resnet18) unless `--layers` globs are given; the first
`--max-channels` output channels of each are ablated.

BATCHED is `reportgen.ablation.run_ablation` (the batch expanded at the layer's block, many
channels per pass, `--max-rows` rows a pass); it includes its unablated pass. NAIVE is what one
would write first: for every ablated channel, every batch of `--batch-size` inputs goes through
the whole model with a forward hook that zeroes that channel. NAIVE is timed on the first
`--naive-sample` channels of each layer and extrapolated linearly to all ablated channels (the
cost of one naive ablation does not depend on which channel is zeroed); the script says so. The
metrics of the sampled channels are compared between both methods (they must agree).

Wall time with `time.perf_counter`, in-process, after one warm-up forward. Set `--threads` to
pin torch's intra-op threads (2 = the 2-core target).

Reference (torch 2.14.1, 256 inputs 3x64x64, batch 16, 512 rows a pass), measured with the
one-layer-at-a-time version of commit 5e4a1ae:
- CPU, 2 threads on an otherwise idle 16-core host: 8 channels/layer (160 ablations) batched
  41 s, naive ~73 s (extrapolated from 1 channel/layer): x1.8. Per layer from x0.8 (conv1: the
  whole network is downstream) to x4.5 (layer4.1.conv2). On CPU a forward costs the same per
  input at any batch size (1.4-1.8 ms), so the gain is the part of the network not rerun.
- CUDA (H100), every channel (4,800 ablations): batched 7.9 s, naive ~142 s (extrapolated from
  4 channels/layer): x18; here the wide passes also fill the GPU.
Since 24fc7e0, layers sharing an expansion module share each pass: counted in conv
multiply-adds (resnet18, 8 channels/layer) an ablation costs 0.63 full forwards, was 0.82 (naive:
1.0), so expect ~x2.2 on that CPU; the shared 2-core development container was too loaded to
time it (the same run took 85 s to 350 s).
Both methods agree to 1e-5 (float32 summation order).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reportgen.ablation import AblationOptions, run_ablation
from reportgen.collectors.ablation_baseline import clean_baseline
from reportgen.inputs import from_tensor


def conv_layers(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    if patterns:
        names = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    return names


def naive(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str, channel: int,
          batch_size: int) -> tuple[float, float, float]:
    """One full forward per batch with `channel` of `layer` zeroed: (accuracy, probability, loss)."""
    module = dict(model.named_modules())[layer]
    index = torch.tensor([channel], device=images.device)

    def hook(mod: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        return output.index_fill(1, index, 0.0)

    handle = module.register_forward_hook(hook)
    correct = probability = loss = 0.0
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = model(images[start:start + batch_size])
                target = labels[start:start + batch_size]
                logp = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0].double()
                correct += float((logits.argmax(1) == target).sum())
                probability += float(logp.exp().sum())
                loss += float(-logp.sum())
    finally:
        handle.remove()
    n = len(images)
    return correct / n, probability / n, loss / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-channels", type=int, default=16, help="channels ablated per layer (0: all)")
    parser.add_argument("--layers", action="append", default=[], help="globs over conv names (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-rows", type=int, default=512)
    parser.add_argument("--naive-sample", type=int, default=2, help="channels per layer timed naively (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()

    import torchvision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().to(device)
    torch.manual_seed(1)
    images = torch.rand(args.inputs, 3, args.size, args.size)
    labels = torch.arange(args.inputs) % 1000
    inputs = from_tensor(images)
    inputs.labels = labels.tolist()
    layers = conv_layers(model, args.layers)
    max_channels = args.max_channels or None
    with torch.inference_mode():
        model(images[: args.batch_size].to(device))  # warm-up
    print(f"resnet18 (random init), {args.inputs} inputs 3x{args.size}x{args.size}, {len(layers)} conv layers, "
          f"{'all' if max_channels is None else max_channels} channels/layer, batch {args.batch_size}, "
          f"{args.max_rows} rows/pass, {torch.get_num_threads()} threads, {device}", file=sys.stderr)

    started = time.perf_counter()
    with torch.inference_mode():  # the clean pass a report's main pass does is timed with it
        baseline = clean_baseline(model, inputs, device, args.batch_size)
        result = run_ablation(model, inputs, device, layers,
                              AblationOptions(max_channels=max_channels, batch_size=args.batch_size,
                                              max_rows=args.max_rows), baseline=baseline)
    if device.type == "cuda":
        torch.cuda.synchronize()
    batched_s = time.perf_counter() - started
    ablated = sum(len(layer.channels) for layer in result.layers)
    print(f"batched: {batched_s:.1f} s for {ablated} ablations ({result.forward_rows:,} forward rows)", file=sys.stderr)

    rows = []
    naive_total = 0.0
    worst_diff = 0.0
    images_device, labels_device = images.to(device), labels.to(device)
    for layer in result.layers:
        sample = list(layer.channels[: args.naive_sample])
        row = {"layer": layer.name, "channels": len(layer.channels), "expanded_at": layer.expanded_at,
               "batched_s": round(layer.seconds, 3)}
        if sample:
            t = time.perf_counter()
            for position, channel in enumerate(sample):
                _, probability, loss = naive(model, images_device, labels_device, layer.name, channel,
                                                    args.batch_size)
                worst_diff = max(worst_diff, abs(loss - float(layer.scores.loss[position])),
                                 abs(probability - float(layer.scores.probability[position])))
            per_channel = (time.perf_counter() - t) / len(sample)
            estimate = per_channel * len(layer.channels)
            naive_total += estimate
            row.update(naive_per_channel_s=round(per_channel, 3), naive_estimate_s=round(estimate, 2),
                       speedup=round(estimate / max(layer.seconds, 1e-9), 2))
        rows.append(row)
        print(f"  {layer.name:24s} expanded at {layer.expanded_at or 'input':10s} batched {layer.seconds:7.2f} s"
              + (f"  naive ~{row['naive_estimate_s']:8.2f} s  x{row['speedup']}" if sample else ""), file=sys.stderr)

    summary = {
        "model": "torchvision resnet18, random init (seed 0), 1000 classes",
        "inputs": args.inputs,
        "input_shape": [3, args.size, args.size],
        "layers": len(result.layers),
        "channels_per_layer": max_channels,
        "ablations": ablated,
        "batch_size": args.batch_size,
        "max_rows": args.max_rows,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "batched_s": round(batched_s, 2),
        "forward_rows": result.forward_rows,
        "naive_sample_per_layer": args.naive_sample,
        "naive_estimate_s": round(naive_total, 1) if args.naive_sample else None,
        "naive_extrapolated": bool(args.naive_sample) and any(len(layer.channels) > args.naive_sample for layer in result.layers),
        "speedup": round(naive_total / batched_s, 2) if args.naive_sample else None,
        "max_metric_difference": worst_diff,
        "per_layer": rows,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    if args.naive_sample:
        print(f"naive (timed on {args.naive_sample} channel(s)/layer, extrapolated to {ablated}): ~{naive_total:.1f} s; "
              f"speed-up x{summary['speedup']}; largest metric difference {worst_diff:.2e}", file=sys.stderr)
    text = json.dumps(summary, indent=1, sort_keys=True)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
