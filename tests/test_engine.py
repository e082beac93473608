"""The engine: one pass feeds every collector, a pass split in shares merges to the same result,
impact's clean pass rides the main one, and nothing but `hooks.py` attaches a hook."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.collectors.ablation_baseline import AblationBaselineCollector
from reportgen.collectors.activations import ActivationCollector
from reportgen.collectors.features import FeatureCollector
from reportgen.collectors.misfiring import MisfiringCollector
from reportgen.collectors.predictions import PredictionCollector
from reportgen.engine.main_pass import MainPass
from reportgen.impact import ImpactOptions
from reportgen.inputs import from_tensor
from reportgen.sites import RAW_BY_REQUEST

CPU = torch.device("cpu")


def small_model() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()


def collectors(model: nn.Module, labelled: bool) -> list:
    return [ActivationCollector(max_channels=4, tile_size=4, keep_inputs=5, top_k=3, peak_channels=2),
            PredictionCollector(), MisfiringCollector(("0", "3")), FeatureCollector(model, max_points=7),
            AblationBaselineCollector(labelled=labelled, verify_count=6)]


def run(model: nn.Module, inputs, riders: list, *, first: int = 0, count: int | None = None, batch_size: int = 6):
    main = MainPass(model, riders, observed=["0", "3"], plan=None, raw_reason=RAW_BY_REQUEST)
    with torch.inference_mode():
        main.run(inputs, device=CPU, dtype=torch.float32, batch_size=batch_size, first=first, count=count)
    return main


def test_a_pass_split_in_two_shares_merges_to_the_one_pass_result() -> None:
    """What a torchrun split will rely on: every collector's merge is exact. Ties are planted
    (duplicated inputs) so that the top-k tie rule (lower input index) is exercised."""
    model = small_model()
    images = torch.rand(30, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    images[17] = images[4]  # a tie across the two shares: input 4 must win it
    images[25] = images[21]
    inputs = from_tensor(images)
    inputs.labels = [i % 4 for i in range(30)]
    whole = collectors(model, True)
    run(model, inputs, whole)
    first, second = collectors(model, True), collectors(model, True)
    # the same batches as the whole pass (a conv's last bits can depend on the batch size);
    # only the order of the float64 additions differs
    run(model, inputs, first, count=12)
    run(model, inputs, second, first=12)
    for mine, theirs in zip(first, second):
        mine.merge(theirs)
    merged = first
    for a, b in zip(whole[0].results(), merged[0].results()):
        assert a.key == b.key and a.inputs_seen == b.inputs_seen == 30
        for name in ("mean", "max", "min", "fraction_active", "fraction_inputs_active"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(a.top_inputs, b.top_inputs)
        np.testing.assert_array_equal(a.top_positions, b.top_positions)
        assert sorted(a.tiles) == sorted(b.tiles) == [0, 1, 2, 3, 4]
        for index in a.tiles:
            np.testing.assert_array_equal(a.tiles[index], b.tiles[index])
    for row in whole[0].results()[0].top_inputs.tolist():  # a tie goes to the earlier input
        for early, late in ((4, 17), (21, 25)):
            assert late not in row or (early in row and row.index(early) < row.index(late))
    assert whole[1].records() == merged[1].records()
    m_whole, m_merged = whole[2].result(), merged[2].result()
    assert (m_whole.correct, m_whole.wrong, m_whole.predictions) == (m_merged.correct, m_merged.wrong,
                                                                     m_merged.predictions)
    for a, b in zip(m_whole.layers, m_merged.layers):
        np.testing.assert_allclose(a.mean_correct, b.mean_correct, rtol=1e-12)
        np.testing.assert_array_equal(a.top_inputs, b.top_inputs)
    f_whole, f_merged = whole[3].result(), merged[3].result()
    np.testing.assert_array_equal(f_whole.indices, f_merged.indices)
    np.testing.assert_allclose(f_whole.vectors, f_merged.vectors, rtol=1e-6)
    b_whole, b_merged = whole[4].result(), merged[4].result()
    np.testing.assert_array_equal(b_whole.targets, b_merged.targets)
    assert float(b_whole.scores.loss) == pytest.approx(float(b_merged.scores.loss), rel=1e-12)
    assert sorted(b_whole.verify) == sorted(b_merged.verify) == list(range(6))
    for index in b_whole.verify:
        np.testing.assert_allclose(b_whole.verify[index], b_merged.verify[index], rtol=1e-6)


def test_statistics_equal_an_independent_computation() -> None:
    model = small_model()
    images = torch.rand(11, 3, 9, 9, generator=torch.Generator().manual_seed(5))
    activations = ActivationCollector(max_channels=6, tile_size=4, keep_inputs=2, top_k=2, peak_channels=6)
    main = run(model, from_tensor(images), [activations], batch_size=4)
    with torch.no_grad():
        outputs = {"0": model[0](images), "3": model[3](model[2](model[1](model[0](images))))}
    layers = {layer.key: layer for layer in activations.results(main.layer_order())}
    assert list(layers) == ["0", "3"]
    for key, output in outputs.items():
        flat = output.double().flatten(2)
        np.testing.assert_allclose(layers[key].mean, flat.mean(dim=(0, 2)).numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(layers[key].max, flat.amax(dim=(0, 2)).numpy(), rtol=1e-6)
        np.testing.assert_allclose(layers[key].fraction_active, (flat > 0).double().mean(dim=(0, 2)).numpy())
        best = flat.amax(dim=2).argsort(dim=0, descending=True, stable=True)[:2].T
        np.testing.assert_array_equal(layers[key].top_inputs[: best.shape[0]], best.numpy())


def _clean_rows(model: nn.Module, **options) -> int:
    """Rows of the inputs the model ran unablated: forwards where the ablated conv (model[3])
    saw as many rows as the first conv (ablation widens the batch at model[3] itself)."""
    seen: list[list[int]] = []
    handles = [model[0].register_forward_hook(lambda m, a, o: seen.append([o.shape[0]])),
               model[3].register_forward_hook(lambda m, a, o: seen[-1].append(o.shape[0]))]
    try:
        images = torch.rand(20, 3, 9, 9, generator=torch.Generator().manual_seed(1))
        reportgen.generate_report(model, images, device="cpu", targets=[i % 4 for i in range(20)], batch_size=8,
                                  max_size_mb=0, cam=False, **options)
    finally:
        for handle in handles:
            handle.remove()
    return sum(rows[0] for rows in seen if len(rows) == 2 and rows[0] == rows[1])


def test_ablation_and_misfiring_run_no_clean_pass_of_their_own() -> None:
    model = small_model()
    plain = _clean_rows(model)
    assert plain == 1 + 20  # the one input that learns the activation sites, then the main pass
    with_impact = _clean_rows(model, impact=ImpactOptions(ablation=True, misfiring=True,
                                                          ablation_layers=("3",), ablation_max_channels=5))
    # only ablation's one-input channel count is added: before the engine, a second clean pass
    # over the 20 inputs ran (41 + 1 rows)
    assert with_impact == plain + 1


def test_only_the_hook_module_attaches_hooks() -> None:
    """Every hook goes through `hooks.HookSet` (its exit removes them all)."""
    source = Path(reportgen.__file__).parent
    attaching = re.compile(r"\.register_(forward|full_backward|backward)(_pre)?_hook\(")
    offenders = [str(path.relative_to(source)) for path in sorted(source.rglob("*.py"))
                 if path.name != "hooks.py" and attaching.search(path.read_text())]
    assert offenders == []


def test_the_model_is_left_as_it_was_when_a_collector_pass_fails() -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("broken on the third batch")
            return self.conv(x).mean(dim=(2, 3))

    model = Breaks().train()
    with pytest.raises(reportgen.ReportError, match="broken on the third batch"):
        reportgen.generate_report(model, torch.rand(12, 3, 6, 6), device="cpu", batch_size=4, cam=False)
    assert model.training and model.conv.training
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.conv._forward_hooks


def test_decoding_workers_give_the_same_report_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 2 decodes ahead in worker processes; --workers 0 between passes: the same bytes,
    also with an unreadable file left out part-way (the set changes under the prefetcher)."""
    from PIL import Image

    from reportgen.cli import main

    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        for k in range(9):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "ds" / name / f"{k}.png")
    # in the first class, mid-run: a truncated PNG, whose header reads at listing but whose pixels
    # fail to decode in a worker
    whole = (tmp_path / "ds" / "a" / "3.png").read_bytes()
    (tmp_path / "ds" / "a" / "3.png").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    outputs = []
    folders = {"0": "workers-output-folder-zero", "2": "workers-output-folder-twox"}
    for workers, folder in folders.items():
        (tmp_path / folder).mkdir()
        out = tmp_path / folder / "r.html"
        code = main(["tests.fixtures.models:tiny_cnn", "--model-arg", "classes=2", "--dataset", str(tmp_path / "ds"),
                     "--batch-size", "4", "--workers", workers, "--device", "cpu", "-q", "-o", str(out),
                     "--json", str(out.with_suffix(".json"))])
        assert code == 0
        outputs.append((out.read_bytes(), json.loads(out.with_suffix(".json").read_text())))
    (html0, json0), (html2, json2) = outputs
    assert len(json0["inputs"]) == 17
    assert any("unreadable input file(s) skipped" in n and "3.png" in n for n in json0["notes"])
    json0["run"].pop("command"), json2["run"].pop("command")
    assert json0 == json2
    # the page differs only in the command it prints (--workers N and the output folder)
    assert html0.replace(b"--workers 0", b"--workers 2").replace(folders["0"].encode(), folders["2"].encode()) == html2


@pytest.mark.parametrize("chunk", [1, 3])
def test_workers_decode_in_other_processes_in_order_and_failures_surface_when_asked_for(chunk: int) -> None:
    """The prefetcher's inputs come from worker processes (each input is filled with the pid
    that made it), in the pass's order, one at a time or `chunk` per transfer; a failure is
    raised in the main process at the input that failed; an input asked for out of order is
    loaded in the main process."""
    import os

    from reportgen.engine.prefetch import prefetching
    from reportgen.errors import ReportError
    from reportgen.inputs import InputSet

    def load(raw: int) -> torch.Tensor:
        if raw == 5:
            raise ReportError("input 5 is unreadable")
        return torch.tensor([float(raw), float(os.getpid())])

    inputs = InputSet(names=[f"i{k}" for k in range(10)], loader=load, paths=[f"i{k}.png" for k in range(10)])
    with prefetching(inputs, workers=2, lookahead=4, first=2, stop=10, chunk=chunk) as decoding:
        assert decoding
        first = [inputs.load(k) for k in (2, 3, 4)]
        with pytest.raises(ReportError, match="input 5 is unreadable"):
            inputs.load(5)
        later = [inputs.load(k) for k in (6, 7)]
        again = inputs.load(2)  # already handed out: loaded here
        before = inputs.load(0)  # not in the plan: loaded here
    assert [int(t[0]) for t in first + later] == [2, 3, 4, 6, 7]
    assert all(int(t[1]) != os.getpid() for t in first + later)
    assert int(again[1]) == os.getpid() and int(before[1]) == os.getpid()
    assert inputs.loader is load  # put back
    in_memory = InputSet(names=["a", "b"], loader=load)  # tensors in memory: nothing to decode
    with prefetching(in_memory, workers=2, lookahead=4, first=0, stop=2) as decoding:
        assert not decoding and in_memory.loader is load


@pytest.mark.parametrize("cores, ranks_here, expected", [(1, None, 0), (2, None, 1), (8, None, 4), (16, "1", 4),
                                                       (2, "2", 0), (8, "2", 3), (16, "8", 1)])
def test_default_workers_share_the_cores_among_the_ranks_of_a_node(
        monkeypatch: pytest.MonkeyPatch, cores: int, ranks_here: str | None, expected: int) -> None:
    from reportgen.engine import prefetch

    monkeypatch.setattr(prefetch.os, "cpu_count", lambda: cores)
    if ranks_here is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks_here)
    assert prefetch.default_workers() == expected


def test_rank_shares_are_whole_batches_covering_every_input_once() -> None:
    from reportgen.distributed import Group

    for world in (1, 2, 3, 5):
        for total in (1, 3, 16, 17, 40, 101):
            for batch in (1, 4, 16):
                shares = Group(0, world, world, "gloo").shares(total, batch)
                covered = [i for first, stop in shares for i in range(first, stop)]
                assert covered == list(range(total))  # in order, none twice, none dropped
                assert all(first % batch == 0 for first, stop in shares if stop > first)  # whole batches
                assert shares[0][1] > 0  # rank 0 (the summary, the shown inputs) has the first batch
