"""The compare report's model: plain values and encoded pictures, filled by `compare_render`,
formatted by `compare_view`, dumped by `compare_report` (`--json`). No numpy, no torch."""

from __future__ import annotations

from dataclasses import dataclass

from reportgen.encoded_image import EncodedImage


@dataclass(frozen=True)
class CheckpointRow:
    name: str
    source: str
    type: str
    file: str | None
    sha256: str | None
    params: int


@dataclass(frozen=True)
class CkaLayer:
    """CKA of one layer of A with the layer of the same name in B."""

    name: str  # the layer call (`layer1.0.conv1`, `fc#1` for a second call)
    tap: str  # the module call whose output the features are
    value: float | None


@dataclass(frozen=True)
class CkaMatrixModel:
    rows: tuple[str, ...]  # A's layers
    cols: tuple[str, ...]  # B's layers
    values: tuple[tuple[float | None, ...], ...]


@dataclass(frozen=True)
class CkaSection:
    estimator: str
    batch_size: int
    batch_sizes: tuple[tuple[int, int], ...]  # (inputs in a batch, batches of that size)
    inputs_used: int
    inputs_skipped: int
    layers: tuple[CkaLayer, ...]
    matrix: CkaMatrixModel
    line: EncodedImage | None
    heatmap: EncodedImage | None


@dataclass(frozen=True)
class ChannelRow:
    channel: int
    correlation: float | None
    active_a: float
    active_b: float
    jaccard: float | None


@dataclass(frozen=True)
class TopSets:
    """One channel's top-k inputs (by max activation) in A and in B, as two thumbnail strips."""

    channel: int
    jaccard: float | None
    correlation: float | None
    inputs_a: tuple[int, ...]
    inputs_b: tuple[int, ...]
    strip_a: EncodedImage
    strip_b: EncodedImage


@dataclass(frozen=True)
class ChannelLayer:
    name: str
    channels: tuple[ChannelRow, ...]
    mean_correlation: float | None
    least_correlated: tuple[ChannelRow, ...]  # the few lowest, lowest first
    newly_dead: tuple[int, ...]  # > 0 on some input in A, on none in B
    revived: tuple[int, ...]  # on none in A, on some in B
    mean_jaccard: float | None
    top_k: int
    top_sets: tuple[TopSets, ...] = ()  # the least overlapping channels, drawn


@dataclass(frozen=True)
class FilterRow:
    channel: int
    relative_l2: float | None
    cosine: float | None
    activation_correlation: float | None


@dataclass(frozen=True)
class WeightLayer:
    name: str
    shape: tuple[int, ...]
    relative_l2: float | None
    cosine: float | None
    filters: tuple[FilterRow, ...]  # ranked: largest relative change first


@dataclass(frozen=True)
class FilterTriple:
    layer: str
    channel: int
    relative_l2: float | None
    cosine: float | None
    scale: float  # the diverging scale's end: colours run from -scale (blue) to +scale (red)
    image: EncodedImage  # A | B | B - A


@dataclass(frozen=True)
class WeightSection:
    layers: tuple[WeightLayer, ...]
    most_changed: tuple[FilterTriple, ...]
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class TopEntry:
    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class FlipCard:
    index: int
    name: str
    label: str | None
    top_a: tuple[TopEntry, ...]
    top_b: tuple[TopEntry, ...]
    thumbnail: EncodedImage | None
    cam_a: EncodedImage | None = None  # Grad-CAM of A's top-1 class on the thumbnail
    cam_b: EncodedImage | None = None


@dataclass(frozen=True)
class ClassChange:
    name: str
    inputs: int
    accuracy_a: float
    accuracy_b: float


@dataclass(frozen=True)
class PredictionSection:
    inputs: int
    agreement: float | None
    flips: tuple[FlipCard, ...]
    flips_total: int
    labelled: int
    accuracy_a: float | None
    accuracy_b: float | None
    negative_flip_rate: float | None  # right in A, wrong in B, over the labelled inputs
    positive_flip_rate: float | None
    per_class: tuple[ClassChange, ...]


@dataclass(frozen=True)
class FilterStrip:
    layer: str
    channel: int
    scale: float
    image: EncodedImage  # the filter at each checkpoint, left to right


@dataclass(frozen=True)
class RunSection:
    checkpoints: tuple[str, ...]
    layers: tuple[str, ...]
    cka_to_last: tuple[tuple[float | None, ...], ...]  # (checkpoint 0..N-2) x layers
    cka_to_next: tuple[tuple[float | None, ...], ...]
    weight_layers: tuple[str, ...]
    weight_step: tuple[tuple[float | None, ...], ...]  # (step i -> i+1) x weight_layers
    settle_chart: EncodedImage | None
    settle_lines: EncodedImage | None  # one line per layer over the checkpoints (at most LINE_LAYERS layers)
    step_chart: EncodedImage | None
    strips: tuple[FilterStrip, ...]


@dataclass(frozen=True)
class AlertChange:
    kind: str  # as in the main report's alerts (alerts.WHY)
    layer: str
    detail: str  # what it rests on, in the model that has it
    why: str


@dataclass(frozen=True)
class AlertsSection:
    in_b_not_a: tuple[AlertChange, ...]
    in_a_not_b: tuple[AlertChange, ...]
    checked: tuple[str, ...]


@dataclass(frozen=True)
class CompareRun:
    title: str
    date: str
    reportgen_version: str
    torch_version: str
    device: str
    batch_size: int
    inputs: int
    seed: int
    command: str | None


@dataclass(frozen=True)
class CompareModel:
    run: CompareRun
    checkpoints: tuple[CheckpointRow, ...]
    cka: CkaSection
    channels: tuple[ChannelLayer, ...]
    weights: WeightSection | None
    predictions: PredictionSection | None
    training_run: RunSection | None
    notes: tuple[str, ...]
    budget: str | None = None  # what the size budget left out, when it did
    alerts: AlertsSection | None = None
