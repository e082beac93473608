"""One logits finder for every pass: a dict's `logits` wins over a feature tensor listed before it,
and an output without logits (detection boxes) gives no predictions and says what it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reportgen
from reportgen.impact import ImpactOptions
from reportgen.outputs import describe_output, find_logits


def test_find_logits_rules() -> None:
    features, logits = torch.rand(4, 7), torch.rand(4, 3)
    assert find_logits({"features": features, "logits": logits}, 4) is logits  # the key wins
    assert find_logits((torch.rand(4, 8, 2, 2), logits), 4) is logits  # first (N, K) in order
    assert find_logits(logits, 5) is None  # first dimension is not the batch
    assert find_logits(torch.rand(4, 1), 4) is None  # one column is no class distribution
    assert find_logits(torch.randint(0, 3, (4, 3)), 4) is None  # not floating
    assert find_logits([{"boxes": torch.rand(4, 4), "scores": torch.rand(4)}], 1) is None
    assert find_logits({"out": torch.rand(4, 21, 8, 8)}, 4) is None  # segmentation map


class FeaturesAndLogits(nn.Module):
    """Returns (N, 8) features BEFORE its logits in key order: the first tensor is not the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        # the features' argmax is channel 7, a class the 3 logits do not have
        return {"features": features + torch.arange(8.0) * 1000, "logits": self.head(features)}


def test_features_then_logits_model_is_explained_and_ablated_on_its_logits() -> None:
    model = FeaturesAndLogits().eval()
    x = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x)
    logits, features = out["logits"], out["features"]
    assert not torch.equal(logits.argmax(1)[:4], features.argmax(1)[:4]), "the test needs them to disagree"
    targets = logits.argmin(dim=1).tolist()  # wrong labels on purpose: a clearly positive loss
    report = reportgen.generate_report(model, x, device="cpu", targets=targets,
                                       impact=ImpactOptions(ablation=True, ablation_max_channels=None))
    predicted = [p.top[0].index for p in report.model.predictions]
    assert predicted == logits.argmax(dim=1).tolist()
    cams = report.model.insight.gradcam
    assert cams is not None
    for entry in cams.inputs:
        target = next(m.target for m in entry.maps if m.kind == "predicted")
        assert target == int(logits[entry.input_index].argmax())
    ablation = report.model.impact.ablation
    loss = F.cross_entropy(logits, torch.tensor(targets)).item()
    assert ablation.baseline_loss == pytest.approx(loss, rel=1e-4)


class DetectionLike(nn.Module):
    """A conv backbone whose output is a list of per-image dicts of boxes, as torchvision's
    detection models return."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        features = self.conv(x)
        scores = features.mean(dim=(1, 2, 3))
        return [{"boxes": torch.stack([s, s, s + 1, s + 1]).repeat(5, 1), "labels": torch.arange(5),
                 "scores": s.repeat(5)} for s in scores]


def test_a_detection_like_output_gives_no_predictions_and_is_described() -> None:
    x = torch.rand(1, 3, 12, 12)
    report = reportgen.generate_report(DetectionLike(), x, device="cpu")
    assert report.model.predictions == ()
    assert [n for n in report.model.notes if "not class logits" in n] == [
        "This model's output is detections (per input: boxes, labels and scores), not class logits: the "
        "highest-scoring boxes of the shown inputs are drawn in the Detections section. No class predictions, "
        "accuracy, Grad-CAM or ablation are shown."]
    assert report.model.insight.gradcam is None
    assert report.model.sections[0].name == "conv"  # the backbone is still shown
    # no input shown: no Detections section, so the note points nowhere and describes the output
    hidden = reportgen.generate_report(DetectionLike(), x, device="cpu", max_inputs_shown=0)
    assert hidden.model.outputs is None and 'id="outputs"' not in hidden.to_html()
    note = next(n for n in hidden.model.notes if "not class logits" in n)
    assert note.startswith("The model's output is not class logits") and "Detections" not in note
    assert "a list of 1 dict(s): the first is a dict (boxes (5, 4), labels (5,), scores (5,))" in note


def test_describe_output() -> None:
    assert describe_output(torch.zeros(2, 3)) == "a float32 tensor (2, 3)"
    assert describe_output({"out": torch.zeros(1, 21, 4, 4)}) == "a dict (out (1, 21, 4, 4))"
    assert describe_output((np.zeros(1),)).startswith("a tuple of 1 ndarray(s)")
