"""The "vs. default init" test: each layer is compared with the init it names, with fans as the
inits themselves compute them (grouped, transposed), and says only what its n allows.

Expected distances come from a numpy Kolmogorov-Smirnov distance written here, with the scales
computed here from the layer's shape; the 5 % critical value is checked by simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.weight_stats import LAYER_SAMPLE, TRAINED_CLOSEST, ks_critical, untrained_test

UNIFORM = "PyTorch default U(±1/sqrt(fan_in))"
FAN_OUT = "kaiming-normal N(0, 2/fan_out)"
FAN_IN = "kaiming-normal N(0, 2/fan_in)"
_erf = np.vectorize(math.erf)


def ks(values: np.ndarray, cdf) -> float:
    """Textbook one-sample KS distance: max over the sorted sample of |F_n - F| on both sides of each step."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(0, n) / n)))


def uniform_cdf(bound: float):
    return lambda x: np.clip((x + bound) / (2 * bound), 0.0, 1.0)


def normal_cdf(std: float):
    return lambda x: 0.5 * (1 + _erf(x / (std * math.sqrt(2))))


def layer_test(weight: torch.Tensor):
    _, layers = untrained_test({"layer": weight})
    return layers["layer"]


def distances(test) -> dict[str, float]:
    return {d.init: d.distance for d in test.distances}


def test_default_init_is_measured_against_default_uniform() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)  # PyTorch's own init; 4,608 weights, all tested
    w = conv.weight.detach().numpy()
    fan_in, fan_out = 16 * 9, 32 * 9
    test = layer_test(conv.weight)
    found = distances(test)
    assert test.sample == w.size
    assert found[UNIFORM] == pytest.approx(ks(w, uniform_cdf(1 / math.sqrt(fan_in))), abs=1e-9)
    assert found[FAN_OUT] == pytest.approx(ks(w, normal_cdf(math.sqrt(2 / fan_out))), abs=1e-7)
    assert found[FAN_IN] == pytest.approx(ks(w, normal_cdf(math.sqrt(2 / fan_in))), abs=1e-7)
    assert test.distances[0].init == UNIFORM and found[UNIFORM] < test.critical < found[FAN_OUT]
    assert test.verdict in ("matches", "cannot tell") and test.verdict != "differs"


def test_kaiming_normal_fan_out_is_measured_against_itself() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 32, 3)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    w = conv.weight.detach().numpy()
    test = layer_test(conv.weight)
    assert test.distances[0].init == FAN_OUT
    assert test.distances[0].distance == pytest.approx(ks(w, normal_cdf(math.sqrt(2 / (32 * 9)))), abs=1e-7)
    assert test.distances[0].distance < test.critical
    assert distances(test)[UNIFORM] == pytest.approx(ks(w, uniform_cdf(1 / math.sqrt(16 * 9))), abs=1e-9)


def test_each_layer_names_its_own_closest_init_not_the_pooled_one() -> None:
    # Issue 12.5: the per-layer distance was taken against the pooled best candidate (here
    # kaiming-normal, set by the big layer), so the small default-init layer read 0.28 "vs. default init".
    torch.manual_seed(2)
    small = nn.Conv2d(1, 32, 3)  # default init, 288 weights
    big = nn.Conv2d(32, 64, 3)
    nn.init.kaiming_normal_(big.weight, mode="fan_out", nonlinearity="relu")
    verdict, layers = untrained_test({"conv1": small.weight, "conv2": big.weight})
    assert verdict.match == FAN_OUT
    expected = ks(small.weight.detach().numpy(), uniform_cdf(1 / math.sqrt(9)))
    assert layers["conv1"].distances[0].init == UNIFORM
    assert layers["conv1"].distances[0].distance == pytest.approx(expected, abs=1e-9)
    assert layers["conv2"].distances[0].init == FAN_OUT


@pytest.mark.parametrize("make", [
    # ConvTranspose stores (in, out / groups, k, k): PyTorch's init takes fan_in from dim 1
    lambda: nn.ConvTranspose2d(4, 64, 3),
    lambda: nn.Conv2d(64, 128, 3, groups=16),  # each output sees 64 / 16 * 9 inputs
    lambda: nn.Conv1d(8, 32, 7, groups=4),
    lambda: nn.ConvTranspose3d(16, 8, 3, groups=2),
], ids=["transposed", "grouped", "grouped-1d", "transposed-grouped-3d"])
def test_grouped_and_transposed_fans_are_the_inits_own(make) -> None:
    torch.manual_seed(3)
    layer = make()
    shape = tuple(layer.weight.shape)
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive  # what kaiming_* compute from the tensor
    w = layer.weight.detach().numpy()
    test = layer_test(layer.weight)
    assert test.distances[0].init == UNIFORM
    assert test.distances[0].distance == pytest.approx(ks(w, uniform_cdf(1 / math.sqrt(fan_in))), abs=1e-9)
    assert test.distances[0].distance < test.critical
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    test = layer_test(layer.weight)
    assert test.distances[0].init == FAN_OUT
    assert test.distances[0].distance == pytest.approx(
        ks(layer.weight.detach().numpy(), normal_cdf(math.sqrt(2 / fan_out))), abs=1e-7)
    assert test.distances[0].distance < test.critical


def test_critical_value_is_the_5_percent_point() -> None:
    rng = np.random.default_rng(0)
    for n in (50, 432):
        draws = [ks(rng.uniform(-1, 1, n), uniform_cdf(1.0)) for _ in range(3000)]
        assert np.mean(np.array(draws) > ks_critical(n)) == pytest.approx(0.05, abs=0.015)
        assert ks_critical(n) == pytest.approx(1.36 / math.sqrt(n), rel=0.03)  # asymptotic form


def test_small_layer_cannot_tell_even_when_close() -> None:
    # ResNet-20's conv1 holds 432 weights: a trained layer TRAINED_CLOSEST from its init passes there.
    torch.manual_seed(0)  # (a fresh layer lands beyond the 5 % value for 1 seed in 20, e.g. 4)
    conv = nn.Conv2d(3, 16, 3)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    test = layer_test(conv.weight)
    assert test.sample == 432 and test.distances[0].distance < test.critical
    assert test.critical > TRAINED_CLOSEST / 2
    assert test.verdict == "cannot tell" and test.match == ""


def test_big_fresh_layer_matches_its_init() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(64, 128, 3)  # 73,728 weights: a seeded sample of LAYER_SAMPLE is tested
    test = layer_test(conv.weight)
    assert test.sample == LAYER_SAMPLE and test.critical <= TRAINED_CLOSEST / 2
    assert test.verdict == "matches" and test.match == UNIFORM


@pytest.mark.parametrize("draw", [
    lambda g, n, fi: g.laplace(0, 1 / math.sqrt(3 * fi) / math.sqrt(2), n),  # same std as the default init
    lambda g, n, fi: g.uniform(-1.6, 1.6, n) / math.sqrt(fi),  # the default's shape, 1.6x wider
    lambda g, n, fi: g.standard_t(3, n) * 0.6 / math.sqrt(fi),  # heavy tails
], ids=["laplace", "wider-uniform", "student-t"])
def test_trained_looking_layer_is_not_called_init(draw) -> None:
    conv = nn.Conv2d(32, 64, 3)
    fan_in = 32 * 9
    values = draw(np.random.default_rng(6), conv.weight.numel(), fan_in)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(values).reshape(conv.weight.shape))
    test = layer_test(conv.weight)
    assert test.verdict == "differs" and test.match == ""
    assert all(d.distance > test.critical for d in test.distances)
    verdict, _ = untrained_test({"a": conv.weight, "b": conv.weight})
    assert verdict.match == ""


def test_page_says_what_the_test_can_say() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    report = reportgen.generate_report(model, torch.rand(2, 3, 16, 16), device="cpu")
    html = report.to_html()
    assert "cannot tell at n=432" in html
    line = next(s for s in report.model.sections if s.name == "0").insight.weights.init
    expected = ks(model[0].weight.detach().numpy(), uniform_cdf(1 / math.sqrt(27)))
    assert line.distances[0].init == UNIFORM
    assert line.distances[0].distance == pytest.approx(expected, abs=1e-9)
    assert f"{line.distances[0].distance:.4g} to {UNIFORM}" in html
    assert "matches" not in html.split("vs. default inits")[1][:400]


def test_sampled_big_layer_sees_every_kernel_tap() -> None:
    # 73,728 weights, 8,192 tested: a stride of 9 would read one tap of every 3x3 kernel only.
    torch.manual_seed(8)
    conv = nn.Conv2d(64, 128, 3)
    with torch.no_grad():
        conv.weight[:, :, 1, 1] = 0.0  # the centre taps moved (1/9 of the weights)
    w = conv.weight.detach().numpy()
    whole = ks(w, uniform_cdf(1 / math.sqrt(64 * 9)))
    assert whole == pytest.approx(1 / 18, abs=0.01)  # the whole layer: a jump of 1/9 at 0
    test = layer_test(conv.weight)
    assert test.sample == LAYER_SAMPLE < w.size
    assert test.distances[0].distance == pytest.approx(whole, abs=0.02)
    assert test.verdict == "differs"


def test_inits_that_coincide_for_a_layer_are_named_together() -> None:
    torch.manual_seed(9)
    conv = nn.Conv2d(16, 16, 3)  # fan_in == fan_out: both kaiming-normal candidates are N(0, 2/144)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    test = layer_test(conv.weight)
    assert [d.init for d in test.distances] == [f"{FAN_OUT} = {FAN_IN}", UNIFORM]
    assert test.distances[0].distance == pytest.approx(
        ks(conv.weight.detach().numpy(), normal_cdf(math.sqrt(2 / 144))), abs=1e-7)
