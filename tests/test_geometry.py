"""Receptive field, stride and first pixel of each layer, checked against a gradient: the input
pixels an output cell depends on are those where the gradient of that cell is non-zero.

The gradient runs on a copy of the model whose conv weights are positive constants (biases 0,
batch norm at its default statistics, max pooling replaced by average pooling with the same
window), fed with ones: every path then adds a positive amount, so nothing cancels and every pixel
of the window shows. The cell is the centre of the map and the input is large enough that its
window lies inside the input, so no padding clips it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reportgen.summary import summarize
from reportgen.top_activations import layer_geometry, window


class Layer(NamedTuple):
    key: str


def positive_copy(model: nn.Module) -> nn.Module:
    """The model with constant positive weights and average pooling in place of max pooling."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.MaxPool1d, nn.MaxPool2d)):
                assert child.dilation == 1
                pool = nn.AvgPool1d if isinstance(child, nn.MaxPool1d) else nn.AvgPool2d
                setattr(module, child_name, pool(child.kernel_size, child.stride, child.padding,
                                                 ceil_mode=child.ceil_mode))
        if isinstance(module, nn.modules.conv._ConvNd):
            with torch.no_grad():
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
        if isinstance(module, Functional):
            module.pool = F.avg_pool2d
    return model


def gradient_windows(model: nn.Module, shape: Sequence[int], keys: Sequence[str],
                     cells: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per layer key (module name, first call), the (first, last) input index per spatial axis
    with a non-zero gradient of channel 0 at `cells[key]` (default: the map's centre cell)."""
    probe = positive_copy(model)
    modules = dict(probe.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[key].register_forward_hook(
        lambda _m, _i, out, key=key: outputs.setdefault(key, out)) for key in keys]
    x = torch.ones(*shape, requires_grad=True)
    try:
        probe(x)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for key in keys:
        out = outputs[key]
        cell = (cells or {}).get(key) or tuple(s // 2 for s in out.shape[2:])
        (grad,) = torch.autograd.grad(out[(0, 0, *cell)], x, retain_graph=True)
        seen = grad[0].abs().sum(0) > 0
        spans = []
        for axis in range(seen.dim()):
            others = tuple(a for a in range(seen.dim()) if a != axis)
            hit = np.flatnonzero(seen.any(dim=others).numpy() if others else seen.numpy())
            spans.append((int(hit[0]), int(hit[-1])))
        found[key] = tuple(spans)
    return found


def check_against_gradient(model: nn.Module, shape: Sequence[int], keys: Sequence[str]) -> dict[str, tuple]:
    """Assert that every key's geometry gives the gradient's window at the centre cell; returns
    {key: (receptive field, stride)} for textbook checks."""
    with torch.no_grad():
        rows = summarize(model.eval(), torch.rand(*shape)).rows
    geometry = layer_geometry(rows, [Layer(key) for key in keys])
    spatial = {row.name: row.output_shape[2:] for row in rows}
    spans = gradient_windows(model, shape, keys)
    for key in keys:
        found = geometry[key]
        assert found.known, (key, found.unknown)
        centre = tuple(s // 2 for s in spatial[key])
        for axis, (low, high) in enumerate(spans[key]):
            assert 0 < low and high < shape[2 + axis] - 1, f"{key}: window clipped, make the input larger"
            assert found.first[axis] + centre[axis] * found.stride[axis] == low, (key, axis, found, low)
            assert found.receptive_field[axis] == high - low + 1, (key, axis, found, low, high)
    return {key: (geometry[key].receptive_field, geometry[key].stride) for key in keys}


def test_alexnet_receptive_fields_match_the_gradient_and_the_textbook() -> None:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None)
    keys = ["features.0", "features.2", "features.3", "features.6", "features.8", "features.10"]
    found = check_against_gradient(model, (1, 3, 224, 224), keys)
    # 224 does not divide into 55, 27, 13, 6 cells; the strides are still whole numbers
    assert found == {
        "features.0": ((11, 11), (4, 4)),
        "features.2": ((19, 19), (8, 8)),
        "features.3": ((51, 51), (8, 8)),
        "features.6": ((99, 99), (16, 16)),
        "features.8": ((131, 131), (16, 16)),
        "features.10": ((163, 163), (16, 16)),
    }


def test_resnet18_receptive_fields_follow_the_residual_branches() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    keys = ["conv1", "maxpool", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.downsample.0", "layer2.0",
            "layer3.1.conv2", "layer4.1"]
    # 449 pixels: no layer's map divides it, and layer4's 435-pixel window fits around the centre
    found = check_against_gradient(model, (1, 3, 449, 449), keys)
    assert found["layer4.1"] == ((435, 435), (32, 32))
    assert found["layer2.0.downsample.0"] == ((43, 43), (8, 8))  # the shortcut sees less than the block
    assert found["layer2.0"] == ((67, 67), (8, 8))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch pads a copy: fine here
def test_1d_conv_with_stride_dilation_padding_and_same_padding() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=3, dilation=2), nn.ReLU(),
        nn.MaxPool1d(3, stride=2, padding=1),
        nn.Conv1d(4, 4, 4, padding="same", dilation=1),  # even kernel: PyTorch pads 1 before, 2 after
        nn.Conv1d(4, 3, 4, stride=3, dilation=3),
        nn.AvgPool1d(2, ceil_mode=True),
    )
    found = check_against_gradient(model, (1, 2, 301), ["0", "2", "3", "4", "5"])
    # textbook: r = 1 + 4*2 = 9, j = 2; pool r = 9 + 2*2 = 13, j = 4; same conv r = 13 + 3*4 = 25;
    # r = 25 + 3*3*4 = 61, j = 12; pool r = 61 + 12 = 73, j = 24
    assert found == {"0": ((9,), (2,)), "2": ((13,), (4,)), "3": ((25,), (4,)), "4": ((61,), (12,)),
                     "5": ((73,), (24,))}


class Functional(nn.Module):
    """Functional pooling, an out-of-place residual add and a channel concat between modules."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: Any = F.max_pool2d  # the gradient's copy pools with F.avg_pool2d (same window)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 5, padding=2)
        self.c = nn.Conv2d(4, 4, 1, stride=2)
        self.d = nn.Conv2d(8, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = self.pool(x, 2)
        y = self.b(x) + x
        z = F.avg_pool2d(y, 3, stride=2, padding=1)
        return self.d(torch.cat([z, self.c(y)], dim=1))


def test_functional_ops_and_branches_match_the_gradient() -> None:
    found = check_against_gradient(Functional(), (1, 3, 61, 61), ["a", "b", "c", "d"])
    # a: 3; pool: 4, j 2; b: 4 + 4*2 = 12; c (on b + x): 12, j 4; avg pool: 12 + 2*2 = 16, j 4;
    # d on cat(pool, c): 16 + 2*4 = 24, j 4
    assert found == {"a": ((3, 3), (1, 1)), "b": ((12, 12), (2, 2)), "c": ((12, 12), (4, 4)),
                     "d": ((24, 24), (4, 4))}


def test_crop_box_of_a_peak_cell_is_the_gradient_window_clipped_to_the_input() -> None:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    shape = (1, 3, 195, 201)  # neither side divides
    with torch.no_grad():
        rows = summarize(model, torch.rand(*shape)).rows
    geometry = layer_geometry(rows, [Layer("features.3"), Layer("features.8")])
    peaks = {"features.3": (0, 22), "features.8": (5, 1)}  # one corner cell, one by the left edge
    spans = gradient_windows(model, shape, list(peaks), cells=peaks)
    for key, peak in peaks.items():
        (top, bottom), (left, right) = spans[key]
        assert window(peak, geometry[key], shape[2:]) == (top, left, bottom + 1, right + 1)


def test_geometry_that_cannot_be_known_says_why() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(4), nn.Conv2d(2, 2, 3),
                          nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 1), nn.ConvTranspose2d(2, 2, 2))
    rows = summarize(model, torch.rand(1, 1, 13, 13)).rows
    geometry = layer_geometry(rows, [Layer(key) for key in ("0", "1", "2", "4", "5")])
    assert geometry["0"].known and geometry["0"].receptive_field == (3, 3)
    assert "11x11 cells into 4x4 cells of unequal size" in geometry["1"].unknown
    assert geometry["2"].unknown == geometry["1"].unknown and geometry["2"].receptive_field == ()
    assert not geometry["4"].known and "interpolate" in geometry["4"].unknown
    assert not geometry["5"].known
    # adaptive pooling into cells of equal size is plain pooling
    even = summarize(nn.Sequential(nn.AdaptiveMaxPool2d(3), nn.Conv2d(1, 1, 2)), torch.rand(1, 1, 12, 12)).rows
    assert layer_geometry(even, [Layer("1")])["1"].receptive_field == (8, 8)
    # no summary rows (torchinfo could not walk the model): unknown, not guessed
    assert not layer_geometry((), [Layer("0")])["0"].known


@pytest.mark.parametrize("padding", [0, 1])
def test_a_stride_two_conv_on_an_odd_input(padding: int) -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=padding))
    found = check_against_gradient(model, (1, 1, 9, 9), ["0"]) if padding == 0 else None
    rows = summarize(model, torch.rand(1, 1, 9, 9)).rows
    geometry = layer_geometry(rows, [Layer("0")])["0"]
    assert (geometry.receptive_field, geometry.stride, geometry.first) == ((3, 3), (2, 2), (-padding, -padding))
    assert geometry.offset() == (1 - padding, 1 - padding)  # the centre of cell 0's window
    assert found in (None, {"0": ((3, 3), (2, 2))})


def test_following_the_forward_leaves_no_hook_and_no_mode_behind_even_when_it_raises() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(f"broken after {self.conv(x).shape}")

    model = Broken()
    with pytest.raises(RuntimeError):
        summarize(model, torch.rand(1, 1, 8, 8))
    assert torch._C._len_torch_function_stack() == 0
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


class Residual(nn.Module):
    """x + body(x), the body keeping the size; or body(x) + shortcut(x) when it strides."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def random_model(seed: int, dims: int) -> nn.Sequential:
    """3 to 5 random conv / pooling / residual layers whose strides multiply to at most 8."""
    generator = np.random.default_rng(seed)
    conv, maxpool, avgpool = {1: (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d),
                              2: (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)}[dims]
    layers: list[nn.Module] = []
    jump = 1
    for _ in range(int(generator.integers(3, 6))):
        stride = int(generator.integers(1, 3 if jump < 8 else 2))
        kernel = int(generator.integers(1, 6))
        kind = generator.choice(["conv", "conv", "same", "max", "avg", "residual"])
        if kind == "conv":
            dilation = int(generator.integers(1, 3))
            layers.append(conv(2, 2, kernel, stride=stride, padding=int(generator.integers(0, 4)), dilation=dilation))
        elif kind == "same":
            layers.append(conv(2, 2, kernel, padding="same", dilation=int(generator.integers(1, 3))))
            stride = 1
        elif kind in ("max", "avg"):
            kernel = max(kernel, 2)
            pool = maxpool if kind == "max" else avgpool
            layers.append(pool(kernel, stride=stride, padding=int(generator.integers(0, kernel // 2 + 1)),
                               ceil_mode=bool(generator.integers(0, 2))))
        else:
            odd = kernel | 1
            body = nn.Sequential(conv(2, 2, odd, stride=stride, padding=odd // 2), nn.ReLU(),
                                 conv(2, 2, 3, padding=1))
            layers.append(Residual(body, conv(2, 2, 1, stride=stride) if stride > 1 else None))
        jump *= stride
    return nn.Sequential(conv(1, 2, 1), *layers)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch pads a copy: fine here
@pytest.mark.parametrize("seed", range(8))
def test_random_models_match_the_gradient(seed: int) -> None:
    dims = 1 if seed % 2 == 0 else 2
    model = random_model(seed, dims)
    keys = [str(i) for i in range(1, len(model))]
    shape = (1, 1) + ((900,) if dims == 1 else (161, 161))
    check_against_gradient(model, shape, keys)


def test_a_layer_whose_window_is_unknown_gets_no_crops_and_the_page_says_why() -> None:
    import reportgen

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(5), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images = torch.rand(12, 3, 14, 14, generator=torch.Generator().manual_seed(1))
    report = reportgen.generate_report(model, images, device="cpu", max_inputs_shown=2, top_k=3)
    sections = {s.name: s.insight for s in report.model.sections}
    assert sections["0"].top_strip is not None and sections["0"].receptive_field == (3, 3)
    assert sections["2"].top_strip is None and sections["2"].receptive_field == ()
    assert "12x12 cells into 5x5 cells of unequal size" in sections["2"].geometry_unknown
    assert "unknown: 1 (AdaptiveAvgPool2d) pools 12x12 cells into 5x5" in report.to_html()


def test_a_compiled_model_keeps_its_summary_and_says_its_geometry_is_not_followed() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    model.compile(backend="eager")  # dynamo would trace the recording hooks and fail
    rows = {row.name: row for row in summarize(model, torch.rand(2, 3, 17, 17)).rows}
    assert rows["0"].mult_adds == 9 * 9 * 4 * (3 * 9 + 1)
    assert "compiled with torch.compile" in rows["2"].geometry.unknown


class ShortcutA(nn.Module):
    """The CIFAR ResNet "option A" shortcut: every second row and column from index `start`,
    channels zero-padded on both sides with F.pad; then a spatial F.pad and crop for good measure."""

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.start = start
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        shortcut = F.pad(x[:, :, self.start::2, self.start::2], (0, 0, 0, 0, 2, 2))
        y = F.relu(self.c(F.relu(self.b(x))) + shortcut)
        y = F.pad(y, (2, 1, 3, 0))[..., 1:, :]  # pad W by 2|1 and H by 3|0, then drop the first row
        return self.d(y)


@pytest.mark.parametrize("start", [0, 1])
def test_padding_and_strided_slices_match_the_gradient(start: int) -> None:
    found = check_against_gradient(ShortcutA(start), (1, 3, 42, 42), ["a", "b", "c", "d"])
    # a: 3; b: 3 + 2 = 5, j 2; c: 5 + 2*2 = 9, j 2 (the shortcut's 3 sits inside it); d after the
    # pads and crop: 9 + 2*2 = 13, j 2
    assert found == {"a": ((3, 3), (1, 1)), "b": ((5, 5), (2, 2)), "c": ((9, 9), (2, 2)), "d": ((13, 13), (2, 2))}
