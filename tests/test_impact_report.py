"""The impact section end to end: CLI options, JSON, HTML (escaped, offline), determinism, errors."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.api import generate_report
from reportgen.cli import main
from reportgen.impact import ImpactOptions
from tests.fixtures.impact_models import CARRIER, CarrierNet, carrier_inputs

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Carrier(nn.Module):
        # channel 2 of conv averages the image; only it reaches the logits (bright = class 1)
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)
            with torch.no_grad():
                self.conv.weight[2] = 1.0 / 27.0
                self.conv.bias[2] = 0.0
                self.head.weight.zero_()
                self.head.weight[0, 2], self.head.weight[1, 2] = -8.0, 8.0
                self.head.bias.copy_(torch.tensor([4.0, -4.0]))

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    def build():
        return Carrier()
    """
)
BRIGHT = "bright <b>x"  # a class (folder) name that must reach the HTML as text


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "carrier_model.py").write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    for name, level in (("a-dark", 50), ("b-" + BRIGHT, 200)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = np.clip(level + rng.integers(-20, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path / "carrier_model.py", tmp_path / "data"


def test_cli_ablation_probes_and_json(dataset, tmp_path, capsys):
    model_file, data = dataset
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    code = main([f"{model_file}:build", "--dataset", str(data), "--ablation", "--ablation-max-channels", "all",
                 "--probes", "rotate,noise,fgsm", "--probe-strength", "noise=0.2", "--fgsm-epsilon", "0.05",
                 "-o", str(html_path), "--json", str(json_path), "-q"])
    assert code == 0, capsys.readouterr().err
    impact = json.loads(json_path.read_text())["impact"]
    ablation = impact["ablation"]
    assert ablation["targets"] == "labels" and ablation["inputs"] == 6
    assert ablation["baseline_accuracy"] == 1.0
    (layer,) = ablation["layers"]
    assert layer["name"] == "conv" and layer["ranking"][0] == 2
    assert layer["top"][0]["delta_accuracy"] == pytest.approx(-0.5)
    assert layer["top"][0]["classes"][0]["label"] == "b-" + BRIGHT
    assert [p["kind"] for p in impact["probes"]] == ["rotate", "noise", "fgsm"]
    noise = impact["probes"][1]
    assert noise["strength"] == 0.2 and noise["layers"][0]["name"] == "conv"
    assert len(noise["layers"][0]["correlation"]) == 4
    fgsm = impact["probes"][2]
    assert "pixel units" not in fgsm["description"]  # --dataset images have no normalisation here
    assert impact["misfiring"]["wrong"] == 0  # --ablation also looks for misfiring filters

    html = html_path.read_text()
    section = html[html.index('<section id="impact">'):html.index("</section>", html.index('<section id="impact">'))]
    assert "<b>x" not in html and "&lt;b&gt;x" in section
    assert 'href="#impact"' in html  # in the sidebar
    assert not re.search(r"""(src|href)=["'](https?:)?//""", section)  # nothing external
    sources = re.findall(r'src="([^"]+)"', section)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--probes", "rotate,twist"], "--probes: unknown probe 'twist'"),
        (["--probes", "noise", "--probe-strength", "noise=lots"], "--probe-strength wants"),
        (["--probes", "fgsm", "--fgsm-epsilon", "-1"], "--fgsm-epsilon must be a number >= 0"),
        (["--ablation", "--ablation-layers", "nothing*"], "--ablation-layers nothing* matches no layer"),
    ],
)
def test_cli_option_mistakes_exit_2_with_one_line_and_no_file(dataset, tmp_path, capsys, extra, message):
    model_file, data = dataset
    output = tmp_path / "bad.html"
    code = main([f"{model_file}:build", "--dataset", str(data), "-o", str(output), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("reportgen: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert not output.exists()


def test_ablation_max_channels_must_be_positive_or_all(dataset, tmp_path, capsys):
    model_file, data = dataset
    with pytest.raises(SystemExit) as exit_info:
        main([f"{model_file}:build", "--dataset", str(data), "--ablation", "--ablation-max-channels", "0"])
    assert exit_info.value.code == 2
    assert "--ablation-max-channels" in capsys.readouterr().err


def test_same_inputs_give_the_same_impact_bytes(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    images, labels = carrier_inputs(6)
    options = ImpactOptions(ablation=True, probes=("rotate", "noise", "blur", "brightness", "fgsm"))

    def build() -> tuple[str, str]:
        report = generate_report(CarrierNet(), images, targets=labels, max_size_mb=0, impact=options)
        return report.to_html(), report.to_json()

    first, second = build(), build()
    assert first[0] == second[0]
    assert first[1] == second[1]
    impact = json.loads(first[1])["impact"]
    assert impact["ablation"]["layers"][0]["ranking"][0] == CARRIER
    assert len(impact["probes"]) == 5 and all(p["note"] == "" for p in impact["probes"])


def test_impact_json_validates_against_the_shipped_schema():
    import jsonschema  # a [test] dependency, as in test_schema.py: never a silent skip
    from importlib import resources

    schema = json.loads(resources.files("reportgen.data").joinpath("report.schema.json").read_text())
    images, labels = carrier_inputs(4)
    report = generate_report(CarrierNet(), images, targets=labels, max_size_mb=0,
                             impact=ImpactOptions(ablation=True, misfiring=True, probes=("noise",)))
    document = json.loads(report.to_json())
    jsonschema.validate(document, schema)
    assert set(document["impact"]) == {"ablation", "misfiring", "probes", "notes"}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripted_models_get_a_note_not_a_crash():
    scripted = torch.jit.script(CarrierNet().eval())
    images, labels = carrier_inputs(4)
    from reportgen.impact import build_impact
    from reportgen.inputs import from_tensor

    inputs = from_tensor(images)
    inputs.labels = labels
    impact = build_impact(scripted, inputs, torch.device("cpu"), ImpactOptions(ablation=True, ablation_layers=("conv",)),
                          selected=[], anchors={}, class_names=None)
    assert impact.ablation is None and "TorchScript" in impact.notes[0]


def test_no_impact_options_no_impact_section():
    images, labels = carrier_inputs(4)
    report = generate_report(CarrierNet(), images, targets=labels, max_size_mb=0)
    assert report.to_dict()["impact"] is None
    assert 'id="impact"' not in report.to_html()
    with pytest.raises(Exception, match="targets has 3 entries but there are 4 inputs"):
        generate_report(CarrierNet(), images, targets=labels[:3])


def test_demo_with_every_impact_option(tmp_path, capsys):
    # the demo's checkpoint ships with reportgen: a broken one fails this test, never skips it
    json_path = tmp_path / "demo.json"
    code = main(["demo", "--ablation", "--ablation-max-channels", "4", "--probes", "all", "--max-inputs-shown", "4",
                 "-o", str(tmp_path / "demo.html"), "--json", str(json_path), "-q"])
    assert code == 0, capsys.readouterr().err
    impact = json.loads(json_path.read_text())["impact"]
    assert impact["ablation"]["targets"] == "labels"
    assert [layer["name"] for layer in impact["ablation"]["layers"]] == ["features.conv1", "features.conv2",
                                                                         "features.conv3"]
    fgsm = next(p for p in impact["probes"] if p["kind"] == "fgsm")
    clean = [o["clean_probability"] for o in fgsm["outcomes"]]
    attacked = [o["perturbed_probability"] for o in fgsm["outcomes"]]
    assert sum(attacked) < sum(clean)  # the demo model's own gradient lowers its true-class probability
    assert torch.is_grad_enabled()


def test_models_called_through_forward_args_get_an_impact_section():
    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = CarrierNet()

        def forward(self, image, scale):
            return self.inner(image * scale)

    images, labels = carrier_inputs(6)
    report = generate_report(TwoInputs(), images, targets=labels, max_size_mb=0,
                             forward_args=lambda batch: (batch, torch.ones(batch.shape[0], 1, 1, 1)),
                             impact=ImpactOptions(ablation=True, ablation_max_channels=None, probes=("noise", "fgsm")))
    impact = report.to_dict()["impact"]
    (layer,) = impact["ablation"]["layers"]
    assert layer["name"] == "inner.conv" and layer["ranking"][0] == CARRIER
    assert [p["note"] for p in impact["probes"]] == ["", ""]
