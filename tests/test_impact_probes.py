"""Perturbation probes: a rotation-invariant filter scores stable under rotation and an oriented one
does not; FGSM lowers the true-class probability of a trained model; strips show what was compared."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reportgen.errors import ReportError
from reportgen.grids import decode_data_uri
from reportgen.impact import ImpactOptions, build_impact
from reportgen.inputs import from_tensor
from reportgen.model_state import preserved_modes
from reportgen.probes import ProbeOptions, parse_kinds, parse_strength, run_probes, similarity
from tests.fixtures.impact_models import blob_and_edge_conv, stripes, trained_stripes_cnn

CPU = torch.device("cpu")
BLOB, EDGE = 0, 1


def _noise_images(count: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _probe(model: nn.Module, images: torch.Tensor, kinds, labels=None, **options):
    inputs = from_tensor(images)
    if labels is not None:
        inputs.labels = list(labels)
    with preserved_modes(model):
        model.eval()
        run = run_probes(model, inputs, CPU, ["0"], ProbeOptions(kinds=tuple(kinds), **options), count=len(images))
    return {result.kind: result for result in run.results}


def test_isotropic_blob_is_stable_under_rotation_and_an_oriented_edge_is_not():
    model = blob_and_edge_conv()
    results = _probe(model, _noise_images(), ["rotate"])
    (layer,) = results["rotate"].layers
    # the blob's map of the rotated input, rotated back, is the clean map: exactly the same pattern
    assert layer.correlation[BLOB] > 0.999
    assert layer.relative_l2[BLOB] < 1e-4
    # a vertical-edge detector sees horizontal edges after a 90 degree turn: an unrelated pattern
    assert abs(layer.correlation[EDGE]) < 0.3
    assert layer.relative_l2[EDGE] > 0.9
    # 180 degrees: the edge response flips sign (anti-correlated), the blob still matches
    (half_turn,) = _probe(model, _noise_images(), ["rotate"], strength=(("rotate", 180.0),))["rotate"].layers
    assert half_turn.correlation[BLOB] > 0.999 and half_turn.correlation[EDGE] < -0.9
    # any angle: rotated both ways with interpolation, compared inside the picture only
    (slant,) = _probe(model, _noise_images(size=32), ["rotate"], strength=(("rotate", 45.0),))["rotate"].layers
    assert slant.correlation[BLOB] > slant.correlation[EDGE] + 0.2


def test_noise_changes_maps_in_proportion_to_its_strength(monkeypatch):
    model = blob_and_edge_conv()
    images = _noise_images()
    weak = _probe(model, images, ["noise"], strength=(("noise", 0.05),))["noise"].layers[0]
    strong = _probe(model, images, ["noise"], strength=(("noise", 0.5),))["noise"].layers[0]
    assert np.all(weak.relative_l2 < strong.relative_l2)
    assert np.all(weak.correlation > strong.correlation)
    assert weak.correlation[BLOB] > 0.99
    # relative L2 scales linearly with the noise for a linear filter (before the ReLU)
    assert strong.relative_l2[BLOB] / weak.relative_l2[BLOB] == pytest.approx(10.0, rel=0.05)
    # seeded per input: the same probe gives the same numbers however the inputs are chunked
    import reportgen.probes as probes

    for chunk in (1, 4):
        monkeypatch.setattr(probes, "PROBE_CHUNK", chunk)
        again = _probe(model, images, ["noise"], strength=(("noise", 0.05),))["noise"].layers[0]
        assert np.allclose(again.correlation, weak.correlation, rtol=0, atol=1e-9)
        assert np.allclose(again.relative_l2, weak.relative_l2, rtol=0, atol=1e-9)


def test_blur_and_brightness_run_and_compare():
    model = blob_and_edge_conv()
    results = _probe(model, _noise_images(), ["blur", "brightness"])
    blur = results["blur"].layers[0]
    # blurring noise keeps the (already smooth) blob response better than the edge response
    assert blur.correlation[BLOB] > blur.correlation[EDGE]
    bright = results["brightness"].layers[0]
    # no normalisation known: a shift of 0.3 std; a linear filter's pattern is unchanged
    assert bright.correlation[BLOB] > 0.99
    assert "shifted by 0.3" in results["brightness"].description


def test_fgsm_lowers_the_true_class_probability_of_a_trained_model_and_leaves_no_grad():
    model = trained_stripes_cnn()
    images, labels = stripes(8, seed=7)
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() >= 0.9  # it did learn
    requires = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _probe(model, images, ["fgsm"], labels=labels.tolist(), fgsm_epsilon=0.05)["fgsm"]
    clean = np.array([item.clean_probability for item in result.inputs])
    attacked = np.array([item.perturbed_probability for item in result.inputs])
    assert np.all(attacked < clean)
    assert attacked.mean() < clean.mean() - 0.2
    assert all(item.target_is_label for item in result.inputs)
    assert "model's input units" in result.description  # no normalisation known
    # epsilon 0 changes nothing
    still = _probe(model, images, ["fgsm"], labels=labels.tolist(), fgsm_epsilon=0.0)["fgsm"]
    assert [i.perturbed_probability for i in still.inputs] == pytest.approx([i.clean_probability for i in still.inputs])
    # autograd was on for that pass only: nothing left behind
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_fgsm_on_the_demo_model_in_pixel_units():
    from reportgen import demo  # shipped with its checkpoint: a broken one fails here, never skips
    from reportgen.preprocess import Preprocessing

    model = demo.load_demo_model()

    images, labels, names = demo.demo_samples(8)
    prep = Preprocessing(channels=3, mean=tuple(demo.DEMO_MEAN), std=tuple(demo.DEMO_STD))
    inputs = from_tensor(torch.stack([prep.normalise(image) for image in images]), names)
    inputs.labels, inputs.preprocessing = list(labels), prep
    impact = build_impact(model, inputs, CPU, ImpactOptions(probes=("fgsm",), fgsm_epsilon=0.03),
                          selected=["features.conv1"], anchors={}, class_names=list(demo.CLASS_NAMES))
    (fgsm,) = impact.probes
    clean = np.array([o.clean_probability for o in fgsm.outcomes])
    attacked = np.array([o.perturbed_probability for o in fgsm.outcomes])
    assert attacked.mean() < clean.mean()
    assert "pixel units" in fgsm.description


def test_strip_shows_identical_tiles_for_the_stable_filter_and_flags_flips():
    model = blob_and_edge_conv()
    images = _noise_images(count=3)
    inputs = from_tensor(images)
    inputs.labels = [0, 1, 2]
    impact = build_impact(model, inputs, CPU, ImpactOptions(probes=("rotate",)), selected=["0"],
                          anchors={"0": "layer-0"}, class_names=["a", "b", "c"], max_inputs_shown=3,
                          thumbnail=lambda t: (t[0].clamp(0, 1) * 255).to(torch.uint8).numpy())
    (probe,) = impact.probes
    assert probe.inputs_probed == 3
    layer = probe.layers[0]
    assert layer.most_stable == BLOB and layer.least_stable == EDGE and layer.anchor == "layer-0"
    assert layer.stable_fraction == pytest.approx(0.5)  # one of two filters at r >= 0.9
    outcome = probe.outcomes[0]
    (row,) = outcome.strip
    assert (row.most_stable, row.least_stable) == (BLOB, EDGE)
    picture = np.asarray(Image.open(io.BytesIO(decode_data_uri(row.image.data_uri))).convert("RGB"))
    tile = 24  # 24x24 maps, under the 32-pixel strip tile: drawn at full size
    assert picture.shape == (tile + 2, 4 * tile + 5, 3)
    tiles = [picture[1:1 + tile, 1 + i * (tile + 1): 1 + i * (tile + 1) + tile] for i in range(4)]
    assert np.array_equal(tiles[0], tiles[1])  # blob: clean == perturbed (rotated back)
    assert not np.array_equal(tiles[2], tiles[3])  # edge: different
    assert outcome.clean_thumbnail is not None and outcome.perturbed_thumbnail is not None
    perturbed = np.asarray(Image.open(io.BytesIO(decode_data_uri(outcome.perturbed_thumbnail.data_uri))))
    expected = (torch.rot90(images[0, 0], 1, dims=(0, 1)).clamp(0, 1) * 255).to(torch.uint8).numpy()
    assert np.array_equal(perturbed, expected)  # the perturbed input as the model saw it
    assert outcome.flipped in (True, False) and outcome.target == "a" and outcome.target_is_label


def test_probes_that_do_not_apply_say_why():
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(3, 2))
    torch.manual_seed(0)
    signals = torch.randn(3, 2, 20)
    results = _probe(model, signals, ["rotate", "blur", "noise"])
    assert "needs 2D image inputs" in results["rotate"].note and results["rotate"].layers == ()
    assert "needs 2D image inputs" in results["blur"].note
    assert results["noise"].note == "" and results["noise"].layers[0].channels_total == 3


def test_similarity_edge_cases():
    clean = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    perturbed = torch.tensor([[[[2.0, 4.0], [6.0, 8.0]], [[5.0, 5.0], [5.0, 5.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    corr, rel = similarity(clean, perturbed)
    assert corr[0, 0] == pytest.approx(1.0)  # a scaled copy has the same pattern
    assert rel[0, 0] == pytest.approx(1.0)  # ... but twice the size
    assert math.isnan(corr[0, 1]) and rel[0, 1] == 0  # constant maps: no pattern, no change
    assert math.isnan(corr[0, 2]) and math.isnan(rel[0, 2])  # an all-zero clean map has no scale


def test_option_parsing():
    assert parse_kinds("rotate, noise,rotate") == ("rotate", "noise")
    assert parse_kinds("all") == ("rotate", "noise", "blur", "brightness", "fgsm")
    assert parse_strength("noise=0.2,rotate=45") == (("noise", 0.2), ("rotate", 45.0))
    assert parse_strength("0.5") == (("blur", 0.5), ("brightness", 0.5), ("noise", 0.5))
    with pytest.raises(ReportError, match="--probes: unknown probe 'twist'"):
        parse_kinds("rotate,twist")
    with pytest.raises(ReportError, match="--probe-strength"):
        parse_strength("noise=lots")
    with pytest.raises(ReportError, match="fgsm uses --fgsm-epsilon"):
        parse_strength("fgsm=0.1")
    with pytest.raises(ReportError, match="--fgsm-epsilon"):
        ImpactOptions(probes=("fgsm",), fgsm_epsilon=-1.0).check()
