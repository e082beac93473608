"""`reportgen compare` / `compare_reports`: the numbers against direct computations, planted
changes found, the page self-contained and escaped, the JSON valid, the CLI's conventions."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.cli import main
from reportgen.cli_compare import expand_weights, natural_key
from tests.fixtures.models import tiny_cnn, tiny_inputs


def schema_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("reportgen.data").joinpath("compare.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in schema_validator().iter_errors(doc)]


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return tiny_inputs(20, size=12)


def test_a_model_against_itself(inputs: torch.Tensor) -> None:
    model = tiny_cnn()
    report = reportgen.compare_reports(model, copy.deepcopy(model), inputs, device="cpu", batch_size=8)
    doc = report.to_dict()
    assert errors(doc) == []
    values = [layer["value"] for layer in doc["cka"]["layers"]]
    assert [layer["name"] for layer in doc["cka"]["layers"]] == ["0", "2"]
    assert values == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (doc["cka"]["inputs_used"], doc["cka"]["inputs_skipped"]) == (20, 0)  # batches of 8, 8 and 4
    assert doc["cka"]["batch_sizes"] == [{"size": 4, "batches": 1}, {"size": 8, "batches": 2}]
    uneven = reportgen.compare_reports(model, copy.deepcopy(model), inputs, device="cpu", batch_size=6).to_dict()
    assert (uneven["cka"]["inputs_used"], uneven["cka"]["inputs_skipped"]) == (18, 2)  # the last batch of 2 is left out
    for layer in doc["layers"]:
        assert layer["weight_change"]["relative_l2"] == 0.0
        assert layer["weight_change"]["cosine"] == pytest.approx(1.0)
    for layer in doc["channels"]:
        defined = [c["correlation"] for c in layer["channels"] if c["correlation"] is not None]
        assert defined == pytest.approx([1.0] * len(defined), abs=1e-6)
        assert layer["newly_dead"] == [] and layer["revived"] == []
    assert doc["predictions"]["agreement"] == 1.0 and doc["predictions"]["flips"] == []
    assert doc["cka"]["matrix"]["rows"] == ["0", "2"] and doc["cka"]["matrix"]["cols"] == ["0", "2"]


def test_cka_matches_a_direct_computation_on_the_layer_features(inputs: torch.Tensor) -> None:
    from tests.test_compare_cka import cka_numpy

    a, b = tiny_cnn(0), tiny_cnn(1)
    report = reportgen.compare_reports(a, b, inputs, device="cpu", batch_size=5, tap="conv")
    doc = report.to_dict()
    with torch.no_grad():
        features_a = [a[0](inputs), a[2](a[1](a[0](inputs).clone()))]
        features_b = [b[0](inputs), b[2](b[1](b[0](inputs).clone()))]
    direct = [[cka_numpy(x.reshape(20, -1).double().numpy(), y.reshape(20, -1).double().numpy(), batch=5)
               for y in features_b] for x in features_a]
    assert np.array(doc["cka"]["matrix"]["values"]) == pytest.approx(np.array(direct), abs=1e-9)
    # the channel correlation of conv 0, directly
    x, y = features_a[0].transpose(0, 1).reshape(8, -1).double(), features_b[0].transpose(0, 1).reshape(8, -1).double()
    r = [float(np.corrcoef(x[c].numpy(), y[c].numpy())[0, 1]) for c in range(8)]
    got = [c["correlation"] for c in doc["channels"][0]["channels"]]
    assert got == pytest.approx(r, abs=1e-6)
    # the drawn top-k sets: each channel's 5 inputs with the largest max activation, in A and in B
    peaks_a, peaks_b = features_a[0].amax(dim=(2, 3)), features_b[0].amax(dim=(2, 3))
    drawn = doc["channels"][0]["top_sets"]
    assert drawn and all(len(t["inputs_a"]) == 5 for t in drawn)
    for t in drawn:
        c = t["channel"]
        assert t["inputs_a"] == torch.argsort(peaks_a[:, c], descending=True, stable=True)[:5].tolist()
        assert t["inputs_b"] == torch.argsort(peaks_b[:, c], descending=True, stable=True)[:5].tolist()
        assert t["jaccard"] == pytest.approx(len(set(t["inputs_a"]) & set(t["inputs_b"]))
                                             / len(set(t["inputs_a"]) | set(t["inputs_b"])))


def test_per_filter_weight_changes_and_a_planted_filter_ranks_first(inputs: torch.Tensor) -> None:
    a = tiny_cnn(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[2].weight.mul_(1.01)  # every filter of the second conv moves a little ...
        b[2].weight[5] = torch.randn_like(b[2].weight[5])  # ... and one is replaced
    doc = reportgen.compare_reports(a, b, inputs, device="cpu").to_dict()
    layer = next(item for item in doc["layers"] if item["name"] == "2")
    assert layer["filters"][0]["channel"] == 5
    wa, wb = a[2].weight.detach().double(), b[2].weight.detach().double()
    for row in layer["filters"]:
        c = row["channel"]
        assert row["relative_l2"] == pytest.approx(float((wb[c] - wa[c]).norm() / wa[c].norm()), rel=1e-9)
        assert row["cosine"] == pytest.approx(float((wa[c] * wb[c]).sum() / (wa[c].norm() * wb[c].norm())), rel=1e-9)
    whole = layer["weight_change"]
    assert whole["relative_l2"] == pytest.approx(float((wb - wa).norm() / wa.norm()), rel=1e-9)
    first = next(item for item in doc["layers"] if item["name"] == "0")
    assert first["weight_change"]["relative_l2"] == 0.0
    report = reportgen.compare_reports(a, b, inputs, device="cpu")
    assert (report.model.weights.most_changed[0].layer, report.model.weights.most_changed[0].channel) == ("2", 5)


def test_a_planted_flip_is_in_the_gallery(inputs: torch.Tensor) -> None:
    a = tiny_cnn(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        before = a(inputs).argmax(dim=1)
        target = int((before[0] + 1) % 5)
        b[6].bias[target] += 100.0  # B now says `target` for every input
    labels = [int(c) for c in before]  # A is right everywhere
    report = reportgen.compare_reports(a, b, inputs, device="cpu", targets=labels, batch_size=8)
    doc = report.to_dict()
    flipped = [i for i in range(20) if int(before[i]) != target]
    assert doc["predictions"]["flips_total"] == len(flipped)
    assert [f["index"] for f in doc["predictions"]["flips"]] == flipped[:16]
    first = doc["predictions"]["flips"][0]
    assert first["index"] == 0 and first["top_b"][0]["index"] == target and first["top_a"][0]["index"] == labels[0]
    assert doc["predictions"]["negative_flip_rate"] == pytest.approx(len(flipped) / 20)
    assert doc["predictions"]["accuracy_a"] == 1.0
    card = report.model.predictions.flips[0]
    assert card.thumbnail is not None and card.cam_a is not None and card.cam_b is not None
    assert 'alt="Grad-CAM of B' in report.to_html()
    assert report.model.predictions.flips[0].thumbnail is not None
    plain = reportgen.compare_reports(a, b, inputs, device="cpu", targets=labels, batch_size=8, cam=False)
    assert plain.model.predictions.flips[0].cam_a is None
    assert "negative flip: right in A, wrong in B" in report.to_html()


def test_training_run_of_three_checkpoints(tmp_path: Path, inputs: torch.Tensor) -> None:
    model = tiny_cnn(0)
    states = []
    for step in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * step * torch.ones_like(parameter))
        states.append(copy.deepcopy(model.state_dict()))
    path = tmp_path / "middle.pt"
    torch.save(states[1], path)
    report = reportgen.compare_reports(tiny_cnn(0), inputs=inputs, checkpoints=[states[0], path, states[2]],
                                       names=["early", "middle", "late"], device="cpu", batch_size=10)
    doc = report.to_dict()
    assert errors(doc) == []
    run = doc["training_run"]
    assert run["checkpoints"] == ["early", "middle", "late"]
    assert np.array(run["cka_to_last"]).shape == (2, 2) and np.array(run["weight_step"]).shape == (2, 2)
    assert doc["checkpoints"][1]["sha256"] is not None and doc["checkpoints"][0]["sha256"] is None
    html = report.to_html()
    assert 'id="run"' in html and "early → middle → late" in html


def test_page_is_self_contained_and_escaped(inputs: torch.Tensor) -> None:
    a, b = tiny_cnn(0), tiny_cnn(1)
    report = reportgen.compare_reports(a, b, inputs, device="cpu", names=["<script>alert(1)</script>", "b&b"],
                                       title="<b>t</b>")
    html = report.to_html()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<b>t</b>" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    for src in re.findall(r'src="([^"]+)"', html):
        assert src.startswith("data:image/")
    assert "<script" not in html  # the compare page needs no script at all
    assert report._repr_html_().startswith("<iframe")


def test_save_writes_both_atomically(tmp_path: Path, inputs: torch.Tensor) -> None:
    report = reportgen.compare_reports(tiny_cnn(0), tiny_cnn(1), inputs[:8], device="cpu")
    html, data = tmp_path / "c.html", tmp_path / "c.json"
    report.save(html, json_path=data)
    assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert json.loads(data.read_text(encoding="utf-8"))["kind"] == "compare"


def test_models_left_untouched(inputs: torch.Tensor) -> None:
    a, b = tiny_cnn(0), tiny_cnn(1)
    a.train()
    state = copy.deepcopy(a.state_dict())
    reportgen.compare_reports(a, b, inputs, device="cpu")
    assert a.training and b.training  # both were in training mode, and are again
    assert all(torch.equal(state[k], v) for k, v in a.state_dict().items())
    assert not a[0]._forward_hooks and not a[0]._forward_pre_hooks and not a._forward_hooks


def test_different_architectures_skip_what_has_no_counterpart(inputs: torch.Tensor) -> None:
    a = tiny_cnn(0)
    torch.manual_seed(5)
    b = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    doc = reportgen.compare_reports(a, b, inputs, device="cpu").to_dict()
    assert errors(doc) == []
    assert np.array(doc["cka"]["matrix"]["values"]).shape == (2, 1)
    assert doc["unmatched_layers"] == ["0", "2"]
    assert doc["layers"] == []


def test_natural_sort_and_globs(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        (tmp_path / f"epoch_{n}.pt").write_bytes(b"")
    found = expand_weights([str(tmp_path / "epoch_*.pt")])
    assert [Path(p).name for p in found] == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for seed in range(3):
        torch.save(tiny_cnn(seed).state_dict(), tmp_path / f"ckpt_{seed * 5}.pt")
    torch.save(tiny_inputs(12, size=12), tmp_path / "inputs.pt")
    return tmp_path


def test_cli_compares_checkpoints(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", "tests.fixtures.models:tiny_cnn", "--weights", "ckpt_0.pt", "inputs.pt",
                 "--weights", "ckpt_5.pt", "-o", "c.html", "--json", "c.json", "--device", "cpu", "-q"])
    assert code == 0
    doc = json.loads((workspace / "c.json").read_text())
    assert errors(doc) == []
    assert [c["name"] for c in doc["checkpoints"]] == ["ckpt_0.pt", "ckpt_5.pt"]
    assert doc["training_run"] is None
    assert capsys.readouterr().out.split() == ["c.html", "c.json"]


def test_cli_compare_decodes_in_workers_and_gives_the_same_comparison(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 2 decodes the image files in worker processes; --workers 0 in the pass: the same
    JSON and the same page but for the command it prints."""
    from PIL import Image

    from reportgen.engine import prefetch

    rng = np.random.default_rng(5)
    (workspace / "imgs").mkdir()
    for k in range(10):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(workspace / "imgs" / f"{k}.png")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    started = []
    original = prefetch.Prefetcher.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(args[2])  # workers
        original(self, *args, **kwargs)

    monkeypatch.setattr(prefetch.Prefetcher, "__init__", counting)
    pages = {}
    for workers in ("0", "2"):
        code = main(["compare", "tests.fixtures.models:tiny_cnn", "--weights", "ckpt_0.pt", "--weights", "ckpt_5.pt",
                     "imgs", "--batch-size", "4", "--workers", workers, "-o", f"w{workers}.html",
                     "--json", f"w{workers}.json", "--device", "cpu", "-q"])
        assert code == 0
        doc = json.loads((workspace / f"w{workers}.json").read_text())
        doc.get("run", {}).pop("command", None)
        pages[workers] = (doc, (workspace / f"w{workers}.html").read_text(encoding="utf-8"))
    assert started == [2]  # only the run with workers decoded in other processes
    assert pages["0"][0] == pages["2"][0]
    assert pages["0"][1].replace("--workers 0", "--workers 2").replace("w0.", "w2.") == pages["2"][1]


def test_cli_glob_makes_a_training_run(workspace: Path) -> None:
    code = main(["compare", "tests.fixtures.models:tiny_cnn", "--weights", "ckpt_*.pt", "inputs.pt",
                 "-o", "run.html", "--json", "run.json", "--device", "cpu", "-q"])
    assert code == 0
    doc = json.loads((workspace / "run.json").read_text())
    assert [c["name"] for c in doc["checkpoints"]] == ["ckpt_0.pt", "ckpt_5.pt", "ckpt_10.pt"]
    assert doc["training_run"]["checkpoints"] == ["ckpt_0.pt", "ckpt_5.pt", "ckpt_10.pt"]


def test_cli_against_a_second_model(workspace: Path) -> None:
    code = main(["compare", "tests.fixtures.models:tiny_cnn", "--against", "tests.fixtures.models:tiny_cnn",
                 "--against-weights", "ckpt_5.pt", "inputs.pt", "-o", "ab.html", "--device", "cpu", "-q", "--no-cam"])
    assert code == 0
    assert (workspace / "ab.html").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--weights", "ckpt_0.pt"], "compare needs two checkpoints or more"),
    (["--weights", "nothing_*.pt", "--weights", "ckpt_0.pt"], "--weights nothing_*.pt matches no file"),
    (["--weights", "ckpt_0.pt", "--weights", "missing.pt"], "checkpoint not found: missing.pt"),
    (["--against-weights", "ckpt_0.pt", "--weights", "a", "--weights", "b"], "--against-weights goes with --against"),
    (["--weights", "ckpt_0.pt", "--weights", "ckpt_5.pt", "-o", "inputs.pt"], "would overwrite the input file"),
])
def test_cli_errors_are_one_line(workspace: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                 message: str) -> None:
    code = main(["compare", "tests.fixtures.models:tiny_cnn", "inputs.pt", "--device", "cpu", "-q", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("reportgen: error: ") and message in err and err.count("\n") == 1
    assert not (workspace / "compare.html").exists()


def test_max_size_draws_less(inputs: torch.Tensor) -> None:
    a = tiny_cnn(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[6].bias[0] += 100.0
    full = reportgen.compare_reports(a, b, inputs, device="cpu", max_size_mb=0)
    size = len(full.to_html().encode())
    small = reportgen.compare_reports(a, b, inputs, device="cpu", max_size_mb=(size - 1000) / 1e6)
    assert len(small.to_html().encode()) <= size - 1000
    assert small.model.budget is not None
    assert small.to_dict()["predictions"]["flips_total"] == full.to_dict()["predictions"]["flips_total"]


def test_alerts_diff_and_newly_dead_channels_from_a_planted_change(inputs: torch.Tensor) -> None:
    a = tiny_cnn(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].bias[2] = -1e3  # channel 2 of the first conv never gets past its ReLU in B
        b[2].weight[3] = 0.0  # filter 3 of the second conv is all zero in B
    doc = reportgen.compare_reports(a, b, inputs, device="cpu").to_dict()
    assert errors(doc) == []
    found = {(item["kind"], item["layer"]) for item in doc["alerts_diff"]["in_b_not_a"]}
    assert ("dead-filter", "0") in found and ("flat-filter", "2") in found
    assert not {("dead-filter", "0"), ("flat-filter", "2")} & {
        (item["kind"], item["layer"]) for item in doc["alerts_diff"]["in_a_not_b"]}
    first = next(layer for layer in doc["channels"] if layer["name"] == "0")
    assert 2 in first["newly_dead"] and first["revived"] == []
    assert first["channels"][2]["correlation"] is None  # constant in B: no correlation


def test_models_with_different_heads_are_not_compared_on_predictions(inputs: torch.Tensor) -> None:
    report = reportgen.compare_reports(tiny_cnn(0, classes=5), tiny_cnn(1, classes=3), inputs, device="cpu")
    doc = report.to_dict()
    assert errors(doc) == []
    assert doc["predictions"] is None
    assert any("A outputs 5 classes and B 3" in note for note in doc["notes"])
    assert doc["layers"] and doc["cka"]["layers"]  # the convs still compare


def test_demo_compare_shows_the_demo_models_training_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--compare", "--json", "demo.json", "-q", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.split() == ["demo-compare.html", "demo.json"]
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert errors(doc) == []
    assert [c["name"] for c in doc["checkpoints"]] == ["epoch 1", "epoch 6", "epoch 12"]
    run = doc["training_run"]
    assert len(run["cka_to_last"]) == 2 and len(run["weight_step"]) == 2
    # the layers settle: at epoch 6 every layer is at least as close to the final one as at epoch 1
    for early, middle in zip(run["cka_to_last"][0], run["cka_to_last"][1]):
        assert middle >= early - 0.05
    html = (tmp_path / "demo-compare.html").read_text()
    assert "epoch 1 → epoch 6 → epoch 12" in html and 'id="run"' in html


def test_compare_flag_is_only_for_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["tests.fixtures.models:tiny_cnn", "--compare", "-q"]) == 2
    assert "--compare goes with MODEL `demo`" in capsys.readouterr().err


def test_a_pass_split_in_two_shares_merges_to_the_whole(inputs: torch.Tensor) -> None:
    """Two processes each run a share of the inputs; their states add up to one pass's."""
    from reportgen.analyze import AnalysisOptions
    from reportgen.compare_pass import ComparePass, build_sides
    from reportgen.engine.loop import run_batches
    from reportgen.inputs import from_tensor
    from reportgen.sites import RAW_BY_REQUEST

    models = [tiny_cnn(0).eval(), tiny_cnn(1).eval()]
    selected = [["0", "2"], ["0", "2"]]
    options = AnalysisOptions(tap="conv")

    def run(first: int, count: int) -> ComparePass:
        sides = build_sides(models, selected, [(None, RAW_BY_REQUEST)] * 2, options, top_k=3)
        joined = ComparePass(sides, from_tensor(inputs), max_flips=16)
        with torch.inference_mode():
            run_batches(joined.inputs, joined.step, device=torch.device("cpu"), dtype=torch.float32,
                        batch_size=4, first=first, count=count, transaction=joined)
        return joined

    whole, share = run(0, 20), run(0, 8)
    share.merge(run(8, 20))
    assert share.state.cka.values() == pytest.approx(whole.state.cka.values(), abs=1e-12)
    assert (share.state.cka.batches, share.state.cka.inputs_used) == (whole.state.cka.batches, 20)
    for key, sums in whole.state.correlation.items():
        assert share.state.correlation[key].correlation() == pytest.approx(sums.correlation(), abs=1e-9,
                                                                           nan_ok=True)
    assert share.state.flips_total == whole.state.flips_total
    assert share.sides[0].predictions.records() == whole.sides[0].predictions.records()
    top_whole = whole.sides[0].activations.results()[0].top_inputs
    assert np.array_equal(share.sides[0].activations.results()[0].top_inputs, top_whole)
