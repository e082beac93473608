"""The report model of the impact section (issue 5): ablation, misfiring filters, probes.

Frozen plain values and encoded pictures only, like `report_model.py` (which holds the field
`ReportModel.impact` and imports this module); kept in its own module so the impact feature
stays in one place.
Per-channel arrays are tuples in channel order; undefined numbers are NaN (None in JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.encoded_image import EncodedImage


@dataclass(frozen=True)
class ClassShare:
    """One class in a filter's per-class breakdown: how ablating the filter changes the mean
    true-class probability of the inputs of that class."""

    index: int
    label: str
    count: int
    baseline_probability: float
    delta_probability: float  # ablated - baseline (negative: the filter carries this class)


@dataclass(frozen=True)
class FilterImpact:
    channel: int
    rank: int  # 1 = most impact in its layer
    accuracy: float
    probability: float
    loss: float
    delta_accuracy: float  # ablated - baseline
    delta_probability: float
    delta_loss: float
    tile: EncodedImage | None  # the filter's weights, drawn as in the layer's filter grid
    classes: tuple[ClassShare, ...]  # the classes it carries most (largest probability drop first)


@dataclass(frozen=True)
class AblationLayerReport:
    name: str
    anchor: str  # the layer's section in the report, "" when it is not drawn
    type: str
    channels_total: int
    channels: tuple[int, ...]  # ablated channels; the delta tuples follow this order
    delta_accuracy: tuple[float, ...]
    delta_probability: tuple[float, ...]
    delta_loss: tuple[float, ...]
    ranking: tuple[int, ...]  # channels, most impact (largest loss increase) first
    top: tuple[FilterImpact, ...]
    bottom: tuple[FilterImpact, ...]  # least impact (smallest loss increase) first
    expanded_at: str  # where the batch was expanded ("" = the model input)


@dataclass(frozen=True)
class SkippedLayer:
    name: str
    reason: str


@dataclass(frozen=True)
class ClassBaseline:
    index: int
    label: str
    count: int
    probability: float


@dataclass(frozen=True)
class AblationReport:
    inputs: int
    targets: str  # "labels" or "predictions"
    baseline_accuracy: float
    baseline_probability: float
    baseline_loss: float
    classes: tuple[ClassBaseline, ...]
    layers: tuple[AblationLayerReport, ...]
    skipped: tuple[SkippedLayer, ...]
    max_channels: int | None
    channels_ablated: int
    channels_total: int
    forward_rows: int
    coverage: str  # one sentence: what was ablated, over what


@dataclass(frozen=True)
class MisfiringExample:
    index: int
    input: str
    true_label: str
    predicted_label: str
    activation: float
    thumbnail: EncodedImage | None


@dataclass(frozen=True)
class MisfiringChannel:
    layer: str
    anchor: str
    channel: int
    effect: float  # Cohen's d, wrong vs correct
    mean_correct: float
    mean_wrong: float
    tile: EncodedImage | None
    examples: tuple[MisfiringExample, ...]


@dataclass(frozen=True)
class MisfiringLayer:
    name: str
    anchor: str
    effect: tuple[float, ...]  # per channel
    mean_correct: tuple[float, ...]
    mean_wrong: tuple[float, ...]
    flagged: tuple[int, ...]  # highest d first


@dataclass(frozen=True)
class MisfiringReport:
    correct: int
    wrong: int
    threshold: float
    min_wrong: int
    channels: tuple[MisfiringChannel, ...]  # the strongest flagged channels over all layers
    layers: tuple[MisfiringLayer, ...]
    note: str


@dataclass(frozen=True)
class ProbeLayerReport:
    name: str
    anchor: str
    channels_total: int
    channels_defined: int  # channels with a defined correlation
    median_correlation: float  # NaN when none is defined
    stable_fraction: float  # channels with mean correlation >= probes.STABLE_CORRELATION
    mean_relative_l2: float
    correlation: tuple[float, ...]  # per channel, mean over the probed inputs
    relative_l2: tuple[float, ...]
    most_stable: int | None
    least_stable: int | None


@dataclass(frozen=True)
class ProbeStripRow:
    layer: str
    anchor: str
    most_stable: int
    least_stable: int
    most_correlation: float
    least_correlation: float
    image: EncodedImage  # 4 tiles: clean / perturbed of the most stable, then of the least stable


@dataclass(frozen=True)
class ProbeOutcome:
    index: int
    input: str
    target: str  # the true label, or the clean prediction when unlabelled
    target_is_label: bool
    clean_top: str
    perturbed_top: str
    flipped: bool | None  # None: not a classifier
    clean_probability: float  # of the target; NaN when not a classifier
    perturbed_probability: float
    clean_thumbnail: EncodedImage | None
    perturbed_thumbnail: EncodedImage | None
    strip: tuple[ProbeStripRow, ...]


@dataclass(frozen=True)
class ProbeReport:
    kind: str
    strength: float
    description: str
    note: str  # why it could not run, or ""
    inputs_probed: int
    flips: int
    layers: tuple[ProbeLayerReport, ...]
    outcomes: tuple[ProbeOutcome, ...]
    skipped: tuple[SkippedLayer, ...]


@dataclass(frozen=True)
class ImpactReport:
    ablation: AblationReport | None
    misfiring: MisfiringReport | None
    probes: tuple[ProbeReport, ...]
    notes: tuple[str, ...]
