"""Grad-CAM puts the heat where the class evidence is, and leaves the model exactly as it was.

QuadrantNet's "bright" class is decided by a brightness detector averaged over the image, so its
evidence sits exactly on the bright square; the "dark" class's evidence is everywhere else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen import gradcam
from reportgen.errors import ReportError
from reportgen.gradcam import grad_cam, overlay
from reportgen.inputs import from_tensor
from tests.fixtures.insight_models import DeadBranchNet, QuadrantNet, quadrant_images
from tests.helpers import decode

QUADRANTS = [(0, 0), (0, 1), (1, 0), (1, 1)]


def quadrant_share(cam: tuple[tuple[float, ...], ...], row: int, column: int) -> float:
    heat = np.asarray(cam, dtype=np.float64)
    half_y, half_x = heat.shape[0] // 2, heat.shape[1] // 2
    part = heat[row * half_y:(row + 1) * half_y, column * half_x:(column + 1) * half_x]
    return float(part.sum() / heat.sum())


def test_heat_sits_in_the_quadrant_that_holds_the_evidence() -> None:
    images = quadrant_images(QUADRANTS)
    report = reportgen.generate_report(QuadrantNet(), images, device="cpu", labels=["bright", "dark"],
                                       targets=[1, 1, 1, 1])  # true class "dark": both maps are drawn
    cam = report.model.insight.gradcam
    assert cam is not None and cam.layer == "conv"
    assert [entry.input_index for entry in cam.inputs] == [0, 1, 2, 3]
    for entry, (row, column) in zip(cam.inputs, QUADRANTS):
        predicted, true = entry.maps
        assert (predicted.kind, predicted.target_label) == ("predicted", "bright")
        assert (true.kind, true.target_label) == ("true", "dark")
        assert quadrant_share(predicted.cam, row, column) > 0.9
        peak_y, peak_x = predicted.peak
        assert (int(peak_y * 2), int(peak_x * 2)) == (row, column)
        # "dark" evidence is everywhere but the square: cold where "bright" is hottest, and the
        # quadrant holds less than its area's share (the square takes a quarter of it)
        true_heat = np.asarray(true.cam)
        assert true_heat[int(peak_y * true_heat.shape[0]), int(peak_x * true_heat.shape[1])] < 0.05
        assert quadrant_share(true.cam, row, column) < 0.22
        assert max(max(r) for r in predicted.cam) == pytest.approx(1.0)


def test_cam_matches_a_direct_computation_despite_the_inplace_relu() -> None:
    model = QuadrantNet()
    images = quadrant_images(QUADRANTS[:2], seed=4)
    result = grad_cam(model.eval(), from_tensor(images), count=2, device=torch.device("cpu"),
                      dtype=torch.float32, layer="conv")
    # Reference: the conv's output before the in-place ReLU, and d(score)/d(that output).
    activation = model.conv(images)
    logits = model.head(torch.relu(activation).mean(dim=(2, 3)))
    predicted = logits.argmax(dim=1)
    (gradient,) = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), activation)
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)).detach()
    expected = expected / expected.flatten(1).amax(dim=1)[:, None, None]
    cams = [r.cam for r in result.records if r.kind == "predicted"]
    np.testing.assert_allclose(np.stack(cams), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_model_is_left_exactly_as_it_was() -> None:
    model = QuadrantNet()
    model.train()
    model.head.eval()  # mixed modes must come back one by one
    model.conv.bias.requires_grad_(False)
    sentinel = torch.full_like(model.head.weight, 7.0)
    model.head.weight.grad = sentinel
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reportgen.generate_report(model, quadrant_images(QUADRANTS), device="cpu")
    assert model.training and model.conv.training and not model.head.training
    assert model.head.weight.grad is sentinel and bool((sentinel == 7.0).all())
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert model.conv.bias.requires_grad is False and model.conv.weight.requires_grad is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


class FailsWithGrad(QuadrantNet):
    """Runs in the main (inference) pass, raises in the gradient pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.head.weight.grad = torch.zeros_like(self.head.weight)  # a stray write, then a failure
            raise RuntimeError("no gradients here")
        return super().forward(x)


def test_maps_come_from_the_main_pass_without_a_forward_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    model = QuadrantNet()
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    monkeypatch.setattr(gradcam, "grad_cam", lambda *a, **k: pytest.fail("a separate Grad-CAM pass ran"))
    report = reportgen.generate_report(model, quadrant_images(QUADRANTS * 3), device="cpu", batch_size=4,
                                       max_inputs_shown=6)  # the shown inputs span two batches
    # one forward per batch, nothing more, after one forward of input 0 alone that learns where
    # each conv's activation acts on it (sites.py)
    assert calls == [1, 4, 4, 4]
    assert [entry.input_index for entry in report.model.insight.gradcam.inputs] == list(range(6))
    assert report.model.sections[0].insight.reaches_output is True


def test_a_failing_gradient_pass_is_noted_and_undone() -> None:
    model = FailsWithGrad()
    report = reportgen.generate_report(model, quadrant_images(QUADRANTS), device="cpu")
    assert report.model.totals.available  # the batch ran again as usual, torchinfo included
    plain = reportgen.generate_report(QuadrantNet(), quadrant_images(QUADRANTS), device="cpu", cam=False)
    assert report.model.sections[0].stats == plain.model.sections[0].stats  # the batch counted once
    assert report.model.sections[0].feature_maps[0].input_index == 0
    assert report.model.insight.gradcam is None
    assert any("Grad-CAM was skipped" in note and "no gradients here" in note for note in report.model.insight.notes)
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_cam_layer_option_and_unknown_layer() -> None:
    images = quadrant_images(QUADRANTS[:1])
    with pytest.raises(ReportError, match="--cam-layer nope"):
        reportgen.generate_report(QuadrantNet(), images, device="cpu", cam_layer="nope")
    off = reportgen.generate_report(QuadrantNet(), images, device="cpu", cam=False)
    assert off.model.insight.gradcam is None
    assert all(s.insight.reaches_output is None for s in off.model.sections)


def test_overlay_pixels_follow_the_heat() -> None:
    thumbnail = np.full((8, 8), 100, dtype=np.uint8)
    cam = np.zeros((2, 2), dtype=np.float32)
    cam[0, 1] = 1.0  # top-right hot
    picture = overlay(thumbnail, cam)
    assert picture.shape == (8, 8, 3)
    assert tuple(picture[7, 0]) == (100, 100, 100)  # cold: the input unchanged
    # hottest: yellow (255, 255, 0) at opacity 0.6 over gray 100
    assert tuple(picture[0, 7]) == (193, 193, 40)


def test_layer_whose_output_is_thrown_away_is_flagged() -> None:
    torch.manual_seed(0)
    report = reportgen.generate_report(DeadBranchNet(), torch.rand(2, 3, 8, 8), device="cpu")
    reach = {s.name: s.insight.reaches_output for s in report.model.sections}
    assert reach == {"conv": True, "side": False}
    assert [(a.kind, a.layer) for a in report.model.alerts if a.kind == "unreachable-layer"] == [
        ("unreachable-layer", "side")]
    assert report.to_dict()["insight"]["totals"]["unreachable_layers"] == ["side"]


def test_overlays_are_in_the_page() -> None:
    report = reportgen.generate_report(QuadrantNet(), quadrant_images(QUADRANTS[:2]), device="cpu")
    entry = report.model.insight.gradcam.inputs[1]
    picture = np.asarray(decode(entry.maps[0].overlay))
    assert picture.shape[2] == 3
    # the bright square (top-right quadrant) is the hottest: more red than the opposite corner
    height, width = picture.shape[:2]
    assert picture[: height // 2, width // 2:, 0].mean() > picture[height // 2:, : width // 2, 0].mean() + 40
    html = report.to_html()
    assert 'id="gradcam"' in html and entry.maps[0].overlay.data_uri in html


class NoLinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # not (batch, classes): no Grad-CAM


def test_not_a_classifier_is_said_plainly() -> None:
    report = reportgen.generate_report(NoLinearNet(), torch.rand(2, 1, 8, 8), device="cpu")
    assert report.model.insight.gradcam is None
    assert any("not a (batch, classes)" in note for note in report.model.insight.notes)
