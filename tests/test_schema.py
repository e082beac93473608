"""The --json document validates against the JSON Schema shipped in the package."""

from __future__ import annotations

import copy
import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

import reportgen
from reportgen.cli import main
from reportgen.exports import json_schema
from tests.fixtures.models import tiny_cnn, tiny_inputs


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    report = reportgen.generate_report(
        tiny_cnn(), tiny_inputs(3), device="cpu", labels=list("abcde"), max_channels=4
    )
    return json.loads(report.to_json())


def errors(validator: jsonschema.Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_schema_is_shipped_in_the_package() -> None:
    from importlib import resources

    path = resources.files("reportgen.data").joinpath("report.schema.json")
    assert path.is_file()
    assert json.loads(path.read_text(encoding="utf-8"))["required"][0] == "reportgen_version"


def test_api_json_validates(
    validator: jsonschema.Draft202012Validator, document: dict[str, Any]
) -> None:
    assert errors(validator, document) == []
    # the contract fields are really there and consistent, beyond what a schema can say
    assert document["visualized"], "the tiny CNN has two convs"
    for item in document["visualized"]:
        stats = item["stats"]
        assert (
            len(stats["mean"])
            == len(stats["max"])
            == len(stats["fraction_active"])
            == item["channels_total"]
        )
        assert item["channels_shown"] == 4
    for prediction in document["predictions"]:
        assert prediction["top"][0]["label"] in "abcde"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["reportgen_version"], None),
        (["model", "total_params"], -1),
        (["model", "name"], 3),
        (["layers", 0, "trainable"], "yes"),
        (["layers", 0, "output_shape"], "[1, 8, 16, 16]"),
        (["visualized", 0, "channels_shown"], 2.5),
        (["visualized", 0, "stats", "fraction_active"], [1.5]),
        (["visualized", 0, "stats", "mean"], ["big"]),
        (["inputs", 0, "shape"], [3, -16]),
        (["predictions", 0, "top", 0, "probability"], 1.2),
        (["predictions", 0, "top"], []),
        (["alerts"], [{"kind": "dead-filter", "layer": 3, "message": "x"}]),
        (["visualized", 0, "insight", "weights", "init", "verdict"], "looks fine"),
        (["visualized", 0, "insight", "weights", "init", "distances", 0, "distance"], 1.5),
    ],
)
def test_schema_rejects_broken_contract_fields(
    validator: jsonschema.Draft202012Validator,
    document: dict[str, Any],
    path: list[Any],
    value: Any,
) -> None:
    broken = copy.deepcopy(document)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert errors(validator, broken), f"{path} = {value!r} should not validate"


@pytest.mark.parametrize(
    "field",
    ["reportgen_version", "model", "layers", "visualized", "inputs", "predictions", "alerts"],
)
def test_schema_requires_every_contract_field(
    validator: jsonschema.Draft202012Validator, document: dict[str, Any], field: str
) -> None:
    broken = copy.deepcopy(document)
    del broken[field]
    assert errors(validator, broken)


def test_schema_allows_fields_added_later(
    validator: jsonschema.Draft202012Validator, document: dict[str, Any]
) -> None:
    extended = copy.deepcopy(document)
    extended["gradcam"] = {"anything": [1, 2]}
    extended["layers"][0]["new_column"] = "x"
    extended["visualized"][0]["stats"]["p99"] = [0.5]
    assert errors(validator, extended) == []


MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3))
    """
)


def test_cli_json_validates_and_hashes_the_input_files(
    validator: jsonschema.Draft202012Validator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(MODEL_FILE, encoding="utf-8")
    (tmp_path / "pics").mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
            tmp_path / "pics" / f"p{i}.png"
        )
    assert (
        main(["net.py:build", str(tmp_path / "pics"), "-o", "r.html", "--json", "r.json", "-q"])
        == 0
    )
    document = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert errors(validator, document) == []
    files = document["input_files"]
    assert [f["path"] for f in files] == [
        "pics/p0.png",
        "pics/p1.png",
    ]  # relative: no home folder leaks
    for entry in files:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["byte_size"] == len(data)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert files[0]["sha256"] in page and 'id="reproduce"' in page
    assert str(tmp_path / "pics") not in page  # the command names inputs relative to the folder it enters
