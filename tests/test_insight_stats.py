"""Weight statistics against numpy, duplicate search (exact and projected), the embedding's PCA,
the per-class view, and the SVG charts' escaping."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import reportgen
from tests.helpers import run_main_pass
from reportgen.analysis import PredictionRecord
from reportgen.collectors.features import FeatureCollector
from reportgen.embedding import MAX_POINTS, outliers, pca_2d
from reportgen.grids import decode_data_uri
from reportgen.per_class import per_class
from reportgen.svg import heatmap, histogram, scatter
from reportgen.weight_stats import PROJECTION_DIM, untrained_test, weight_stats
from tests.fixtures.insight_models import stripes_inputs, trained_cnn


def test_layer_and_filter_numbers_match_numpy() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight[2, :, 0, :] = 0.0  # 12 exact zeros in filter 2
        conv.weight[4, 1, 1, 1] = float("inf")
    stats = weight_stats(conv)
    w = conv.weight.detach().double().numpy().reshape(6, -1)
    finite = np.isfinite(w)
    for i in range(6):
        row = w[i][finite[i]]
        assert stats.filters.mean[i] == pytest.approx(row.mean(), rel=1e-5, abs=1e-8)
        assert stats.filters.std[i] == pytest.approx(row.std(), rel=1e-4)
        assert stats.filters.min[i] == pytest.approx(row.min(), rel=1e-6)
        assert stats.filters.max[i] == pytest.approx(row.max(), rel=1e-6)
        assert stats.filters.norm[i] == pytest.approx(np.linalg.norm(row), rel=1e-5)
        assert stats.filters.sparsity[i] == pytest.approx((w[i] == 0).mean())
    assert stats.filters.nonfinite == (0, 0, 0, 0, 1, 0) and stats.nonfinite == 1
    all_finite = w[finite]
    assert stats.count == w.size and stats.sparsity == pytest.approx(12 / w.size)
    assert stats.mean == pytest.approx(all_finite.mean(), rel=1e-5) and stats.std == pytest.approx(all_finite.std(), rel=1e-4)
    assert sum(stats.histogram.counts) == all_finite.size
    assert (stats.histogram.low, stats.histogram.high) == (pytest.approx(all_finite.min()), pytest.approx(all_finite.max()))


def test_duplicates_in_a_big_layer_go_through_the_projection_and_are_exact() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(256, 300, 3, bias=False)
    with torch.no_grad():
        base = conv.weight[10].clone()
        first, second = torch.randn_like(base), torch.randn_like(base)
        first -= (first * base).sum() / base.square().sum() * base  # orthogonal to base
        second -= (second * base).sum() / base.square().sum() * base
        second -= (second * first).sum() / first.square().sum() * first  # ... and to first

        def at(cos: float, noise: torch.Tensor) -> torch.Tensor:  # exactly this cosine to `base`
            return base + math.tan(math.acos(cos)) * base.norm() * noise / noise.norm()

        conv.weight[200] = 3.0 * at(0.995, first)  # scale does not matter for cosine
        conv.weight[150] = at(0.98, second)  # below the 0.99 threshold; 0.995 * 0.98 to filter 200
    assert conv.weight[0].numel() > PROJECTION_DIM and 300 * 300 * 2304 > 5e7  # the projected path
    stats = weight_stats(conv, duplicate_threshold=0.99)
    assert stats.duplicate_pairs == 1
    pair = stats.duplicates[0]
    assert (pair.a, pair.b) == (10, 200) and pair.cosine == pytest.approx(0.995, abs=1e-5)
    looser = weight_stats(conv, duplicate_threshold=0.97)
    assert {(p.a, p.b) for p in looser.duplicates} == {(10, 200), (10, 150), (150, 200)}


@pytest.mark.parametrize("block", [1, 7 * 300, 1 << 19])  # a row at a time, 7 rows, all rows
def test_duplicate_search_finds_the_same_pairs_whatever_its_block(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    from reportgen import weight_stats as module

    monkeypatch.setattr(module, "SCREEN_BLOCK", block)
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(300, 8, generator=generator)
    points[123] = points[7] + 0.01  # pairs across blocks, and one inside a block
    points[299] = points[0] - 0.02
    points[8] = points[7] + 0.015
    limit = 0.05
    found = {tuple(pair) for pair in module._close_pairs(points, limit).tolist()}
    distances = torch.cdist(points.double(), points.double()).square()
    distances.fill_diagonal_(math.inf)
    expected = {tuple(pair) for pair in (distances <= limit).nonzero().tolist()}
    assert found == expected and {(7, 123), (123, 7), (0, 299), (7, 8)} <= found


def test_filters_in_different_groups_are_never_duplicates() -> None:
    depthwise = nn.Conv2d(4, 4, 3, groups=4)
    with torch.no_grad():
        depthwise.weight[:] = depthwise.weight[0]
    assert weight_stats(depthwise).duplicate_pairs == 0
    grouped = nn.Conv2d(4, 4, 3, groups=2)  # filters 0, 1 see channels 0-1; filters 2, 3 see 2-3
    with torch.no_grad():
        grouped.weight[1] = grouped.weight[0]
        grouped.weight[3] = grouped.weight[0]
    assert [(p.a, p.b) for p in weight_stats(grouped).duplicates] == [(0, 1)]


def test_untrained_test_tells_fresh_from_trained() -> None:
    torch.manual_seed(2)
    fresh = {"a": nn.Conv2d(3, 16, 3).weight, "b": nn.Conv2d(16, 32, 3).weight}
    verdict, layers = untrained_test(fresh)
    assert verdict.match.startswith("PyTorch default") and verdict.distance < verdict.critical
    assert verdict.layers == 2 and verdict.sample == 432 + 4608
    assert all(test.distances[0].init == verdict.match and test.distances[0].distance < test.critical
               for test in layers.values())
    normal = nn.Conv2d(16, 32, 3)
    nn.init.kaiming_normal_(normal.weight, mode="fan_out", nonlinearity="relu")
    assert untrained_test({"n": normal.weight})[0].match == "kaiming-normal N(0, 2/fan_out)"
    trained = {n: m.weight for n, m in trained_cnn().named_modules() if isinstance(m, nn.Conv2d)}
    result, _ = untrained_test(trained)
    assert result.match == "" and result.distance > 1.5 * result.critical
    assert untrained_test({"tiny": nn.Conv2d(1, 2, 3).weight})[0].note.startswith("only 18 weights")
    with torch.no_grad():
        normal.weight[0, 0, 0, 0] = float("nan")
    assert untrained_test({"n": normal.weight})[0].note == "a conv layer holds NaN/Inf weights"


def test_pca_matches_numpy_and_names_the_outlier() -> None:
    generator = np.random.default_rng(0)
    points = generator.normal(size=(40, 6)) * np.array([5.0, 2.0, 0.3, 0.3, 0.3, 0.3])
    points[17] += np.array([0, 0, 0, 0, 0, 60.0])  # far away along a direction with no spread
    projection = pca_2d(points.astype(np.float32))
    centred = points - points.mean(axis=0)
    _, singular, vh = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vh[:2].T
    # the same up to each axis's sign, which pca_2d fixes deterministically
    for axis in range(2):
        sign = np.sign(expected[:, axis] @ projection.coordinates[:, axis])
        np.testing.assert_allclose(projection.coordinates[:, axis], sign * expected[:, axis], rtol=1e-4, atol=1e-4)
    assert projection.explained == pytest.approx(tuple(s * s / (singular**2).sum() for s in singular[:2]), rel=1e-5)
    assert projection.outliers == (17,)
    assert outliers(np.ones(10)) == ()


def test_randomized_pca_agrees_with_the_exact_one() -> None:
    generator = np.random.default_rng(1)
    basis = generator.normal(size=(2, 700))
    points = generator.normal(size=(600, 2)) @ (basis * np.array([[6.0], [3.0]])) + 0.1 * generator.normal(size=(600, 700))
    projection = pca_2d(points.astype(np.float32))  # min(600, 700) > 512: randomized path
    centred = points - points.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    assert projection.explained == pytest.approx(tuple(s * s / (singular**2).sum() for s in singular[:2]), rel=1e-3)


def test_feature_collector_keeps_the_classifier_input_and_stays_bounded() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    collector = FeatureCollector(model, max_points=10)
    images = torch.rand(24, 1, 6, 6)
    run_main_pass(model, [], images, batch_size=8, collectors=[collector])
    features = collector.result()
    assert features is not None and features.vectors.shape == (10, 3) and features.total == 24
    assert features.indices.tolist() == list(range(10))
    with torch.no_grad():
        expected = model[2](model[1](model[0](images[:10])))
    np.testing.assert_allclose(features.vectors, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not model[3]._forward_hooks and not model._forward_pre_hooks
    assert MAX_POINTS == 2000


def test_report_embedding_and_per_class_view() -> None:
    images, labels = stripes_inputs(30)
    targets = labels.tolist()
    targets[0] = (targets[0] + 1) % 3  # one deliberately wrong label: one misclassified input
    report = reportgen.generate_report(trained_cnn(), images, device="cpu", targets=targets,
                                       labels=["horizontal", "vertical", "blob"])
    embedding = report.model.insight.embedding
    assert embedding.dimension == 12 and embedding.total_inputs == 30 and len(embedding.points) == 30
    assert embedding.colour_by == "true label"
    assert {label for label, _ in embedding.legend} == {"horizontal", "vertical", "blob"}
    pc = report.model.insight.per_class
    with torch.no_grad():
        predicted = trained_cnn()(images).argmax(dim=1).tolist()
    correct = sum(p == t for p, t in zip(predicted, targets))
    assert (pc.labelled, pc.correct) == (30, correct)
    assert sum(map(sum, pc.confusion)) == 30
    for t, p, n in pc.confusion_pairs:
        assert n == sum(1 for a, b in zip(targets, predicted) if (a, b) == (t, p))
    assert [w.input_index for w in pc.wrong] == [i for i, (p, t) in enumerate(zip(predicted, targets)) if p != t]
    assert pc.wrong[0].input_index == 0 and pc.wrong[0].true_label == ["horizontal", "vertical", "blob"][targets[0]]
    html = report.to_html()
    assert 'id="per-class"' in html and 'id="embedding"' in html


def test_per_class_without_labels_is_absent() -> None:
    records = [PredictionRecord(index=0, top_indices=(1, 0), top_probabilities=(0.9, 0.1), label=None,
                                label_probability=None)]
    assert per_class(records, {0: "a"}, lambda i: None if i is None else str(i)) is None


def svg_text(image: reportgen.report_model.EncodedImage) -> str:  # type: ignore[name-defined]
    assert image.data_uri.startswith("data:image/svg+xml;base64,")
    return decode_data_uri(image.data_uri).decode("utf-8")


def test_svg_charts_escape_names_and_carry_no_script() -> None:
    hostile = '<script>alert(1)</script>&"'
    chart = heatmap([[1, 2], [0, 3]], [hostile, "b"], title=hostile)
    text = svg_text(chart)
    assert "<script" not in text and "&lt;script&gt;" in text
    dots = svg_text(scatter([0.0, 1.0, 2.0], [0.0, 1.0, 0.5], ["#000"] * 3, marked=[(1, hostile)], title="t"))
    assert "<script" not in dots and dots.count("<circle") == 4  # 3 points + 1 ring
    bars = svg_text(histogram([1, 4, 2, 0], -1.0, 1.0, title="w"))
    assert bars.count("<rect") == 1 + 3 + 0  # background + three non-empty bins
    assert "stroke-dasharray" in bars  # the 0 line, inside [-1, 1]
    assert histogram([], math.nan, math.nan, title="w") is None


def test_activity_bars_mark_dead_channels_red() -> None:
    images, _ = stripes_inputs(8)
    model = trained_cnn()
    with torch.no_grad():
        model[2].bias[5] = -1000.0
    section = reportgen.generate_report(model, images, device="cpu").model.sections[1]
    picture = np.asarray(Image.open(io.BytesIO(decode_data_uri(section.insight.activity_chart.data_uri))).convert("RGB"))
    assert picture.shape[1] == 12  # one column per channel
    assert tuple(picture[0, 5]) == (209, 36, 47) and tuple(picture[0, 4]) != (209, 36, 47)
