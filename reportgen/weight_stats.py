"""Weight statistics of a conv-like layer, from its FULL weight tensor, reduced on its device.

Per layer and per filter (output channel): L2 norm, mean, std, min, max, sparsity (fraction of
weights exactly 0) and NaN/Inf count; a histogram; the all-zero or constant filters; pairs of
near-duplicate filters (cosine similarity of the flattened filters at or above a threshold); and
whether the weights are statistically indistinguishable from one of the default initialisations
(a sign the model was never trained).

Only plain values leave this module (`WeightStats`), so nothing keeps the tensor alive.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from reportgen.report_model import (
    DuplicatePair,
    FilterStats,
    Histogram,
    InitDistance,
    InitTest,
    LayerInitTest,
    WeightStats,
)

HISTOGRAM_BINS = 32
HISTOGRAM_SAMPLE = 16_384  # weights binned at most (evenly spaced); `Histogram.counts` sums to this
MAX_PAIRS = 50  # near-duplicate pairs listed per layer (the count covers all of them)
PROJECTION_DIM = 8  # random projection used to find duplicate candidates in big layers
EXACT_SIMILARITY_FLOPS = 50_000_000  # below this, compare every pair of filters exactly


def filter_matrix(weight: torch.Tensor, *, transposed: bool, groups: int) -> torch.Tensor:
    """(filters, values per filter), output channel first, as `analyze.layer_weights` orders them."""
    tensor = weight.detach()
    if transposed and groups == 1:
        # ConvTranspose stores (in, out, *k); filter j is column j.
        tensor = tensor.transpose(0, 1)
    return tensor.reshape(tensor.shape[0], -1)


def weight_stats(module: nn.Module, *, duplicate_threshold: float = 0.99) -> WeightStats | None:
    """Statistics of `module.weight` (conv-like: 3 or more dims), or None if it has none."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 3:
        return None
    if isinstance(weight, nn.parameter.UninitializedParameter) or weight.numel() == 0:
        return None
    groups = int(getattr(module, "groups", 1))
    transposed = bool(getattr(module, "transposed", False))
    with torch.no_grad():
        matrix = filter_matrix(weight, transposed=transposed, groups=groups)
        # Filters of one group see the same inputs; filters of different groups cannot be
        # duplicates of each other (a depthwise conv has one filter per group: no pairs).
        per_group = matrix.shape[0] // groups if not transposed and groups > 0 else matrix.shape[0]
        return _stats(weight.detach(), matrix, duplicate_threshold, max(per_group, 1))


def _stats(weight: torch.Tensor, matrix: torch.Tensor, duplicate_threshold: float, group_size: int) -> WeightStats:
    # One pass per statistic. Rows (one filter, at most a few thousand values) are summed in
    # float32 (pairwise summation keeps that exact enough), the layer totals in float64.
    # NaN/Inf are masked out only when present, so the common case makes no masked copies.
    values = matrix.float()
    width = values.shape[1]
    # A row sum is NaN/Inf when the row holds one (or when finite values overflow float32,
    # which the masked path then handles just the same), so the scan only runs when needed.
    per_sum = values.sum(dim=1)
    any_nonfinite = not bool(torch.isfinite(per_sum).all())
    if any_nonfinite:
        per_nonfinite = (~torch.isfinite(values)).sum(dim=1)
        safe = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        per_sum = safe.sum(dim=1, dtype=torch.float64)
        if bool(torch.isfinite(per_sum).all()) and not bool(per_nonfinite.any()):
            any_nonfinite = False  # a float32 overflow, not a NaN/Inf weight
    else:
        per_nonfinite = torch.zeros(values.shape[0], dtype=torch.int64, device=values.device)
        safe = values
    per_count = (width - per_nonfinite).double()
    counts = per_count.clamp(min=1)
    per_sum = per_sum.double()
    per_sumsq = torch.linalg.vector_norm(safe, dim=1).double().square()
    per_mean = per_sum / counts
    per_std = (per_sumsq / counts - per_mean.square()).clamp(min=0).sqrt()
    if any_nonfinite:
        finite = torch.isfinite(values)
        per_min = torch.where(finite, values, torch.full_like(values, math.inf)).amin(dim=1).double()
        per_max = torch.where(finite, values, torch.full_like(values, -math.inf)).amax(dim=1).double()
    else:
        # amin and amax apart: torch.aminmax along a dim is ~10x slower on CPU.
        per_min, per_max = values.amin(dim=1).double(), values.amax(dim=1).double()
    per_norm = per_sumsq.sqrt()
    # Trained layers rarely hold an exact 0, so the per-filter count only runs when one does.
    if int(torch.count_nonzero(values)) < values.numel():
        per_zero = (width - torch.count_nonzero(values, dim=1)).double() / width
    else:
        per_zero = torch.zeros(values.shape[0], dtype=torch.float64, device=values.device)
    none_finite = per_count == 0
    nan = torch.full_like(per_mean, math.nan)
    per_mean, per_std = torch.where(none_finite, nan, per_mean), torch.where(none_finite, nan, per_std)
    per_min, per_max = torch.where(none_finite, nan, per_min), torch.where(none_finite, nan, per_max)

    total_finite = int(per_count.sum())
    total_sum, total_sumsq = float(per_sum.sum()), float(per_sumsq.sum())
    mean = total_sum / max(total_finite, 1)
    std = math.sqrt(max(total_sumsq / max(total_finite, 1) - mean * mean, 0.0))
    low = float(per_min[~none_finite].min()) if total_finite else math.nan
    high = float(per_max[~none_finite].max()) if total_finite else math.nan
    histogram = _histogram(values[torch.isfinite(values)] if any_nonfinite else values.reshape(-1), low, high)

    # All-zero or constant filters: every value finite and max == min.
    flat = (per_max == per_min) & (per_nonfinite == 0)
    flat_filters = tuple(int(i) for i in torch.nonzero(flat).flatten().tolist())
    usable = (per_nonfinite == 0) & (per_norm > 0) & ~flat
    pairs: list[DuplicatePair] = []
    total_pairs = 0
    for start in range(0, values.shape[0] if group_size > 1 else 0, group_size):
        stop = start + group_size
        found, count = duplicate_pairs(safe[start:stop], usable=usable[start:stop], threshold=duplicate_threshold,
                                       norms=per_norm[start:stop])
        pairs.extend(DuplicatePair(a=p.a + start, b=p.b + start, cosine=p.cosine) for p in found)
        total_pairs += count
    pairs.sort(key=lambda p: (-round(p.cosine, 9), p.a, p.b))
    fan_in = int(weight[0].numel()) if weight.dim() > 1 else 1
    # The per-layer comparison with the default initialisations (`init`) is filled in by
    # `insight.collect` from `untrained_test`, which samples and sorts every conv layer once.
    host = {name: tensor.cpu().tolist() for name, tensor in (
        ("norm", per_norm), ("mean", per_mean), ("std", per_std), ("min", per_min), ("max", per_max),
        ("sparsity", per_zero))}
    return WeightStats(
        shape=tuple(int(d) for d in weight.shape),
        count=int(values.numel()),
        norm=math.sqrt(total_sumsq),
        mean=mean if total_finite else math.nan,
        std=std if total_finite else math.nan,
        min=low,
        max=high,
        sparsity=float(per_zero.sum()) * width / max(values.numel(), 1),
        nonfinite=int(per_nonfinite.sum()),
        histogram=histogram,
        filters=FilterStats(
            norm=tuple(host["norm"]),
            mean=tuple(host["mean"]),
            std=tuple(host["std"]),
            min=tuple(host["min"]),
            max=tuple(host["max"]),
            sparsity=tuple(host["sparsity"]),
            nonfinite=tuple(int(v) for v in per_nonfinite.cpu().tolist()),
        ),
        flat_filters=flat_filters,
        duplicates=tuple(pairs[:MAX_PAIRS]),
        duplicate_pairs=total_pairs,
        duplicate_threshold=float(duplicate_threshold),
        fan_in=fan_in,
        init=None,
    )


def _histogram(finite_values: torch.Tensor, low: float, high: float) -> Histogram:
    if finite_values.numel() == 0 or not (math.isfinite(low) and math.isfinite(high)):
        return Histogram(counts=(), low=math.nan, high=math.nan)
    if high <= low:
        return Histogram(counts=(int(finite_values.numel()),), low=low, high=high)
    # histc is the slowest reduction here, so big layers are binned from an evenly spaced
    # sample of HISTOGRAM_SAMPLE weights (the shape of the distribution, not exact counts).
    step = max(1, finite_values.numel() // HISTOGRAM_SAMPLE)
    counts = torch.histc(finite_values[::step], bins=HISTOGRAM_BINS, min=low, max=high)
    return Histogram(counts=tuple(round(c) for c in counts.cpu().tolist()), low=low, high=high)


def duplicate_pairs(
    matrix: torch.Tensor, *, usable: torch.Tensor, threshold: float, norms: torch.Tensor | None = None
) -> tuple[tuple[DuplicatePair, ...], int]:
    """Pairs (a < b) of usable rows with cosine similarity >= threshold, strongest first.

    Small layers compare every pair. Big ones first project the rows onto PROJECTION_DIM seeded
    random directions (Johnson-Lindenstrauss) and divide by the row norms, keep the pairs whose
    projected squared distance is within 6x of the threshold's (chi-square with 8 degrees of
    freedom: a true pair is missed with p < 1e-6), and confirm each candidate exactly. No
    normalised copy of the weights is made, and with no candidate (the usual case) the (C, C)
    work is one matmul and one min/max reduction.
    """
    count = int(usable.sum())
    if count < 2 or threshold > 1.0:
        return (), 0
    if norms is None:
        norms = torch.linalg.vector_norm(matrix, dim=1, dtype=torch.float64)
    inverse = torch.where(usable, 1.0 / norms.clamp(min=1e-300), torch.zeros_like(norms)).to(matrix.dtype)
    rows, dim = matrix.shape
    # Unusable rows (zero, flat or NaN) have inverse 0: their similarities are 0, never a pair
    # for a positive threshold; the diagonal is excluded by hand.
    if rows * rows * dim <= EXACT_SIMILARITY_FLOPS or dim <= PROJECTION_DIM:
        units = matrix * inverse[:, None]
        similarity = units @ units.T
        similarity.fill_diagonal_(-2.0)
        # float32 cosines of equal filters read 0.99999988: compare to float32 precision
        if float(similarity.amax()) < threshold - 1e-6:
            return (), 0
        found = (similarity >= threshold - 1e-6).nonzero()
        found = found[found[:, 0] < found[:, 1]]
        scores = similarity[found[:, 0], found[:, 1]]
    else:
        generator = torch.Generator(device="cpu").manual_seed(0)
        projection = torch.randn(dim, PROJECTION_DIM, generator=generator, dtype=matrix.dtype)
        projected = (matrix @ projection.to(matrix.device)) * (inverse[:, None] / math.sqrt(PROJECTION_DIM))
        limit = 2 * (1 - threshold) * 6 + 1e-9  # |u - v|^2 = 2 (1 - cos)
        candidates = _close_pairs(projected, limit)
        if candidates.shape[0] == 0:
            return (), 0
        candidates = candidates[(candidates[:, 0] < candidates[:, 1]) & usable[candidates[:, 0]] & usable[candidates[:, 1]]]
        a, b = candidates[:, 0], candidates[:, 1]
        exact = (matrix[a] * matrix[b]).sum(dim=1) * inverse[a] * inverse[b]
        keep = exact >= threshold - 1e-6
        found, scores = candidates[keep], exact[keep]
    total = int(found.shape[0])
    if total == 0:
        return (), 0
    score_list = scores.cpu().tolist()
    rows_a, rows_b = found[:, 0].cpu().tolist(), found[:, 1].cpu().tolist()
    # Strongest first; ties by (a, b) so the order is deterministic.
    order = sorted(range(total), key=lambda i: (-round(score_list[i], 9), rows_a[i], rows_b[i]))
    pairs = tuple(
        DuplicatePair(a=rows_a[i], b=rows_b[i], cosine=min(score_list[i], 1.0)) for i in order[:MAX_PAIRS]
    )
    return pairs, total


SCREEN_BLOCK = 1 << 19  # distances screened per block (2 MiB of float32: stays in cache)


def _close_pairs(points: torch.Tensor, limit: float) -> torch.Tensor:
    """(K, 2) index pairs (a != b) of rows whose squared distance is <= limit.

    The (rows, rows) distances go a block of rows at a time through one buffer: the whole
    matrix (16 MB for 2048 filters) took ~8 passes through memory, ~24 ms a layer, and nearly
    every layer has a few candidates, so it was also searched in full.
    """
    rows = points.shape[0]
    lengths = points.square().sum(1)
    step = max(1, SCREEN_BLOCK // max(rows, 1))
    buffer = torch.empty(min(step, rows) * rows, dtype=points.dtype, device=points.device)
    found = []
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        block = torch.mm(points[start:stop], points.T, out=buffer[: (stop - start) * rows].view(stop - start, rows))
        block.mul_(-2).add_(lengths[start:stop, None]).add_(lengths[None, :])  # |p_a - p_b|^2
        block.diagonal(offset=start).fill_(math.inf)
        near = (block.amin(dim=1) <= limit).nonzero().flatten()
        if near.numel():
            pairs = (block[near] <= limit).nonzero()
            found.append(torch.stack([near[pairs[:, 0]] + start, pairs[:, 1]], dim=1))
    if not found:
        return torch.empty((0, 2), dtype=torch.long, device=points.device)
    return torch.cat(found)


POOLED_SAMPLE = 65_536  # weights in the pooled initialisation test, at most (spread over layers)
LAYER_SAMPLE = 8_192  # weights in one layer's own test, at most (5 % critical value 0.0150)
MIN_POOLED = 256  # below this many weights nothing is judged
# The smallest KS distance to its closest default init measured on a trained conv layer
# (benchmarks/init_test_rates.py: the shared ResNet-20, the demo, MNIST CNNs after one epoch).
# A layer is said to match an init only when its n makes the 5 % critical value at most half
# of this, so that such a trained layer would be told apart; below that n: "cannot tell".
TRAINED_CLOSEST = 0.03


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    """PyTorch's fan_in / fan_out of a weight (torch.nn.init._calculate_fan_in_and_fan_out).

    These are the fans the inits themselves use, also where they are not the layer's true fans:
    a grouped conv's fan_out counts every output channel, and a ConvTranspose (stored
    (in, out / groups, *k)) gets "fan_in" = out / groups * prod(k).
    """
    receptive = int(weight[0][0].numel()) if weight.dim() > 2 else 1
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


INITS = {
    # name: (CDF family, scale from (fan_in, fan_out)); weights / scale ~ U(-1, 1) or N(0, 1)
    # nn.Conv*/nn.Linear reset_parameters: kaiming_uniform_(a=sqrt(5)), bound sqrt(6 / (1 + 5) / fan_in)
    "PyTorch default U(±1/sqrt(fan_in))": ("uniform", lambda fi, fo: 1.0 / math.sqrt(fi)),
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): torchvision ResNet, VGG, MobileNet
    "kaiming-normal N(0, 2/fan_out)": ("normal", lambda fi, fo: math.sqrt(2.0 / fo)),
    # kaiming_normal_() defaults (fan_in, ReLU gain): DenseNet, many CIFAR ResNets
    "kaiming-normal N(0, 2/fan_in)": ("normal", lambda fi, fo: math.sqrt(2.0 / fi)),
}


def ks_critical(n: int) -> float:
    """The 5 % critical value of the one-sample Kolmogorov-Smirnov distance at n (Stephens'
    approximation 1.358 / (sqrt(n) + 0.12 + 0.11 / sqrt(n)), within 1 % of the exact value from
    n = 5; asymptotically 1.358 / sqrt(n))."""
    root = math.sqrt(n)
    return 1.358 / (root + 0.12 + 0.11 / root)


def _stratified(count: int, size: int, generator: np.random.Generator) -> np.ndarray:
    """`size` of range(count), one uniformly from each of `size` equal strata: spread over the
    whole tensor like a stride, but not locked to one kernel position as `[::step]` would be."""
    starts = np.arange(size + 1, dtype=np.int64) * count // size
    return starts[:-1] + (generator.random(size) * (starts[1:] - starts[:-1])).astype(np.int64)


def _draw(flat: torch.Tensor, size: int, generator: np.random.Generator) -> np.ndarray:
    """At most `size` of the values (`_stratified`), sorted, as float64 on the host."""
    if flat.numel() > size:
        flat = flat[torch.from_numpy(_stratified(flat.numel(), size, generator)).to(flat.device)]
    return np.sort(flat.cpu().double().numpy())


def layer_init_test(ordered: np.ndarray, fans: tuple[int, int]) -> LayerInitTest:
    """One layer's sorted float64 weights against each candidate in INITS."""
    n = int(ordered.size)
    # Candidates that are the same distribution for this layer (fan_in == fan_out) are one entry
    # under both names: naming only one would claim a difference the weights cannot show.
    same: dict[tuple[str, float], list[str]] = {}
    for name, (family, scale_of) in INITS.items():
        same.setdefault((family, scale_of(*fans)), []).append(name)
    found = sorted((_ks(ordered / scale, family), " = ".join(names)) for (family, scale), names in same.items())
    critical = ks_critical(n)
    closest, name = found[0]
    if closest > critical:
        verdict, match = "differs", ""
    elif critical > TRAINED_CLOSEST / 2:
        verdict, match = "cannot tell", ""
    else:
        verdict, match = "matches", name
    return LayerInitTest(
        distances=tuple(InitDistance(init, distance) for distance, init in found),
        sample=n, critical=critical, verdict=verdict, match=match, trained_closest=TRAINED_CLOSEST)


def untrained_test(
    weights: dict[str, torch.Tensor], *, factor: float = 2.5
) -> tuple[InitTest, dict[str, LayerInitTest]]:
    """Pool every conv layer's weights, each divided by a candidate initialisation's scale for
    that layer, and compare the pooled sample with the candidate's standard CDF (KS distance).

    A fresh model (one init scheme for all its convs) gives a pooled sample drawn from exactly
    that CDF: distance ~ 1/sqrt(n); trained ones sit far above (0.05..0.5). Pooling gives the test
    its power: a small, briefly trained layer can look like its init on its own, but not together
    with the others. Nothing is judged when a layer holds NaN/Inf (a different problem) or when
    there are fewer than MIN_POOLED weights. Candidates (no parameter is fitted to the weights):
    INITS. Detection and false-positive rates: benchmarks/init_test_rates.py.

    Returns the pooled verdict and, per layer with finite weights, its own test against every
    candidate (`layer_init_test`, on at most LAYER_SAMPLE weights).
    """
    usable = {name: w.detach() for name, w in weights.items() if w.dim() >= 2 and w.numel() > 0}
    if not usable:
        return InitTest("", math.nan, math.nan, 0, 0, "no conv weights"), {}
    generator = np.random.default_rng(0)
    per_layer = max(64, POOLED_SAMPLE // len(usable))
    samples, layers, nonfinite = {}, {}, False
    for name, weight in usable.items():
        flat = weight.reshape(-1)
        if not bool(torch.isfinite(flat.float().sum())):
            nonfinite = True
            continue
        fans = _fans(weight)
        layers[name] = layer_init_test(_draw(flat, LAYER_SAMPLE, generator), fans)
        # sorted once: dividing by a positive scale keeps the order
        samples[name] = (_draw(flat, per_layer, generator), fans)
    if nonfinite:
        return InitTest("", math.nan, math.nan, len(usable), 0, "a conv layer holds NaN/Inf weights"), layers
    total = sum(int(sample.size) for sample, _ in samples.values())
    if total < MIN_POOLED:
        return InitTest("", math.nan, math.nan, len(usable), total, f"only {total} weights: too few to judge"), layers
    best_name, best = "", math.inf
    for name, (family, scale_of) in INITS.items():
        pooled = np.sort(np.concatenate([sample / scale_of(*fans) for sample, fans in samples.values()]))
        distance = _ks(pooled, family)
        if distance < best:
            best_name, best = name, distance
    critical = factor / math.sqrt(total)
    verdict = InitTest(best_name if best <= critical else "", best, critical, len(usable), total, "")
    return verdict, layers


def _ks(ordered: np.ndarray, family: str) -> float:
    """Kolmogorov-Smirnov distance of a sorted sample to U(-1, 1) or N(0, 1).

    numpy, not torch: at these sizes (<= 65,536) torch's CPU sort and small ops cost ~10x more."""
    n = ordered.size
    if family == "uniform":
        cdf = np.clip((ordered + 1) / 2, 0.0, 1.0)
    else:
        cdf = 0.5 * (1 + torch.erf(torch.from_numpy(ordered / math.sqrt(2.0))).numpy())
    gap = np.arange(1, n + 1, dtype=np.float64) / n - cdf  # F_n just after each point minus F
    return float(max(gap.max(), 1.0 / n - gap.min()))  # 1/n - gap: F minus F_n just before it
