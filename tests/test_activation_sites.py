"""Each conv is observed at its activation site, and every activation statistic and alert is
judged there (issue 12, point 1), with negative extremes counted (point 2).

Every expected value is computed here with plain torch on the same model, never with reportgen.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reportgen
from reportgen.analyze import AnalysisOptions, analyze
from reportgen.inputs import from_tensor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _stats(values: torch.Tensor) -> dict[str, np.ndarray]:
    """The statistics the report claims, computed directly from (N, C, ...) values."""
    flat = values.detach().double().flatten(2)
    return {
        "max": flat.amax(dim=(0, 2)).numpy(),
        "min": flat.amin(dim=(0, 2)).numpy(),
        "mean": flat.mean(dim=2).mean(dim=0).numpy(),
        "fraction_active": (flat > 0).double().mean(dim=(0, 2)).numpy(),
        "fraction_inputs_active": (flat > 0).any(dim=2).double().mean(dim=0).numpy(),
    }


def _assert_layer_is(layer, expected: torch.Tensor) -> None:
    want = _stats(expected)
    for field, values in want.items():
        np.testing.assert_allclose(getattr(layer, field), values, rtol=1e-5, atol=1e-5, err_msg=field)


class ShiftedBN(nn.Module):
    """conv -> BN -> ReLU where BN's running statistics move channels across zero: channel 0 is
    never positive at the conv but mostly positive after BN; channel 1 the other way round."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)
            self.conv.bias.copy_(torch.tensor([-5.0, 5.0, 0.0, 0.0]))
            self.bn.running_mean.copy_(torch.tensor([-7.0, 9.0, 0.0, 0.0]))
            self.bn.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_dead_channels_are_judged_after_bn_and_relu_not_at_the_raw_conv() -> None:
    model, x = ShiftedBN().eval(), torch.rand(6, 3, 12, 12)
    with torch.no_grad():
        raw = model.conv(x)
        site = torch.relu(model.bn(raw.clone()))
    assert not (raw[:, 0] > 0).any() and (site[:, 0] > 0).any(), "channel 0: dead at the conv only"
    assert (raw[:, 1] > 0).any() and not (site[:, 1] > 0).any(), "channel 1: dead after BN only"
    dead_at_site = [c for c in range(4) if not (site[:, c] > 0).any()]

    report = reportgen.generate_report(model, x, device="cpu")
    section = report.model.sections[0]
    assert section.site == "after bn (BatchNorm2d) → act (ReLU)"
    assert list(section.insight.dead_channels) == dead_at_site == [1]
    dead = [a for a in report.model.alerts if a.kind == "dead-filter"]
    assert len(dead) == 1 and dead[0].message.endswith(
        "never > 0 after bn (BatchNorm2d) → act (ReLU) on any of the 6 inputs (so they output 0 there): 1. "
        "Only 6 inputs: weak evidence, a channel silent on these may fire on others.")

    raw_report = reportgen.generate_report(model, x, device="cpu", tap="conv")
    assert list(raw_report.model.sections[0].insight.dead_channels) == [0]
    # no ReLU acts on the raw conv output: channel 0 passes its negative values on, so it is a
    # sign pattern, not a dead filter, and neither the alert nor the section calls it dead
    assert "dead-filter" not in {a.kind for a in raw_report.model.alerts}
    never = next(a for a in raw_report.model.alerts if a.kind == "never-positive")
    assert "at the raw conv output (--tap conv" in never.message and "still pass non-positive values on" in never.message
    html = raw_report.to_html()
    assert "not dead filters" in html and '<th scope="row">channels never &gt; 0</th>' in html
    assert '<th scope="row">dead channels</th>' in report.to_html() and "not dead filters" not in report.to_html()


class FunctionalResidual(nn.Module):
    """A CIFAR ResNet block written with F.relu (hooks cannot see it) and the ReLU after the add."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            for bn in (self.bn0, self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x  # in place, as many ResNets write it
        out = F.relu(out)
        return {"features": out, "logits": self.head(out.mean(dim=(2, 3)))}


def test_functional_relu_and_residual_add_are_followed() -> None:
    model, x = FunctionalResidual().eval(), torch.randn(5, 3, 10, 10)
    with torch.no_grad():
        stem = F.relu(model.bn0(model.stem(x)))
        first = F.relu(model.bn1(model.conv1(stem)))
        second = F.relu(model.bn2(model.conv2(first)) + stem)
    analysis = analyze(model, from_tensor(x), torch.device("cpu"), AnalysisOptions())
    layers = {layer.key: layer for layer in analysis.layers}
    assert [layer.key for layer in analysis.layers] == ["stem", "conv1", "conv2"]
    assert layers["stem"].site.describe() == "after bn0 (BatchNorm2d) → relu()"
    assert layers["conv2"].site.describe() == "after bn2 (BatchNorm2d) → add() → relu()"
    for key, expected in (("stem", stem), ("conv1", first), ("conv2", second)):
        _assert_layer_is(layers[key], expected)


class NormThenInplaceAdd(nn.Module):
    """conv -> BN with no activation after it, then an in-place residual add: the site is the BN
    output, observed before the add changes it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y += 10 * x
        return y.mean(dim=(2, 3))


def test_a_norm_without_activation_is_the_site_and_said_so() -> None:
    model, x = NormThenInplaceAdd().eval(), torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        expected = model.bn(model.conv(x))
    analysis = analyze(model, from_tensor(x), torch.device("cpu"), AnalysisOptions())
    layer = analysis.layers[0]
    assert layer.site.describe() == "after bn (BatchNorm2d) (no activation follows on this path)"
    assert not layer.site.zero_floor
    _assert_layer_is(layer, expected)


class Spike(nn.Module):
    """A conv whose output nobody activates, with one channel at a huge value of either sign."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.copy_(torch.tensor([sign * 2e5, 0.0]))
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_largest_magnitude_and_exploding_alert_count_negative_values(sign: float) -> None:
    x = torch.rand(3, 1, 4, 4)
    model = Spike(sign)
    with torch.no_grad():
        largest = model.conv(x).abs().max().item()
    report = reportgen.generate_report(model, x, device="cpu")
    insight = report.model.sections[0].insight
    assert insight.max_abs_activation == pytest.approx(largest, rel=1e-6)
    exploding = [a for a in report.model.alerts if a.kind == "exploding-activation"]
    assert len(exploding) == 1 and "on all 3 inputs seen" in exploding[0].message


def _random_site_model(seed: int) -> nn.Module:
    """A small random conv net with BN running statistics far from (0, 1), in-place and
    functional activations, negative spikes and a residual add."""
    generator = torch.Generator().manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 5, 3, padding=1)
            self.bn_a = nn.BatchNorm2d(5)
            self.b = nn.Conv2d(5, 5, 3, padding=1)
            self.bn_b = nn.BatchNorm2d(5)
            self.c = nn.Conv2d(5, 3, 1)
            self.act = nn.LeakyReLU(0.1, inplace=True)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a = self.act(self.bn_a(self.a(x)))
            b = F.relu(self.bn_b(self.b(a)) + a)
            c = self.c(b)
            return c.mean(dim=(2, 3)), c

    net = Net()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        for bn in (net.bn_a, net.bn_b):
            bn.running_mean.copy_(torch.randn(5, generator=generator) * 3)
            bn.running_var.copy_(torch.rand(5, generator=generator) * 4 + 0.1)
        net.c.bias[0] = -1e5 * (1 + seed)  # a negative spike
    return net.eval()


@pytest.mark.parametrize("seed", range(4))
def test_brute_force_reference_over_random_models(seed: int) -> None:
    model = _random_site_model(seed)
    x = torch.randn(7, 2, 9, 9, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        a = F.leaky_relu(model.bn_a(model.a(x)), 0.1)
        b = F.relu(model.bn_b(model.b(a)) + a)
        c = model.c(b)
    analysis = analyze(model, from_tensor(x), torch.device("cpu"), AnalysisOptions(batch_size=3))
    layers = {layer.key: layer for layer in analysis.layers}
    assert layers["a"].site.describe() == "after bn_a (BatchNorm2d) → act (LeakyReLU)"
    assert not layers["a"].site.zero_floor  # LeakyReLU passes negative values on
    assert layers["b"].site.zero_floor
    assert layers["c"].site.describe().startswith("the raw conv output (no normalisation")
    for key, expected in (("a", a), ("b", b), ("c", c)):
        _assert_layer_is(layers[key], expected)
    report = reportgen.generate_report(model, x, device="cpu", batch_size=3)
    by_name = {section.name: section for section in report.model.sections}
    assert by_name["c"].insight.max_abs_activation == pytest.approx(c.abs().max().item(), rel=1e-6)


def _load_resnet20() -> nn.Module:
    spec = importlib.util.spec_from_file_location(
        "resnet20_cifar", Path(__file__).resolve().parents[1] / "examples" / "resnet20_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.resnet20()
    state = torch.load(SHARED / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


@pytest.mark.skipif(not (SHARED / "resnet20-12fca82f.th").exists(),
                    reason="needs ../shared/data (the trained CIFAR-10 ResNet-20 beside this checkout)")
def test_resnet20_example_alerts_only_channels_dead_at_their_activation_site() -> None:
    """The README's flagship example: layer3.2.conv1 channel 21 is never positive at the conv
    but is after BN, so it must not be called dead; every dead alert must be true after
    BN (+ residual add) + ReLU on these 20 inputs."""
    from PIL import Image

    model = _load_resnet20()
    paths = sorted((SHARED / "cifar10_foolbox_samples").glob("*.png"))
    assert len(paths) == 20
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)
                          .permute(2, 0, 1) for p in paths])
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (pixels - mean) / std

    expected: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, store: dict[str, torch.Tensor]):
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            store[name] = output.detach().clone()
        return hook

    blocks = [(f"layer{s}.{b}", getattr(model, f"layer{s}")[b]) for s in (1, 2, 3) for b in range(3)]
    handles.append(model.bn1.register_forward_hook(keep("conv1", expected)))
    for prefix, block in blocks:
        handles.append(block.bn1.register_forward_hook(keep(f"{prefix}.conv1", expected)))
        handles.append(block.register_forward_hook(keep(f"{prefix}.conv2", expected)))  # relu(bn2 + shortcut)
        handles.append(block.conv1.register_forward_hook(keep(f"{prefix}.conv1", raw)))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    truly_dead = {name: [c for c in range(t.shape[1]) if not (torch.relu(t[:, c]) > 0).any()]
                  for name, t in expected.items()}
    assert (raw["layer3.2.conv1"][:, 21] <= 0).all(), "the checkpoint's channel 21 is never positive at the conv"
    assert 21 not in truly_dead["layer3.2.conv1"]

    report = reportgen.generate_report(model, x, device="cpu", cam=False, embedding=False, top_k=0)
    sections = {section.name: section for section in report.model.sections}
    assert set(sections) == set(truly_dead)
    for name, dead in truly_dead.items():
        assert list(sections[name].insight.dead_channels) == dead, name
        assert sections[name].site.endswith("relu()"), sections[name].site
    alerted = {a.layer for a in report.model.alerts if a.kind == "dead-filter"}
    assert alerted == {name for name, dead in truly_dead.items() if dead}
    assert "never-positive" not in {a.kind for a in report.model.alerts}  # every site here is after a ReLU

    # --tap conv: the raw conv outputs, where no ReLU acts. A channel never > 0 there (such as
    # layer3.2.conv1's 21) is counted and alerted as never-positive, never called dead.
    raw_all: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(keep(name, raw_all))
               for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    never = {name: [c for c in range(t.shape[1]) if not (t[:, c] > 0).any()] for name, t in raw_all.items()}
    assert 21 in never["layer3.2.conv1"]
    raw_report = reportgen.generate_report(model, x, device="cpu", cam=False, embedding=False, top_k=0, tap="conv")
    raw_sections = {section.name: section for section in raw_report.model.sections}
    assert set(raw_sections) == set(never)
    for name, channels in never.items():
        assert list(raw_sections[name].insight.dead_channels) == channels, name
    kinds = {a.kind for a in raw_report.model.alerts}
    assert "dead-filter" not in kinds
    assert {a.layer for a in raw_report.model.alerts if a.kind == "never-positive"} == \
        {name for name, channels in never.items() if channels}


def test_a_shortcut_conv_observed_at_the_block_output_gets_the_block_outputs_receptive_field() -> None:
    """torchvision's 1x1 downsample conv is observed after the residual add and the block's
    ReLU: its cells are the block output's, which see the conv branch too (67 px at stride 8 for
    layer2.0 of ResNet-18, the gradient-checked value in test_geometry), not the 1x1 conv's own
    43 px; its top-k crops must be cut with that window."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(2, 3, 128, 128)
    kept: list[torch.Tensor] = []
    handle = model.layer2[0].register_forward_hook(lambda module, args, out: kept.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    analysis = analyze(model, from_tensor(x), torch.device("cpu"), AnalysisOptions(layers=("layer2.0.*",)))
    layers = {layer.key: layer for layer in analysis.layers}
    # the two convs joined by the add share one site, the block output (reduced once for both)
    _assert_layer_is(layers["layer2.0.conv2"], kept[0])
    _assert_layer_is(layers["layer2.0.downsample.0"], kept[0])
    shortcut = layers["layer2.0.downsample.0"]
    assert shortcut.site.describe() == ("after layer2.0.downsample.1 (BatchNorm2d) → add() → "
                                        "layer2.0.relu (ReLU)")
    assert shortcut.site.module_key == "layer2.0.relu#2"  # the block's ReLU, second call
    geometry = analysis.insight.geometry
    assert geometry["layer2.0.downsample.0"].receptive_field == (67, 67)
    assert geometry["layer2.0.downsample.0"].stride == (8, 8)
    # conv1's site is its own ReLU (first call): its own window, smaller than the block's
    assert layers["layer2.0.conv1"].site.module_key == "layer2.0.relu"
    assert geometry["layer2.0.conv1"].receptive_field == (51, 51)
