"""The compare pass's hand-off (data only): what `compare_pass.compare` found, as numpy arrays
and plain values, for `compare_render` to draw. No torch object is held here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CheckpointInfo:
    """One model of the comparison, as the report names it."""

    name: str
    source: str
    type: str
    file: str | None = None
    sha256: str | None = None
    params: int = 0


@dataclass(frozen=True)
class ObservedLayer:
    """A layer call whose features CKA compares: `tap` is where they were taken (the module
    call whose output they are, or the conv and the path to its activation site)."""

    key: str
    name: str
    type: str
    tap: str
    shape: tuple[int, ...]  # one input's observed tensor


@dataclass(frozen=True)
class CkaMatrix:
    """CKA of every layer of one model (rows) against every layer of another (cols)."""

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: np.ndarray  # (rows, cols) float64; NaN where undefined
    batches: int
    inputs_used: int
    inputs_skipped: int
    batch_sizes: dict[int, int]


@dataclass(frozen=True)
class ChannelComparison:
    """One layer observed in both models with the same shape, channel by channel."""

    key: str
    correlation: np.ndarray  # (C,) Pearson r of the channel's values (all inputs, all positions), A vs B
    active_a: np.ndarray  # (C,) fraction of inputs with a value > 0
    active_b: np.ndarray
    jaccard: np.ndarray | None  # (shown,) overlap of the top-k input sets; None without top-k
    top_k: int
    # the least overlapping channels: (channel, A's top-k input indices, B's), best first
    top_sets: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class FilterPicture:
    """One filter of A and of B (mean over input channels, (kh, kw) or (k,)), for drawing."""

    layer: str
    channel: int
    relative_l2: float
    cosine: float
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class LayerWeightChange:
    name: str
    shape: tuple[int, ...]
    relative_l2: float  # ||W_B - W_A|| / ||W_A||
    cosine: float  # <W_A, W_B> / (||W_A|| ||W_B||)
    filter_relative_l2: np.ndarray  # (out channels,)
    filter_cosine: np.ndarray  # (out channels,)


@dataclass(frozen=True)
class WeightComparison:
    layers: tuple[LayerWeightChange, ...]
    most_changed: tuple[FilterPicture, ...]
    unmatched: tuple[str, ...] = ()  # selected layers without a counterpart of the same shape


@dataclass(frozen=True)
class Flip:
    """An input whose top-1 class differs between A and B."""

    index: int
    name: str
    label: int | None
    top_a: tuple[tuple[int, float], ...]  # (class, probability), best first
    top_b: tuple[tuple[int, float], ...]
    thumbnail: np.ndarray | None
    cam_a: np.ndarray | None = None  # Grad-CAM of A's top-1 class at A's last conv (gradcam.py), 0..1
    cam_b: np.ndarray | None = None
    input_shape: tuple[int, ...] = ()  # the input as the models saw it, no batch dim


@dataclass(frozen=True)
class PredictionComparison:
    inputs: int
    agreement: float  # share of inputs with the same top-1 class
    flips: tuple[Flip, ...]  # the first ones, by input index
    flips_total: int
    labelled: int  # inputs with a true class
    correct_a: int
    correct_b: int
    negative_flips: int  # right in A, wrong in B (among labelled inputs)
    positive_flips: int  # wrong in A, right in B
    per_class: tuple[tuple[int, int, int, int], ...]  # (class, inputs, correct in A, correct in B)


@dataclass(frozen=True)
class AlertFound:
    """One alert condition of one layer in one model: `kind` as in alerts.py, what it rests on."""

    kind: str
    layer: str
    detail: str


@dataclass(frozen=True)
class AlertsDiff:
    in_b_not_a: tuple[AlertFound, ...]
    in_a_not_b: tuple[AlertFound, ...]
    checked: tuple[str, ...]  # the kinds looked for


@dataclass(frozen=True)
class TrainingRun:
    """Three or more checkpoints of one architecture, layer by layer (rows: checkpoints 0..N-2)."""

    layers: tuple[str, ...]
    cka_to_last: np.ndarray  # (N - 1, layers): each checkpoint against the last
    cka_to_next: np.ndarray  # (N - 1, layers): each checkpoint against the next
    weight_step: np.ndarray  # (N - 1, layers): relative L2 change from checkpoint i to i + 1
    weight_layers: tuple[str, ...]
    strips: tuple[tuple[str, int, tuple[np.ndarray, ...]], ...] = ()  # (layer, channel, filter per checkpoint)


@dataclass(frozen=True)
class CompareAnalysis:
    checkpoints: tuple[CheckpointInfo, ...]
    layers_a: tuple[ObservedLayer, ...]  # the first checkpoint's (model A's) observed layers
    layers_b: tuple[ObservedLayer, ...]  # the last's
    cka: CkaMatrix  # A (first) against B (last)
    channels: tuple[ChannelComparison, ...]
    weights: WeightComparison | None  # None when no layer has a counterpart
    predictions: PredictionComparison | None  # None when an output is not class logits
    run: TrainingRun | None
    device: str
    batch_size: int
    inputs: int
    num_classes: int | None
    notes: tuple[str, ...] = field(default=())
    alerts: AlertsDiff | None = None
    pictures: dict[int, np.ndarray] = field(default_factory=dict)  # input index -> thumbnail, for top_sets
