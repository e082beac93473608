"""Misfiring filters: a channel wired to fire on exactly the misclassified inputs is found, with
those inputs; the statistics match a direct computation; memory does not grow with the inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reportgen.api import generate_report
from reportgen.impact import ImpactOptions
from reportgen.collectors.misfiring import MisfiringCollector
from reportgen.misfiring import flagged
from tests.fixtures.impact_models import MarkerNet, marker_inputs
from tests.helpers import run_main_pass

CPU = torch.device("cpu")
MARKER_CHANNEL = 1


def _run(model, images, labels, batch_size=5):
    """The misfiring collector on the raw output of `conv`, riding the engine's main pass."""
    collector = MisfiringCollector(("conv",))
    model.eval()
    run_main_pass(model, ["conv"], images, batch_size=batch_size, collectors=[collector], labels=labels)
    return collector.result()


def test_the_marker_channel_misfires_on_exactly_the_misclassified_inputs():
    model = MarkerNet()
    images, labels, marked = marker_inputs(24)
    result = _run(model, images, labels)
    assert result.wrong == len(marked) == 4 and result.correct == 20
    assert sorted(result.predictions) == marked
    assert all(result.predictions[i] == (0, 1) for i in marked)  # true 0, predicted 1
    (layer,) = result.layers
    assert flagged(layer, result) == [MARKER_CHANNEL]
    assert layer.effect[MARKER_CHANNEL] > 3
    # the evidence channels are *lower* on the wrong inputs (they are dark class-0 images)
    assert layer.effect[0] < 0 and layer.effect[2] < 0
    # the inputs that show it: the marked ones, strongest first
    shown = [int(i) for i in layer.top_inputs[MARKER_CHANNEL] if i >= 0]
    assert len(shown) == 3 and set(shown) <= set(marked)
    assert list(layer.top_values[MARKER_CHANNEL]) == sorted(layer.top_values[MARKER_CHANNEL], reverse=True)


def test_statistics_match_a_direct_computation_whatever_the_batch_size():
    model = MarkerNet().eval()
    images, labels, marked = marker_inputs(24, seed=3)
    with torch.no_grad():
        means = model.conv(images).mean(dim=(2, 3)).double().numpy()
    wrong = np.zeros(24, dtype=bool)
    wrong[marked] = True
    expected_effect = []
    for channel in range(3):
        a, b = means[wrong, channel], means[~wrong, channel]
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        expected_effect.append((a.mean() - b.mean()) / pooled)
    for batch_size in (1, 7, 24):
        (layer,) = _run(model, images, labels, batch_size=batch_size).layers
        assert layer.mean_wrong == pytest.approx(means[wrong].mean(axis=0), rel=1e-6)
        assert layer.mean_correct == pytest.approx(means[~wrong].mean(axis=0), rel=1e-6)
        assert layer.effect == pytest.approx(np.array(expected_effect), rel=1e-5)
        top = means[marked, MARKER_CHANNEL]
        assert layer.top_values[MARKER_CHANNEL] == pytest.approx(np.sort(top)[::-1][:3], rel=1e-6)


def test_tracker_memory_is_bounded_by_channels_not_inputs():
    model = MarkerNet().eval()
    images, labels, _ = marker_inputs(60, seed=1)
    collector = MisfiringCollector(("conv",), k=3)
    run_main_pass(model, ["conv"], images, batch_size=6, collectors=[collector], labels=labels)
    sums = collector.state.sums["conv"]
    held = [sums.top_values, sums.top_inputs, *sums.sum.values(), *sums.sumsq.values()]
    assert all(t.shape[0] == 3 and t.numel() <= 9 for t in held)
    assert not collector._pending  # the per-input means of a batch are gone once it is counted
    assert not model.conv._forward_hooks and not model._forward_hooks and not model._forward_pre_hooks


def test_report_lists_the_misfiring_filter_with_its_inputs_and_says_when_it_cannot():
    model = MarkerNet()
    images, labels, marked = marker_inputs(24)
    names = [f"img-{i:02d}" for i in range(24)]
    report = generate_report(model, images, targets=labels, input_names=names, labels=["dark", "bright"],
                             max_size_mb=0, impact=ImpactOptions(misfiring=True))
    misfiring = report.to_dict()["impact"]["misfiring"]
    assert misfiring["wrong"] == 4 and misfiring["note"] == ""
    (channel,) = misfiring["channels"]
    assert channel["layer"] == "conv" and channel["channel"] == MARKER_CHANNEL
    assert {ex["input"] for ex in channel["examples"]} <= {names[i] for i in marked}
    assert all(ex["true_label"] == "dark" and ex["predicted_label"] == "bright" for ex in channel["examples"])
    assert misfiring["layers"][0]["flagged"] == [MARKER_CHANNEL]
    html = report.to_html()
    assert 'id="impact-misfiring"' in html and "img-" in html

    # without the marker nothing is misclassified: nothing can misfire, and the report says so
    clean = images.clone()
    clean[:, 1] = 0
    quiet = generate_report(model, clean, targets=labels, max_size_mb=0, impact=ImpactOptions(misfiring=True))
    assert quiet.to_dict()["impact"]["misfiring"]["channels"] == []
    assert "classified correctly" in quiet.to_dict()["impact"]["misfiring"]["note"]

    # no labels at all: a note instead of a section
    unlabelled = generate_report(model, images, max_size_mb=0, impact=ImpactOptions(misfiring=True))
    impact = unlabelled.to_dict()["impact"]
    assert impact["misfiring"] is None and "need true labels" in impact["notes"][0]
