"""The analyze stage's hand-off: `Analysis` and its parts, numpy arrays and plain values.

Data only, in a module of its own: `analyze.py` and `insight.py` fill these, the render stage
(`render.py`, `alerts.py`, `per_class.py`, `insight_render.py`, `size_budget.py`) reads them, and
no reader has to import the stage that computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from reportgen.capture import CapturedLayer
from reportgen.embedding import Features
from reportgen.gradcam import CamResult
from reportgen.report_model import ChannelTop, InitTest, WeightStats
from reportgen.summary import SummaryTable
from reportgen.top_activations import Geometry

if TYPE_CHECKING:  # loaded only by the reports that ask for them (impact)
    from reportgen.ablation import Baseline
    from reportgen.misfiring import MisfiringResult


@dataclass(frozen=True)
class InsightOptions:
    """Knobs of the insight features (CLI: --top-k, --top-k-channels, --no-cam, --cam-layer,
    --no-embedding, --duplicate-threshold)."""

    top_k: int = 5  # inputs kept per shown channel; 0 disables
    top_k_channels: int = 8  # channels per layer whose top-k crops are drawn (dataset mode)
    cam: bool = True
    cam_layer: str | None = None  # default: the last convolution (or transformer block, gradcam.py)
    embedding: bool = True
    rollout: bool = True  # attention rollout for models with nn.MultiheadAttention (rollout.py)
    rollout_heads: str = "mean"  # how heads are fused: "mean" or "max"
    duplicate_threshold: float = 0.99


@dataclass(frozen=True)
class InsightData:
    """What the analyze stage hands on for the insight features (numpy and plain values)."""

    weight_stats: dict[str, WeightStats] = field(default_factory=dict)
    geometry: dict[str, Geometry] = field(default_factory=dict)
    input_spatial: tuple[int, ...] = ()
    tops: dict[str, tuple[ChannelTop, ...]] = field(default_factory=dict)
    crops: dict[str, np.ndarray] = field(default_factory=dict)
    cam: CamResult | None = None
    rollout: CamResult | None = None  # attention rollout maps (collectors/rollout.py), drawn like Grad-CAM
    features: Features | None = None
    notes: tuple[str, ...] = ()
    init_test: InitTest | None = None


@dataclass(frozen=True)
class LayerWeights:
    """Up to max_channels filters of one layer, as (filters, inputs per filter, *kernel)."""

    filters: np.ndarray
    filters_total: int
    in_channels: int
    groups: int
    transposed: bool
    weight_shape: tuple[int, ...]


@dataclass(frozen=True)
class InputRecord:
    index: int
    name: str
    shape: tuple[int, ...]
    label: int | None
    thumbnail: np.ndarray | None  # uint8 (H, W, 3) or (H, W): what the model saw
    notes: tuple[str, ...] = ()  # how the input was fitted to the model (channels, rank)
    spectrogram: np.ndarray | None = None  # 1D signals: uint8 (H, W, 3), thumbnails.spectrogram


@dataclass(frozen=True)
class DenseRecord:
    """A detection or segmentation output of one drawn input (collectors/dense.py)."""

    index: int
    kind: str  # "detection" or "segmentation"
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (k, 4) x1, y1, x2, y2 in input pixels
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (k,) highest first
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (k,) class indices
    total_boxes: int = 0  # boxes the model output for this input (k of them kept)
    classes: np.ndarray | None = None  # segmentation: (H, W) argmax class map at the output's resolution
    fractions: dict[int, float] = field(default_factory=dict)  # segmentation: class -> fraction of pixels
    num_classes: int = 0


@dataclass(frozen=True)
class TokenPicture:
    """One shown input's token pictures at one transformer layer call whose output lies on a 2D
    grid (collectors/token_pictures.py has the normalisations)."""

    grid: tuple[int, int]  # the token grid (h, w) the pictures were computed on
    channels: int  # D: the length of each token
    norm: np.ndarray  # uint8 (h', w') palette levels: each token's L2 norm, min-max over the input
    norm_min: float  # the smallest and largest token norm (NaN when a token is not finite)
    norm_max: float
    pca: np.ndarray | None  # uint8 (h', w', 3): PC1, PC2, PC3 as R, G, B; None: a token is not finite
    explained: tuple[float, ...]  # fraction of the token variance along PC1, PC2, PC3 (0: not drawn)
    components: int  # principal components drawn (fewer than 3: too few tokens or channels, no spread)


@dataclass(frozen=True)
class PredictionRecord:
    index: int
    top_indices: tuple[int, ...]
    top_probabilities: tuple[float, ...]
    label: int | None
    label_probability: float | None


@dataclass(frozen=True)
class Analysis:
    model_type: str
    summary: SummaryTable
    layers: tuple[CapturedLayer, ...]
    weights: dict[str, LayerWeights]
    selected: tuple[str, ...]
    inputs: tuple[InputRecord, ...]
    predictions: tuple[PredictionRecord, ...]
    num_classes: int | None
    device: str
    notes: tuple[str, ...]
    insight: InsightData | None = None  # weight stats, Grad-CAM, top-k crops, features
    misfiring: MisfiringResult | None = None  # when asked for (collected in the main pass)
    ablation_baseline: Baseline | None = None  # the unablated model's side of ablation, when asked for
    dense: tuple[DenseRecord, ...] = ()  # detection boxes or segmentation maps of the drawn inputs
    # per transformer layer call (key) and shown input: token-norm map and principal components
    token_pictures: dict[str, dict[int, TokenPicture]] = field(default_factory=dict)
