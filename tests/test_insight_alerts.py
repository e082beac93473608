"""Alerts find exactly the planted conditions, and nothing on a healthy model.

The healthy model is a tiny CNN trained for 60 Adam steps (tests/fixtures/insight_models.py);
the planted one is the same network with a duplicated filter, a constant filter, a dead channel
and a NaN weight. Thresholds are options; the --json document carries the numbers a CI job
gates on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen.alerts import WHY, AlertThresholds
from reportgen.cli import main
from tests.fixtures.insight_models import planted_cnn, small_cnn, stripes_inputs, trained_cnn


def kinds(report: reportgen.Report) -> set[tuple[str, str | None]]:
    return {(alert.kind, alert.layer) for alert in report.model.alerts}


def test_healthy_trained_model_gets_no_alert() -> None:
    images, labels = stripes_inputs(24)
    report = reportgen.generate_report(trained_cnn(), images, device="cpu", targets=labels.tolist())
    assert report.model.alerts == ()
    # ... and the numbers behind that are really there
    for section in report.model.sections:
        assert section.insight is not None and section.insight.weights is not None
        assert section.insight.dead_channels == ()
        assert section.insight.weights.duplicate_pairs == 0
        assert section.insight.weights.flat_filters == ()
        assert section.insight.reaches_output is True
    init = report.model.insight.init_test
    assert init.match == "" and init.distance > init.critical


def test_the_trained_demo_model_gets_no_alert() -> None:
    from reportgen import demo

    images, labels, names = demo.demo_samples()
    mean = torch.tensor(demo.DEMO_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(demo.DEMO_STD).view(1, 3, 1, 1)
    report = reportgen.generate_report(demo.load_demo_model(), (images - mean) / std, device="cpu",
                                       labels=list(demo.CLASS_NAMES), targets=list(labels), input_names=names)
    assert report.model.alerts == ()
    assert report.model.insight.init_test.match == ""
    assert report.model.insight.per_class.accuracy == 1.0


def test_planted_defects_give_exactly_their_alerts() -> None:
    images, labels = stripes_inputs(24)
    report = reportgen.generate_report(planted_cnn(), images, device="cpu", targets=labels.tolist())
    assert kinds(report) == {
        ("duplicate-filter", "0"),  # filter 5 = filter 2
        ("flat-filter", "0"),  # filter 1 all 0.05
        ("dead-filter", "2"),  # bias -1000 on channel 3
        ("nonfinite-weight", "2"),  # weight[7, 0, 0, 0] = NaN ...
        ("nonfinite-activation", "2"),  # ... which makes channel 7 NaN everywhere: a true consequence
    }
    by_kind = {alert.kind: alert for alert in report.model.alerts}
    assert "2 ≈ 5" in by_kind["duplicate-filter"].message
    assert by_kind["flat-filter"].message.endswith(": 1.")
    # the NaN channel 7 is not called dead; the site and the number of inputs are named
    assert by_kind["dead-filter"].message.endswith("never > 0 after 3 (ReLU) on any of the 24 inputs "
                                                   "(so they output 0 there): 3.")
    assert by_kind["nonfinite-weight"].message == "1 NaN/Inf weight values."
    first, second = report.model.sections
    assert first.insight.weights.duplicates[0].a == 2 and first.insight.weights.duplicates[0].b == 5
    assert first.insight.weights.duplicates[0].cosine == pytest.approx(1.0, abs=1e-6)
    assert second.insight.dead_channels == (3,)
    assert second.insight.weights.filters.nonfinite[7] == 1 and sum(second.insight.weights.filters.nonfinite) == 1
    # Every alert links to its layer and says why it matters.
    for alert in report.model.alerts:
        assert alert.anchor and WHY[alert.kind]


def test_untrained_model_is_detected_statistically() -> None:
    images, _ = stripes_inputs(6)
    report = reportgen.generate_report(small_cnn(seed=3), images, device="cpu")
    alert = next(a for a in report.model.alerts if a.kind == "random-weights")
    assert "PyTorch default U(±1/sqrt(fan_in))" in alert.message
    assert report.to_dict()["insight"]["totals"]["looks_untrained"] is True
    # Switched off, it is gone.
    quiet = reportgen.generate_report(small_cnn(seed=3), images, device="cpu",
                                      thresholds=AlertThresholds(untrained_check=False))
    assert "random-weights" not in {a.kind for a in quiet.model.alerts}


def test_thresholds_change_what_fires() -> None:
    images, labels = stripes_inputs(24)
    model = trained_cnn()
    with torch.no_grad():  # make channel 0 of the second conv fire on 2 of the 24 inputs only
        per_input = model[2](torch.relu(model[0](images)))[:, 0].flatten(1).amax(dim=1)
        model[2].bias[0] -= float(per_input.sort().values[-3])
        fires = (model[2](torch.relu(model[0](images)))[:, 0].flatten(1).amax(dim=1) > 0).float().mean().item()
    assert round(fires * 24) == 2
    default = reportgen.generate_report(model, images, device="cpu", targets=labels.tolist())
    assert "dead-filter" not in {a.kind for a in default.model.alerts}
    loose = reportgen.generate_report(model, images, device="cpu", targets=labels.tolist(),
                                      thresholds=AlertThresholds(dead_fraction=0.1))
    assert ("dead-filter", "2") in kinds(loose)
    assert loose.model.sections[1].insight.dead_channels == (0,)
    explode = reportgen.generate_report(model, images, device="cpu", thresholds=AlertThresholds(explode=0.5))
    assert ("exploding-activation", "0") in kinds(explode)


def test_constant_channel_is_reported_as_saturated() -> None:
    images, _ = stripes_inputs(8)
    model = trained_cnn()
    with torch.no_grad():
        model[0].weight[4] = 0.0
        model[0].bias[4] = 0.7  # outputs 0.7 everywhere: stuck, not dead
    report = reportgen.generate_report(model, images, device="cpu")
    alerts = {a.kind: a for a in report.model.alerts if a.layer == "0"}
    assert alerts["constant-channel"].message.endswith(": 4.")
    assert "flat-filter" in alerts  # an all-zero filter is flat as well
    assert "dead-filter" not in alerts


def test_json_carries_the_numbers_for_ci(tmp_path: Path) -> None:
    images, labels = stripes_inputs(24)
    document = reportgen.generate_report(planted_cnn(), images, device="cpu", targets=labels.tolist()).to_dict()
    totals = document["insight"]["totals"]
    assert totals["dead_channels"] == 1 and totals["channels"] == 20
    assert totals["dead_fraction"] == pytest.approx(1 / 20)
    assert totals["duplicate_pairs"] == 1 and totals["flat_filters"] == 1 and totals["nonfinite_weights"] == 1
    second = document["visualized"][1]["insight"]
    assert second["dead_fraction"] == pytest.approx(1 / 12) and second["dead_channels"] == [3]
    weights = document["visualized"][0]["insight"]["weights"]
    direct = planted_cnn()[0].weight.detach().double()
    assert weights["filters"]["norm"][3] == pytest.approx(float(direct[3].norm()), rel=1e-5)
    assert weights["filters"]["mean"][0] == pytest.approx(float(direct[0].mean()), rel=1e-5, abs=1e-7)
    assert weights["count"] == direct.numel()
    json.dumps(document, allow_nan=False)  # NaN weight statistics became null


def test_cli_threshold_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "net.py"
    model_file.write_text(
        "import torch\n"
        "from tests.fixtures.insight_models import planted_cnn\n"
        "def build():\n    return planted_cnn()\n", encoding="utf-8")
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    code = main([f"{model_file}:build", "--input-shape", "3,16,16", "-o", str(out), "--json", str(js), "-q",
                 "--duplicate-threshold", "1.0", "--dead-threshold", "0.0", "--no-cam", "--device", "cpu"])
    assert code == 0
    document = json.loads(js.read_text())
    assert ("duplicate-filter", "0") in {(a["kind"], a["layer"]) for a in document["alerts"]}
    assert document["insight"]["gradcam"] is None
    bad = tmp_path / "bad.html"
    with pytest.raises(SystemExit) as exit_info:
        main([f"{model_file}:build", "--input-shape", "3,16,16", "-o", str(bad), "--dead-threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "--dead-threshold" in capsys.readouterr().err
    assert not bad.exists()
