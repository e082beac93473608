"""The model is left exactly as it was: hooks, modes, parameters, buffers, grads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reportgen
from tests.fixtures.models import RaisesOnSecondBatch, tiny_cnn, tiny_inputs


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [(name, m.training) for name, m in model.named_modules()],
        "hooks": [
            (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
        ],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [id(p) for p in model.parameters()],
    }


def assert_unchanged(before: dict, model: nn.Module) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key
    assert before["modes"] == after["modes"]
    assert before["hooks"] == after["hooks"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["params"] == after["params"]
    assert all(g is None for g in after["grads"])


def test_mixed_training_flags_and_batchnorm_stats_survive() -> None:
    model = nn.Sequential(tiny_cnn(), nn.BatchNorm1d(5), nn.Dropout(0.5))
    model.train()
    model[0][2].eval()  # a mixed-mode model: model.train(flag) would overwrite this
    before = snapshot(model)
    reportgen.generate_report(model, tiny_inputs(4), device="cpu", batch_size=3)
    assert_unchanged(before, model)


def test_model_left_unchanged_when_forward_raises_mid_run() -> None:
    model = RaisesOnSecondBatch()
    model.train()
    before = snapshot(model)
    with pytest.raises(reportgen.ReportError, match="boom on purpose"):
        reportgen.generate_report(model, tiny_inputs(4), device="cpu", batch_size=2)
    assert_unchanged(before, model)


def test_inputs_are_not_modified() -> None:
    x = tiny_inputs(2)
    copy = x.clone()
    reportgen.generate_report(tiny_cnn(), x, device="cpu")
    assert torch.equal(x, copy)
