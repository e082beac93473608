"""How many bytes a CUDA report copies to the host, against the activations it analyses.

Counts every `Tensor.cpu()` / `Tensor.to(cpu)` of a CUDA tensor during `generate_report` on
torchvision ResNet-50 (random init) and prints the total next to the bytes of all hooked conv
outputs, so "reduce on the device, copy only uint8 tiles and statistics" is a measured claim.

    python benchmarks/gpu_transfers.py [--inputs 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import reportgen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    batch = torch.rand(args.inputs, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    copied = {"bytes": 0, "calls": 0}
    original_cpu, original_to = torch.Tensor.cpu, torch.Tensor.to

    def counting_cpu(self: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        if self.is_cuda:
            copied["bytes"] += self.numel() * self.element_size()
            copied["calls"] += 1
        return original_cpu(self, *a, **k)

    def counting_to(self: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        result = original_to(self, *a, **k)
        if self.is_cuda and not result.is_cuda:
            copied["bytes"] += self.numel() * self.element_size()
            copied["calls"] += 1
        return result

    activation_bytes = 0

    def measure(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal activation_bytes
        activation_bytes += output.numel() * output.element_size()

    handles = [m.register_forward_hook(measure) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model.cuda()(batch.cuda())
    for handle in handles:
        handle.remove()
    model.cpu()

    torch.Tensor.cpu, torch.Tensor.to = counting_cpu, counting_to  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        report = reportgen.generate_report(model, batch, device="cuda", batch_size=args.batch_size)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        torch.Tensor.cpu, torch.Tensor.to = original_cpu, original_to  # type: ignore[method-assign]
    print(f"conv activations analysed: {activation_bytes / 1e6:,.1f} MB")
    print(f"copied device->host during the report: {copied['bytes'] / 1e6:,.2f} MB in {copied['calls']} copies "
          f"({copied['bytes'] / max(activation_bytes, 1) * 100:.3f}% of the activations)")
    print(f"generate_report on cuda: {seconds:.2f} s for {args.inputs} inputs; peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB; {len(report.model.sections)} layers")


if __name__ == "__main__":
    main()
