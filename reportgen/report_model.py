"""The report model: every number and picture the report shows, as frozen plain values.

This is what the render stage hands to the assemble stage. It holds no torch objects, so it can
be dumped to JSON (`to_json_dict`) and snapshot-tested. Pictures are already-encoded PNGs
(`EncodedImage`); every formatting decision is made later, in `view.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from reportgen.encoded_image import EncodedImage  # its readers import it from here too
from reportgen.impact_model import ImpactReport


@dataclass(frozen=True)
class TileGrid:
    """Tiles laid out in rows, one picture; `channels[i]` is the channel shown in tile i."""

    image: EncodedImage
    columns: int
    rows: int
    tile_width: int
    tile_height: int
    padding: int
    channels: tuple[int, ...]
    tile_min: tuple[float | None, ...]
    tile_max: tuple[float | None, ...]
    flat_channels: tuple[int, ...]  # rendered flat: zero range, NaN or Inf
    legend: str
    colormap: str | None = None  # the palette of the levels; None: RGB tiles


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel activation statistics over all inputs (every channel, not only those shown)."""

    mean: tuple[float, ...]
    max: tuple[float, ...]
    min: tuple[float, ...]
    fraction_active: tuple[float, ...]  # fraction of all positions (inputs x space) > 0
    fraction_inputs_active: tuple[float, ...]  # fraction of inputs on which it is ever > 0
    nonfinite: tuple[int, ...]  # NaN/Inf values seen
    inputs: int = 0  # how many inputs these statistics rest on


@dataclass(frozen=True)
class FeatureMaps:
    input_index: int
    input_name: str
    grid: TileGrid


@dataclass(frozen=True)
class TokenPictures:
    """One input's token-norm map and principal-component picture at a transformer layer whose
    output lies on a 2D grid (collectors/token_pictures.py has the normalisations)."""

    input_index: int
    input_name: str
    grid: tuple[int, ...]  # the token grid (h, w) the pictures were computed on
    channels: int  # D: the length of each token
    norm: EncodedImage  # palette levels on `colormap`: min (dark) to max (bright) over this input's tokens
    norm_min: float | None  # None: a token is not finite (the map is flat)
    norm_max: float | None
    pca: EncodedImage | None  # RGB = PC1, PC2, PC3; None: a token is not finite
    explained_variance: tuple[float, ...]  # fraction of the token variance along PC1, PC2, PC3
    components: int  # principal components drawn (the others are 0 in their colour)
    colormap: str


@dataclass(frozen=True)
class ZoomMap:
    """One layer's feature maps of one input at up to `capture.ZOOM_SIZE` px a side (full
    resolution up to that), laid out like its pooled grid; the tile zoom draws from it."""

    anchor: str  # the layer section's
    input_index: int
    grid: TileGrid
    full_shape: tuple[int, int]  # the map's own (height, width) before any pooling


@dataclass(frozen=True)
class LayerRow:
    """One row of the torchinfo-style summary table."""

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    kernel_size: tuple[int, ...]
    mult_adds: int
    trainable: str  # "True", "False", "Partial" or "--" (no parameters), as torchinfo says
    visualized: bool
    anchor: str
    container: bool = False  # a module with submodules: params and mult_adds are sums over its layers


@dataclass(frozen=True)
class LayerSection:
    """One selected (hooked) layer call: its filters, feature maps and statistics."""

    name: str
    anchor: str
    type: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    channels_total: int
    channels_shown: tuple[int, ...]
    selection_note: str
    filters: TileGrid | None
    filter_note: str
    feature_maps: tuple[FeatureMaps, ...]
    stats: ChannelStats
    insight: LayerInsight | None = None  # weight/activation statistics, top activations (insight_render.py)
    # Where the layer's output was observed (maps and statistics alike): "after layer1.0.bn1
    # (BatchNorm2d) → layer1.0.relu (ReLU)", or the raw conv output and why (sites.py).
    site: str = ""
    site_zero_floor: bool = False  # observed after a ReLU-like activation: never > 0 means always 0
    token_layer: bool = False  # a transformer's tokens laid out on a grid (tokens.py)
    # transformer layers on a 2D grid: per shown input, the token-norm map and the tokens' PCA as RGB
    token_pictures: tuple[TokenPictures, ...] = ()


def never_positive_kind(zero_floor: bool, token_layer: bool) -> str | None:
    """The alert kind for channels never > 0 where they are observed: "dead-filter" where a
    ReLU-like activation floors them at 0 (they output 0), "never-positive" where none acts (they
    still pass their values on), none in a transformer's residual stream, which has no floor and
    no reason to be positive. Used by the report's alerts and by compare's alert diff."""
    if zero_floor:
        return "dead-filter"
    return None if token_layer else "never-positive"


@dataclass(frozen=True)
class InputSummary:
    index: int
    name: str
    shape: tuple[int, ...]
    label: str | None
    thumbnail: EncodedImage | None
    notes: tuple[str, ...]
    spectrogram: EncodedImage | None = None  # 1D signals (thumbnails.spectrogram)


@dataclass(frozen=True)
class TopClass:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    input: str
    top: tuple[TopClass, ...]
    true_label: str | None
    correct: bool | None


@dataclass(frozen=True)
class Alert:
    kind: str
    layer: str | None
    message: str
    anchor: str | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    type: str
    source: str
    file: str | None
    sha256: str | None
    random_weights: bool
    total_params: int
    trainable_params: int
    init: str | None = None  # how random weights were made ("factory default init, seed 0"), else None
    kind: str = "module"  # how MODEL was given: torchvision, timm, hf, factory, file, demo, module (Python API)
    preprocessing_source: str | None = None  # where the images' preprocessing came from, None: none applied
    checkpoint_key: str | None = None  # the checkpoint entry read ("state_dict", "state_dict_ema")
    checkpoint_entries: tuple[str, ...] = ()  # the entries holding weights, when there was a choice
    checkpoint_prefix: str | None = None  # the key prefix stripped ("model.", "module.")
    left_at_init: tuple[str, ...] = ()  # --weights-partial: the model's tensors nothing loaded
    unused_tensors: tuple[str, ...] = ()  # --weights-partial: the checkpoint's tensors that fitted nothing


@dataclass(frozen=True)
class Totals:
    """torchinfo's totals, for one input (batch of 1)."""

    total_params: int
    trainable_params: int
    non_trainable_params: int
    mult_adds: int
    input_mb: float
    forward_backward_mb: float
    params_mb: float
    total_mb: float
    available: bool  # False when torchinfo could not walk the model


@dataclass(frozen=True)
class RunInfo:
    title: str
    reportgen_version: str
    torch_version: str
    torchvision_version: str
    device: str
    date: str
    batch_size: int
    preprocessing: tuple[str, ...]
    command: str | None = None
    seed: int = 0  # `--seed`: random init, probe noise, synthetic inputs and the RNG during the passes


@dataclass(frozen=True)
class BudgetInfo:
    """What `--max-size` reduced: (before, after) pairs and one sentence for the reader."""

    limit_bytes: int
    full_bytes: int  # the HTML with everything drawn
    tile_size: tuple[int, int]
    channels: tuple[int, int]
    inputs_drawn: tuple[int, int]
    fits: bool
    message: str
    # full_bytes estimated (its pictures alone were over the limit, so it was never rendered)
    full_bytes_estimated: bool = False


@dataclass(frozen=True)
class InputFile:
    """An input file as given (relative when it can be) and the sha256 of its bytes."""

    name: str
    path: str
    sha256: str
    byte_size: int


@dataclass(frozen=True)
class DenseItem:
    """One drawn box (detection) or one class present in the map (segmentation)."""

    class_index: int
    label: str
    value: float  # the box's score, or the class's fraction of the pixels
    colour: str  # "#rrggbb", as drawn
    box: tuple[float, ...] = ()  # detection: x1, y1, x2, y2 in the input's pixels


@dataclass(frozen=True)
class DenseInput:
    input_index: int
    input_name: str
    image: EncodedImage | None  # the thumbnail with the boxes or the class map drawn on it
    items: tuple[DenseItem, ...]
    total: int  # boxes the model output (detection), classes present (segmentation)


@dataclass(frozen=True)
class DenseOutputs:
    """What a detection or segmentation model output for the drawn inputs (dense_render.py)."""

    kind: str  # "detection" or "segmentation"
    note: str
    inputs: tuple[DenseInput, ...]


@dataclass(frozen=True)
class ReportModel:
    run: RunInfo
    model: ModelInfo
    totals: Totals
    layers: tuple[LayerRow, ...]
    inputs: tuple[InputSummary, ...]
    sections: tuple[LayerSection, ...]
    predictions: tuple[Prediction, ...]
    alerts: tuple[Alert, ...]
    notes: tuple[str, ...] = field(default=())
    insight: ReportInsight | None = None  # Grad-CAM, embedding, per-class view (insight_render.py)
    budget: BudgetInfo | None = None  # set when --max-size made the pictures smaller
    input_files: tuple[InputFile, ...] = ()  # what a reviewer needs to reproduce the run
    impact: ImpactReport | None = None  # ablation, misfiring filters, probes (impact_model.py)
    # the first input's maps before pooling, for the tile zoom, within a share of the size budget
    zoom_maps: tuple[ZoomMap, ...] = ()
    outputs: DenseOutputs | None = None  # detection boxes or segmentation maps (dense_render.py)



# ---- Insight (issue 4): statistics, Grad-CAM, top activations, embedding, per-class ----------


@dataclass(frozen=True)
class Histogram:
    """`counts[i]` values fall in bin i of `len(counts)` equal bins spanning [low, high]."""

    counts: tuple[int, ...]
    low: float
    high: float


@dataclass(frozen=True)
class FilterStats:
    """Per-filter (output channel) weight statistics over the FULL weight tensor, NaN/Inf excluded."""

    norm: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]
    sparsity: tuple[float, ...]  # fraction of weights exactly 0
    nonfinite: tuple[int, ...]


@dataclass(frozen=True)
class DuplicatePair:
    a: int
    b: int
    cosine: float


@dataclass(frozen=True)
class InitDistance:
    init: str  # a default initialisation, named with its distribution (weight_stats.INITS)
    distance: float  # Kolmogorov-Smirnov distance of the layer's weights to it


@dataclass(frozen=True)
class LayerInitTest:
    """One layer's weights against each default initialisation, and what the test can say at n.

    verdict "differs": farther than `critical` from every candidate (rejected at 5 %);
    "cannot tell": within `critical` of one, but at this n trained layers measured in
    benchmarks/init_test_rates.py sit as close (weight_stats.TRAINED_CLOSEST); "matches": within
    `critical` of `match` with n large enough that those trained layers would differ.
    """

    distances: tuple[InitDistance, ...]  # closest first
    sample: int  # weights tested: all of them, or a seeded stratified sample of LAYER_SAMPLE
    critical: float  # 5 % critical value of the KS distance at n = sample
    verdict: str  # "differs" | "cannot tell" | "matches"
    match: str  # the initialisation when verdict == "matches", else ""
    trained_closest: float  # weight_stats.TRAINED_CLOSEST: what "matches" needs critical <= half of


@dataclass(frozen=True)
class WeightStats:
    """Statistics of one layer's whole weight tensor (every filter, not only those drawn)."""

    shape: tuple[int, ...]
    count: int
    norm: float
    mean: float
    std: float
    min: float
    max: float
    sparsity: float
    nonfinite: int
    histogram: Histogram
    filters: FilterStats
    flat_filters: tuple[int, ...]  # all-zero or constant (finite) filters
    duplicates: tuple[DuplicatePair, ...]  # strongest first, at most weight_stats.MAX_PAIRS
    duplicate_pairs: int  # how many pairs are above the threshold in all
    duplicate_threshold: float
    fan_in: int
    init: LayerInitTest | None  # this layer against each default init (filled by `insight.collect`)


@dataclass(frozen=True)
class ChannelTop:
    """The inputs that excite one channel most, strongest first (one column per entry).

    `peaks[i]`: (row, column) of the peak cell in the layer's output (() when not looked up:
    peaks are found for the channels whose crops are drawn); `boxes[i]`: (top, left, bottom,
    right) in input pixels of the window that cell sees, clipped ((0, 0, 0, 0) without a peak).
    """

    channel: int
    inputs: tuple[int, ...]
    names: tuple[str, ...]
    scores: tuple[float, ...]  # the channel's max activation on each input
    peaks: tuple[tuple[int, ...], ...]
    boxes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class LayerInsight:
    weights: WeightStats | None
    weight_histogram: EncodedImage | None
    activity_chart: EncodedImage | None  # fraction of positions > 0 per channel
    max_abs_activation: float | None  # largest |max| or |mean| of any channel (None: none finite)
    dead_channels: tuple[int, ...]
    dead_fraction: float
    constant_channels: tuple[int, ...]  # same value everywhere, and not dead
    reaches_output: bool | None  # None: not checked
    receptive_field: tuple[int, ...]  # (height, width) in input pixels; () when unknown
    stride: tuple[int, ...]  # input pixels per output cell
    first_pixel: tuple[int, ...]  # input pixel where cell 0's window starts (< 0: in the padding)
    geometry_unknown: str  # why the receptive field is unknown ("" when known or not asked)
    top_activations: tuple[ChannelTop, ...]
    top_strip: EncodedImage | None  # rows: channels, columns: the top-k input crops
    top_strip_channels: tuple[int, ...]
    receptive_whole_input: bool = False  # attention over all tokens ran before: every cell sees it all


@dataclass(frozen=True)
class CamMap:
    kind: str  # "predicted" or "true"
    target: int
    target_label: str
    cam: tuple[tuple[float, ...], ...]  # at the layer's resolution (pooled to at most 16x16), 0..1
    peak: tuple[float, ...]  # (y, x) of the hottest point as fractions of height and width; (x,) 1D, (t, y, x) 3D
    overlay: EncodedImage | None


@dataclass(frozen=True)
class GradCamInput:
    input_index: int
    input_name: str
    maps: tuple[CamMap, ...]


@dataclass(frozen=True)
class GradCam:
    layer: str
    anchor: str | None
    inputs: tuple[GradCamInput, ...]
    note: str


@dataclass(frozen=True)
class EmbeddingPoint:
    input_index: int
    input_name: str
    x: float
    y: float
    label: str | None
    outlier: bool


@dataclass(frozen=True)
class Embedding:
    source: str
    dimension: int
    total_inputs: int
    colour_by: str  # "true label", "predicted label" or ""
    explained_variance: tuple[float, ...]  # fraction of the variance along each axis
    points: tuple[EmbeddingPoint, ...]
    outliers: tuple[int, ...]  # input indices, farthest first
    legend: tuple[tuple[str, str], ...]  # (label, colour)
    chart: EncodedImage | None


@dataclass(frozen=True)
class ClassRow:
    index: int
    label: str
    count: int
    correct: int
    accuracy: float


@dataclass(frozen=True)
class Misclassified:
    input_index: int
    input_name: str
    true_label: str
    top: tuple[TopClass, ...]


@dataclass(frozen=True)
class PerClass:
    labelled: int
    correct: int
    accuracy: float
    classes: tuple[ClassRow, ...]
    confusion_classes: tuple[int, ...]  # rows (true) and columns (predicted) of `confusion`
    confusion: tuple[tuple[int, ...], ...]
    confusion_pairs: tuple[tuple[int, int, int], ...]  # every (true, predicted, count), sparse
    wrong: tuple[Misclassified, ...]
    chart: EncodedImage | None


@dataclass(frozen=True)
class InitTest:
    """Are ALL conv weights, pooled, indistinguishable from a default initialisation?"""

    match: str  # "" or the initialisation
    distance: float  # Kolmogorov-Smirnov distance of the pooled, standardised weights (smallest)
    critical: float  # factor / sqrt(pooled sample size)
    layers: int  # conv layers judged
    sample: int  # weights in the pooled sample
    note: str  # why nothing was judged, when so


@dataclass(frozen=True)
class ReportInsight:
    gradcam: GradCam | None = None
    # attention rollout (rollout.py), drawn like Grad-CAM: one map per input, kind "rollout", target -1
    rollout: GradCam | None = None
    embedding: Embedding | None = None
    per_class: PerClass | None = None
    notes: tuple[str, ...] = ()
    init_test: InitTest | None = None


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/Inf: they become null (and are flagged by alerts instead)."""
    return value if math.isfinite(value) else None


def to_plain(value: Any, *, images: bool) -> Any:
    """Dataclasses -> dicts, tuples -> lists, NaN -> None; images as their sha256 unless asked."""
    if isinstance(value, EncodedImage):
        if images:
            return {f.name: getattr(value, f.name) for f in fields(value)}
        return {"sha256": value.sha256, "width": value.width, "height": value.height}
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), images=images) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v, images=images) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, images=images) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value
