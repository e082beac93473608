"""The analyses that ride the main pass, one collector each (engine/collector.py has the protocol).

`main_collectors` chooses which ride a pass from the options; `MainCollectors` names them so
that analyze can hand each result on. Adding a collector is a module here, a field and a line
in `main_collectors`; no loop changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from torch import nn

from reportgen import gradcam
from reportgen.analysis import InsightOptions
from reportgen.collectors.activations import ActivationCollector
from reportgen.collectors.cam import FusedCamCollector
from reportgen.collectors.crops import TopCropCollector
from reportgen.collectors.dense import DenseOutputCollector
from reportgen.collectors.features import FeatureCollector
from reportgen.collectors.input_records import InputRecordCollector
from reportgen.collectors.predictions import PredictionCollector
from reportgen.collectors.rollout import RolloutCollector
from reportgen.collectors.token_pictures import TokenPictureCollector, might_have_tokens
from reportgen.engine.collector import Collector
from reportgen.inputs import InputSet
from reportgen.summary import SummaryRow
from reportgen.tokens import is_attention, transformer_blocks
from reportgen.top_activations import CropCollector

if TYPE_CHECKING:  # the impact collectors load only for reports that ask for them
    from reportgen.collectors.ablation_baseline import AblationBaselineCollector
    from reportgen.collectors.misfiring import MisfiringCollector


@dataclass(frozen=True)
class PassWants:
    """What the main pass collects besides the always-on records, predictions and activations."""

    max_channels: int
    tile_size: int
    keep_inputs: int
    insight: InsightOptions
    misfiring: bool = False  # per-channel activation split by correct / wrong (needs labels)
    ablation_baseline: bool = False  # the unablated model's side of ablation
    ablation_batch_size: int = 16  # inputs of ablation's first batch (its clean logits are kept)


@dataclass(frozen=True)
class MainCollectors:
    """Listed in commit order: crops commit after the activations whose top-k they read."""

    records: InputRecordCollector
    predictions: PredictionCollector
    activations: ActivationCollector
    features: FeatureCollector
    cam: FusedCamCollector | None = None
    crops: TopCropCollector | None = None
    rollout: RolloutCollector | None = None
    dense: DenseOutputCollector | None = None
    token_pictures: TokenPictureCollector | None = None
    misfiring: MisfiringCollector | None = None
    ablation_baseline: AblationBaselineCollector | None = None

    def all(self) -> list[Collector[Any]]:
        return [found for field in fields(self) if (found := getattr(self, field.name)) is not None]


def main_collectors(model: nn.Module, inputs: InputSet, wants: PassWants, *, selected: Sequence[str],
                    hookable: bool, summary_rows: Callable[[], Sequence[SummaryRow]],
                    check_labels: Callable[[int], None] | None = None,
                    verify_starts: Sequence[int] = (0,)) -> MainCollectors:
    """`verify_starts`: where each rank's share begins (ablation checks its first batch there)."""
    insight = wants.insight
    labelled = any(inputs.label(i) is not None for i in range(len(inputs)))
    activations = ActivationCollector(max_channels=wants.max_channels, tile_size=wants.tile_size,
                                      keep_inputs=wants.keep_inputs, top_k=insight.top_k,
                                      peak_channels=insight.top_k_channels)
    cropper = None
    if hookable and insight.top_k > 0 and len(inputs) > wants.keep_inputs:  # dataset mode: who excites each channel
        cropper = TopCropCollector(CropCollector(model, inputs, channels=insight.top_k_channels), activations,
                                   summary_rows)
    misfiring = baseline = None
    if wants.misfiring and labelled and hookable:
        from reportgen.collectors.misfiring import MisfiringCollector

        blocks = set(transformer_blocks(model))  # filters are conv channels, not a transformer block's
        misfiring = MisfiringCollector(tuple(name for name in selected if name not in blocks))
    if wants.ablation_baseline:
        from reportgen.collectors.ablation_baseline import AblationBaselineCollector

        baseline = AblationBaselineCollector(labelled=labelled, verify_count=wants.ablation_batch_size,
                                             verify_starts=tuple(verify_starts))
    dense = DenseOutputCollector(keep_inputs=wants.keep_inputs) if wants.keep_inputs > 0 else None
    return MainCollectors(
        records=InputRecordCollector(inputs, keep_inputs=wants.keep_inputs),
        predictions=PredictionCollector(check_labels, dense=dense),
        activations=activations,
        features=FeatureCollector(model, enabled=hookable and insight.embedding),
        cam=fused_cam(model, inputs, insight, keep_inputs=wants.keep_inputs, selected=selected, hookable=hookable),
        crops=cropper,
        rollout=RolloutCollector(model, count=min(wants.keep_inputs, len(inputs)), heads=insight.rollout_heads)
        if hookable and insight.rollout and wants.keep_inputs > 0 and any(is_attention(m) for m in model.modules())
        else None,
        dense=dense,
        token_pictures=TokenPictureCollector(tile_size=wants.tile_size, keep_inputs=wants.keep_inputs)
        if hookable and wants.keep_inputs > 0 and might_have_tokens(model, selected) else None,
        misfiring=misfiring,
        ablation_baseline=baseline,
    )


def fused_cam(model: nn.Module, inputs: InputSet, options: InsightOptions, *, keep_inputs: int,
              selected: Sequence[str], hookable: bool) -> FusedCamCollector | None:
    """Grad-CAM inside the main pass (None when not wanted)."""
    if not (options.cam and hookable and keep_inputs > 0):
        return None
    target = options.cam_layer or gradcam.default_cam_layer(model)
    if options.cam_layer is not None:
        gradcam.check_cam_layer(model, options.cam_layer)
    if target is None:
        return None
    return FusedCamCollector(model, inputs, count=min(keep_inputs, len(inputs)), layer=target, watched=selected)
