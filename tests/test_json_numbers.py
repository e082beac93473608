"""The --json numbers agree with a direct computation on the same model and inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reportgen
from tests.fixtures.models import TwiceUsed, tiny_cnn, tiny_inputs

LABELS = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture(scope="module")
def data() -> dict:
    report = reportgen.generate_report(tiny_cnn(), tiny_inputs(5), device="cpu", labels=LABELS, batch_size=2)
    # Round-trip through JSON text exactly as --json writes it (NaN would be rejected).
    return json.loads(report.to_json())


def test_contract_keys(data: dict) -> None:
    assert data["reportgen_version"] == reportgen.__version__
    assert {"name", "total_params", "trainable_params"} <= set(data["model"])
    for row in data["layers"]:
        assert {"name", "type", "depth", "output_shape", "params", "kernel_size", "mult_adds", "trainable"} <= set(row)
    for entry in data["visualized"]:
        assert {"name", "type", "channels_shown", "channels_total", "stats"} <= set(entry)
        assert {"mean", "max", "fraction_active"} <= set(entry["stats"])
    assert [i["name"] for i in data["inputs"]] == [f"input-{i:02d}" for i in range(5)]
    assert all(i["shape"] == [3, 16, 16] for i in data["inputs"])
    assert isinstance(data["alerts"], list)


def test_parameter_counts_and_table(data: dict) -> None:
    model = tiny_cnn()
    assert data["model"]["total_params"] == sum(p.numel() for p in model.parameters())
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["0"]["params"] == 3 * 8 * 9 + 8
    assert rows["0"]["output_shape"] == [1, 8, 16, 16]
    assert rows["0"]["kernel_size"] == [3, 3]
    # torchinfo's mult-adds for a conv: (weights + bias) x output positions, for one input
    assert rows["0"]["mult_adds"] == (3 * 8 * 9 + 8) * 16 * 16
    assert rows["2"]["trainable"] == "True"
    assert rows["1"]["trainable"] == "--"


def test_activation_statistics_match_direct_computation(data: dict) -> None:
    model, x = tiny_cnn(), tiny_inputs(5)
    with torch.no_grad():
        out = torch.relu(model[2](torch.relu(model[0](x)))).double()  # observed after its ReLU
    flat = out.flatten(2)
    stats = {v["name"]: v for v in data["visualized"]}["2"]["stats"]
    np.testing.assert_allclose(stats["mean"], flat.mean(dim=2).mean(dim=0).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["max"], flat.amax(dim=(0, 2)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats["fraction_active"], (flat > 0).double().mean(dim=(0, 2)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(stats["fraction_inputs_active"], (flat > 0).any(dim=2).double().mean(dim=0).numpy())
    assert {v["name"]: v for v in data["visualized"]}["2"]["channels_total"] == 12


def test_predictions_are_softmax_top5(data: dict) -> None:
    model, x = tiny_cnn(), tiny_inputs(5)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)
    for row, prediction in enumerate(data["predictions"]):
        expected = torch.topk(probabilities[row], 5)
        assert [t["index"] for t in prediction["top"]] == expected.indices.tolist()
        assert [t["label"] for t in prediction["top"]] == [LABELS[i] for i in expected.indices.tolist()]
        np.testing.assert_allclose([t["probability"] for t in prediction["top"]], expected.values.numpy(), rtol=1e-5)


def test_module_called_twice_gets_two_entries() -> None:
    model, x = TwiceUsed(), tiny_inputs(2)
    data = reportgen.generate_report(model, x, device="cpu").to_dict()
    names = [v["name"] for v in data["visualized"]]
    assert names == ["stem", "shared", "shared#2"]
    with torch.no_grad():
        first = model.shared(model.stem(x))
        second = model.shared(torch.relu(first))
    stats = {v["name"]: v["stats"] for v in data["visualized"]}
    np.testing.assert_allclose(stats["shared"]["max"], first.amax(dim=(0, 2, 3)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats["shared#2"]["max"], second.amax(dim=(0, 2, 3)).numpy(), rtol=1e-5)


def test_layers_glob_selects_by_qualified_name() -> None:
    data = reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu", layers=["2", "6"]).to_dict()
    assert [v["name"] for v in data["visualized"]] == ["2", "6"]
    with pytest.raises(reportgen.ReportError, match="matches no layer"):
        reportgen.generate_report(tiny_cnn(), tiny_inputs(1), device="cpu", layers=["nope*"])
