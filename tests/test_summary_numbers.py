"""The summary's numbers equal torchinfo's and an independent count (issue 12, point 3).

Mult-adds counted here, per input, the way torchinfo counts them: a conv does (in/groups) *
prod(kernel) multiply-adds per output element, plus one for its bias; a linear layer in * out
(+ out for its bias); batch norm one per parameter. A container's figure is the sum over the
leaf layers inside it; torchinfo's own `macs` of a container (its parameters times its output
size) is not a count of anything."""

from __future__ import annotations

import math

import torch
import torchinfo
import torchvision
from torch import nn

import reportgen
from reportgen.summary import summarize


def independent_mult_adds(model: nn.Module, batch: torch.Tensor) -> dict[str, int]:
    """Per leaf module name, its mult-adds for one input (summed over its calls)."""
    counts: dict[str, int] = {}

    def hook(name: str):  # noqa: ANN202
        def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            per_input = output[0].numel()
            if isinstance(module, nn.modules.conv._ConvNd):
                fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
                macs = per_input * (fan_in + (module.bias is not None))
            elif isinstance(module, nn.Linear):
                macs = module.out_features * (module.in_features + (module.bias is not None))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                macs = 2 * module.num_features
            else:
                assert not list(module.parameters(recurse=False)), name
                macs = 0
            counts[name] = counts.get(name, 0) + macs
        return count

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if not list(module.children())]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def check_model(model: nn.Module, size: int) -> dict[str, int]:
    model.eval()
    batch = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    table = summarize(model, batch)  # a batch of 2, shown per input
    leaves = independent_mult_adds(model, batch[:1])
    reference = torchinfo.summary(model, input_size=(1, 3, size, size), verbose=0, depth=100)
    assert table.mult_adds == reference.total_mult_adds == sum(leaves.values())
    assert table.total_params == reference.total_params == sum(p.numel() for p in model.parameters())
    rows = {row.name: row for row in table.rows}
    for name, row in rows.items():
        if row.depth == 0:
            continue
        if row.container:
            inside = sum(macs for leaf, macs in leaves.items() if leaf.startswith(name + "."))
            assert row.mult_adds == inside, name
        else:
            assert row.mult_adds == leaves[name.split("#")[0]], name  # no module with weights runs twice here
    return {name: row.mult_adds for name, row in rows.items()}


def test_alexnet_container_rows_are_the_sums_of_their_layers() -> None:
    torch.manual_seed(0)
    found = check_model(torchvision.models.alexnet(weights=None), 224)
    assert found["features"] == 656_051_520 and found["classifier"] == 58_631_144  # not 632,242,176 / 58,631,144,000
    assert found["features.0"] == 70_470_400


def test_resnet18_container_rows_are_the_sums_of_their_layers() -> None:
    torch.manual_seed(0)
    found = check_model(torchvision.models.resnet18(weights=None), 96)
    assert found["layer2.0.downsample"] == found["layer2.0.downsample.0"] + found["layer2.0.downsample.1"]


def test_the_page_marks_container_sums_and_says_what_they_are() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Conv2d(4, 2, 3, bias=False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    report = reportgen.generate_report(model, torch.rand(1, 3, 10, 10), device="cpu")
    rows = {row["name"]: row for row in report.to_dict()["layers"]}
    inner = 8 * 8 * 4 * (3 * 9 + 1)  # the first conv: 8x8 outputs of 4 channels
    assert rows["0"]["container"] is True and rows["0"]["mult_adds"] == inner
    assert rows["1"]["container"] is False and rows["1"]["mult_adds"] == 6 * 6 * 2 * 4 * 9
    page = report.to_html()
    assert f"Σ {inner:,}" in page and "summed over the layers inside it" in page
    assert f"Σ {6 * 6 * 2 * 4 * 9:,}" not in page
