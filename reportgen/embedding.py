"""Penultimate-layer features of every input, projected to 2D with PCA.

Features are what the classifier head sees: the input of the model's last `nn.Linear`, or, for a
model without one, the global-average-pooled output of its last convolution. They are collected
during the main pass (`collectors/features.py`): at most `max_points` vectors are kept (the
first ones), so memory is bounded whatever the number of inputs.

PCA: the kept vectors are centred and projected on their two leading principal directions,
found by an exact SVD (small sets) or a seeded randomized range finder (Halko et al.; the global
RNG is never touched). Signs are fixed so the largest-magnitude coordinate of each direction is
positive: the same inputs give the same picture. Outliers: the points farthest from the centroid
in the full feature space whose robust z-score (median and MAD of the distances) exceeds
`OUTLIER_Z`, at most `MAX_OUTLIERS`, farthest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MAX_POINTS = 2000
OUTLIER_Z = 3.5
MAX_OUTLIERS = 5
EXACT_SVD_LIMIT = 512  # min(n, dim) up to which PCA is an exact SVD


@dataclass(frozen=True)
class Features:
    source: str
    vectors: np.ndarray  # (n, dim) float32, n <= max_points
    indices: np.ndarray  # (n,) input index of each row
    total: int  # inputs seen


@dataclass(frozen=True)
class Projection:
    coordinates: np.ndarray  # (n, 2)
    explained: tuple[float, ...]  # fraction of the total variance along each axis
    outliers: tuple[int, ...]  # row numbers, farthest first


def feature_layer(model: nn.Module) -> tuple[str, str] | None:
    """(module name, how the features are taken) of the penultimate features, or None."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, nn.modules.conv._ConvNd):
            last_conv = name
    if last_linear is not None:
        return last_linear, "input"
    if last_conv is not None:
        return last_conv, "pooled output"
    return None


def pca_2d(vectors: np.ndarray, *, seed: int = 0) -> Projection | None:
    """Project (n, dim) vectors onto their two leading principal directions."""
    n = vectors.shape[0]
    if n < 3:
        return None
    data = torch.from_numpy(np.nan_to_num(vectors.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    centred = data - data.mean(dim=0, keepdim=True)
    total = float(centred.square().sum())
    if total <= 0:
        return None
    if min(centred.shape) <= EXACT_SVD_LIMIT:
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        directions = vh[:2].T
        singular = singular[:2]
    else:
        directions, singular = _randomized_directions(centred, rank=2, seed=seed)
    # Deterministic signs: the largest-magnitude entry of each direction is positive.
    signs = torch.sign(directions.gather(0, directions.abs().argmax(dim=0, keepdim=True)))
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    coordinates = centred @ directions
    if coordinates.shape[1] < 2:
        coordinates = torch.cat([coordinates, torch.zeros(n, 2 - coordinates.shape[1], dtype=coordinates.dtype)], 1)
    explained = tuple(float(s) ** 2 / total for s in singular)
    distances = centred.norm(dim=1).numpy()
    return Projection(coordinates=coordinates.numpy(), explained=explained, outliers=outliers(distances))


def _randomized_directions(centred: torch.Tensor, *, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top right-singular vectors by a randomized range finder with 2 power iterations."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(centred.shape[1], rank + 8, generator=generator, dtype=centred.dtype)
    basis, _ = torch.linalg.qr(centred @ probe)
    for _ in range(2):
        basis, _ = torch.linalg.qr(centred.T @ basis)
        basis, _ = torch.linalg.qr(centred @ basis)
    _, singular, vh = torch.linalg.svd(basis.T @ centred, full_matrices=False)
    return vh[:rank].T, singular[:rank]


def outliers(distances: np.ndarray, *, z: float = OUTLIER_Z, limit: int = MAX_OUTLIERS) -> tuple[int, ...]:
    """Rows whose distance to the centroid has a robust z-score above `z`, farthest first."""
    if distances.size < 5:
        return ()
    median = float(np.median(distances))
    spread = 1.4826 * float(np.median(np.abs(distances - median)))
    if spread <= 0:
        spread = float(np.std(distances)) or 1.0
    scores = (distances - median) / spread
    order = sorted(range(distances.size), key=lambda i: (-distances[i], i))
    return tuple(i for i in order if scores[i] > z)[:limit]


def colour_keys(labels: Sequence[str | None], palette: Sequence[str], other: str) -> tuple[dict[str, str], list[str]]:
    """Colour per label: the most frequent labels get the palette (ties by name), the rest `other`."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    ranked = sorted(counts, key=lambda label: (-counts[label], label))
    mapping = {label: palette[i] for i, label in enumerate(ranked[: len(palette)])}
    colours = [mapping.get(label, other) if label is not None else other for label in labels]
    return mapping, colours
