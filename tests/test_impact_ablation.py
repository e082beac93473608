"""Filter ablation: the method finds the channel that carries the evidence, the batched pass equals
one forward per channel, and the model is left exactly as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.ablation import AblationOptions, ancestors, chunks, ranking, run_ablation
from reportgen.collectors.ablation_baseline import clean_baseline
from reportgen.api import generate_report
from reportgen.errors import ReportError
from reportgen.impact import ImpactOptions
from reportgen.inputs import from_tensor
from tests.fixtures.impact_models import CARRIER, CarrierNet, TinyResNet, carrier_inputs

CPU = torch.device("cpu")


def _labelled(images: torch.Tensor, labels: list[int | None]):
    inputs = from_tensor(images)
    inputs.labels = list(labels)
    return inputs


def _ablate(model: nn.Module, inputs, names, forward_args=None, **kwargs):
    """Ablation with its baseline from a clean pass of its own (in a report, the main pass
    collects it: `collectors/ablation_baseline.py`)."""
    model.eval()
    options = AblationOptions(**kwargs)
    with torch.inference_mode():
        baseline = clean_baseline(model, inputs, CPU, options.batch_size, forward_args)
        return run_ablation(model, inputs, CPU, names, options, baseline=baseline, forward_args=forward_args)


def test_the_one_carrier_channel_ranks_first_and_the_others_do_nothing():
    model = CarrierNet()
    images, labels = carrier_inputs(12)
    result = _ablate(model, _labelled(images, labels), ["conv"], max_channels=None, batch_size=5)

    assert result.targets == "labels" and result.inputs == 12
    assert float(result.baseline.accuracy) == 1.0
    (layer,) = result.layers
    assert layer.channels == (0, 1, 2, 3, 4)
    d_loss = layer.scores.loss - result.baseline.loss
    d_acc = layer.scores.accuracy - result.baseline.accuracy
    # independent reference: one plain forward per zeroed channel
    target = torch.tensor(labels)
    clean = _logits_without(model, images)
    reference = np.array([_naive(model, images, target, "conv", c) for c in layer.channels])
    ref_d_loss = reference[:, 2] - float(F.cross_entropy(clean, target))
    np.testing.assert_allclose(d_loss, ref_d_loss, atol=1e-5)
    np.testing.assert_allclose(d_acc, reference[:, 0] - 1.0, atol=1e-9)
    # the carrier does the most damage by those numbers, and the ranking puts it first
    assert layer.channels[int(np.argmax(ref_d_loss))] == CARRIER
    assert layer.channels[ranking(d_loss, layer.channels)[0]] == CARRIER
    # zeroing the carrier sends every input to class 0: the 6 bright (class 1) ones become wrong
    assert d_acc[CARRIER] == pytest.approx(-0.5)
    assert d_loss[CARRIER] > 1.0
    others = [c for c in range(5) if c != CARRIER]
    assert np.abs(d_loss[others]).max() < 1e-6
    assert np.abs(d_acc[others]).max() == 0.0
    # per class: the carrier carries class 1 (its probability collapses), class 0 gains
    classes = list(result.classes)
    per_class = layer.scores.per_class[CARRIER] - result.baseline.per_class
    ablated = _logits_without(model, images, "conv", CARRIER)
    for k in (0, 1):
        rows = target == k
        expected = F.softmax(ablated[rows], 1)[:, k].mean() - F.softmax(clean[rows], 1)[:, k].mean()
        assert per_class[classes.index(k)] == pytest.approx(float(expected), abs=1e-5)
    assert per_class[classes.index(1)] < -0.9
    assert per_class[classes.index(0)] > 0


def test_report_json_ranks_the_carrier_first_with_its_class_and_tile():
    model = CarrierNet()
    images, labels = carrier_inputs(12)
    report = generate_report(model, images, targets=labels, labels=["dark", "bright"], max_size_mb=0,
                             impact=ImpactOptions(ablation=True, ablation_max_channels=None))
    ablation = report.to_dict()["impact"]["ablation"]
    assert ablation["targets"] == "labels"
    assert ablation["baseline_accuracy"] == 1.0
    (layer,) = ablation["layers"]
    assert layer["ranking"][0] == CARRIER
    top = layer["top"][0]
    assert top["channel"] == CARRIER and top["rank"] == 1
    assert top["delta_accuracy"] == pytest.approx(-0.5)
    assert top["classes"][0]["label"] == "bright" and top["classes"][0]["delta_probability"] < -0.9
    assert top["tile"]["width"] == 3 and top["tile"]["height"] == 3  # the 3x3 kernel, drawn
    # every other filter: no change at all
    others = [d for c, d in zip(layer["channels"], layer["delta_loss"]) if c != CARRIER]
    assert max(abs(d) for d in others) < 1e-6
    assert "every channel of 1 layer" in ablation["coverage"]
    assert "12 labelled inputs" in ablation["coverage"]
    html = report.to_html()
    assert 'id="impact-ablation"' in html and "Most impact" in html


def _logits_without(model: nn.Module, images: torch.Tensor, layer: str | None = None,
                    channel: int | None = None) -> torch.Tensor:
    """One plain forward over all inputs, with `channel` of `layer` zeroed when given."""
    if layer is None:
        with torch.inference_mode():
            return model(images)
    module = dict(model.named_modules())[layer]

    def hook(mod, args, output):
        output = output.clone()
        output[:, channel] = 0
        return output

    handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            return model(images)
    finally:
        handle.remove()


def _naive(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str, channel: int):
    """One forward over all inputs with `channel` of `layer` zeroed: (accuracy, probability, loss)."""
    logits = _logits_without(model, images, layer, channel)
    prob = F.softmax(logits, dim=1)[torch.arange(len(labels)), labels]
    accuracy = (logits.argmax(1) == labels).double().mean()
    return float(accuracy), float(prob.mean()), float(F.cross_entropy(logits, labels))


def test_batched_ablation_equals_one_forward_per_channel_on_a_residual_model():
    model = TinyResNet().eval()
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(7, 3, 12, 12, generator=generator)
    labels = [0, 1, 2, 3, 0, 1, 2]
    names = ["stem", "blocks.0.conv1", "blocks.1.conv2", "blocks.1.downsample.0"]
    # batch 3 leaves a last batch of 1; 8 rows per pass splits the channels into chunks
    result = _ablate(model, _labelled(images, labels), names, max_channels=6, batch_size=3, max_rows=8)
    assert [layer.name for layer in result.layers] == names and not result.skipped
    expanded = {layer.name: layer.expanded_at for layer in result.layers}
    # a conv inside a residual block cannot be expanded on its own (the shortcut meets it): the
    # block is; the stem conv sits on the main path and expands at itself
    assert expanded == {"stem": "stem", "blocks.0.conv1": "blocks.0", "blocks.1.conv2": "blocks.1",
                        "blocks.1.downsample.0": "blocks.1"}
    target = torch.tensor(labels)
    for layer in result.layers:
        for position, channel in enumerate(layer.channels):
            accuracy, probability, loss = _naive(model, images, target, layer.name, channel)
            assert layer.scores.accuracy[position] == pytest.approx(accuracy, abs=1e-9)
            assert layer.scores.probability[position] == pytest.approx(probability, abs=1e-5)
            assert layer.scores.loss[position] == pytest.approx(loss, abs=1e-5)
    # fewer rows than a forward per channel: the stem is ablated on the expanded rows only
    per_channel = sum(len(layer.channels) for layer in result.layers) * len(images)
    assert result.forward_rows == per_channel + len(images)


def test_dict_inputs_through_forward_args_are_expanded_too():
    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, batch):
            return self.head(self.conv(batch["image"]).mean(dim=(2, 3)) * batch["scale"])

    model = DictNet().eval()
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    inputs = _labelled(images, [0, 1, 2, 0])
    result = _ablate(model, inputs, ["conv"], max_channels=None,
                     forward_args=lambda b: ({"image": b, "scale": torch.full((b.shape[0], 1), 2.0)},))
    (layer,) = result.layers
    target = torch.tensor([0, 1, 2, 0])
    for channel in range(4):
        handle = model.conv.register_forward_hook(lambda m, a, o, c=channel: o.index_fill(1, torch.tensor([c]), 0.0))
        try:
            with torch.inference_mode():
                logits = model({"image": images, "scale": torch.full((4, 1), 2.0)})
        finally:
            handle.remove()
        assert layer.scores.loss[channel] == pytest.approx(float(F.cross_entropy(logits, target)), abs=1e-5)


def test_unlabelled_inputs_are_scored_against_the_models_own_predictions():
    model = CarrierNet()
    images, _ = carrier_inputs(6)
    result = _ablate(model, from_tensor(images), ["conv"], max_channels=None)
    assert result.targets == "predictions"
    assert float(result.baseline.accuracy) == 1.0  # the model agrees with itself
    (layer,) = result.layers
    assert layer.scores.accuracy[CARRIER] == pytest.approx(0.5)


def test_max_channels_and_layer_globs_bound_the_work_and_the_report_says_so():
    model = TinyResNet()
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    report = generate_report(model, images, targets=[0, 1, 2, 3], max_size_mb=0,
                             impact=ImpactOptions(ablation=True, ablation_layers=("blocks.1.*conv*",),
                                                  ablation_max_channels=2))
    ablation = report.to_dict()["impact"]["ablation"]
    assert [layer["name"] for layer in ablation["layers"]] == ["blocks.1.conv1", "blocks.1.conv2"]
    assert all(layer["channels"] == [0, 1] for layer in ablation["layers"])
    assert ablation["channels_ablated"] == 4 and ablation["channels_total"] == 24
    assert ablation["coverage"].startswith("4 of 24 filters ablated")
    assert "the first 2 channels of each of 2 layers" in ablation["coverage"]

    with pytest.raises(ReportError, match="--ablation-layers nothing"):
        generate_report(model, images, impact=ImpactOptions(ablation=True, ablation_layers=("nothing",)))
    with pytest.raises(ReportError, match="--ablation-max-channels"):
        generate_report(model, images, impact=ImpactOptions(ablation=True, ablation_max_channels=0))
    with pytest.raises(ReportError, match="label 9"):
        generate_report(model, images, targets=[9, 0, 0, 0], impact=ImpactOptions(ablation=True))


def _snapshot(model: nn.Module):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [(name, m.training) for name, m in model.named_modules()],
        [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
    )


def _assert_unchanged(model: nn.Module, before) -> None:
    state, modes, grads = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key
    assert [(name, m.training) for name, m in model.named_modules()] == modes
    for (requires, grad), parameter in zip(grads, model.parameters()):
        assert parameter.requires_grad == requires
        assert (parameter.grad is None) == (grad is None)
        if grad is not None:
            assert torch.equal(parameter.grad, grad)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not getattr(module, "_forward_hooks_with_kwargs", {})
        assert not module._backward_hooks


def test_model_left_unchanged_after_ablation_in_mixed_train_eval_modes():
    model = TinyResNet()
    model.train()
    model.blocks[1].bn1.eval()  # mixed modes must come back one by one
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # an existing gradient stays as it was
    before = _snapshot(model)
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    generate_report(model, images, targets=[0, 1, 2, 3, 0], max_size_mb=0,
                    impact=ImpactOptions(ablation=True, ablation_max_channels=3))
    _assert_unchanged(model, before)


def test_model_left_unchanged_when_its_forward_raises_during_ablation():
    class Fragile(TinyResNet):
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            if type(self).calls > 3:  # 1: learning the sites, 2: the unablated pass, 3: the channel count
                raise RuntimeError("boom on a later pass")
            return super().forward(x)

    model = Fragile()
    model.train()
    before = _snapshot(model)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    inputs = _labelled(images, [0, 1, 2, 3])
    from reportgen.impact import build_impact

    Fragile.calls = 0
    # every candidate expansion raises: the layers are skipped with the reason, nothing is left behind
    impact = build_impact(model, inputs, CPU, ImpactOptions(ablation=True), selected=["stem"], anchors={},
                          class_names=None)
    assert impact.ablation is not None and impact.ablation.layers == ()
    assert "boom on a later pass" in impact.ablation.skipped[0].reason
    _assert_unchanged(model, before)

    Fragile.calls = 10  # now the unablated pass itself fails: a clean one-line error
    with pytest.raises(ReportError, match="boom on a later pass"):
        build_impact(model, inputs, CPU, ImpactOptions(ablation=True), selected=["stem"], anchors={},
                     class_names=None)
    _assert_unchanged(model, before)


def test_helpers():
    assert ancestors("a.b.c") == ["a.b.c", "a.b", "a", ""]
    assert [list(r) for r in chunks(5, 4, 8)] == [[0, 1], [2, 3], [4]]
    assert [list(r) for r in chunks(3, 100, 8)] == [[0], [1], [2]]  # at least one channel a pass
    # NaN (a non-finite loss) is the largest damage; ties go by channel index
    assert ranking(np.array([0.1, math.nan, 0.1, 0.5]), [0, 1, 2, 3]) == [1, 3, 0, 2]


def test_layers_sharing_an_expansion_module_share_each_pass():
    """After the first batch, blocks.1.conv1 and blocks.1.conv2 (both expanded at blocks.1) are
    ablated in the same passes: the stem, before blocks.1, runs once per batch for both."""
    model = TinyResNet().eval()
    seen: list[int] = []
    handle = model.stem.register_forward_hook(lambda m, a, o: seen.append(o.shape[0]))
    images = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    try:
        result = _ablate(model, _labelled(images, [i % 4 for i in range(12)]),
                         ["blocks.1.conv1", "blocks.1.conv2"], max_channels=4, batch_size=4, max_rows=64)
    finally:
        handle.remove()
    assert [layer.expanded_at for layer in result.layers] == ["blocks.1", "blocks.1"]
    # the clean pass (in a report: the main pass) over the 3 batches first; then batch 1: the 1-row
    # channel count, then per layer a rejected try (expanding at the conv itself breaks on the
    # shortcut) and the checked pass at blocks.1; batches 2 and 3: ONE pass for the 8 slots of both
    assert seen == [4, 4, 4] + [1, 4, 4, 4, 4] + [4] + [4]
    # and the numbers are still those of one forward per channel
    target = torch.tensor([i % 4 for i in range(12)])
    for layer in result.layers:
        for position, channel in enumerate(layer.channels):
            _, probability, loss = _naive(model, images, target, layer.name, channel)
            assert layer.scores.loss[position] == pytest.approx(loss, abs=1e-5)
