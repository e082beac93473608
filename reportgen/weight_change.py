"""How the weights moved between two models: per layer and per filter, from the full weights.

For a layer's weight W_A and W_B of the same shape (filters output channel first):
relative L2 = ||W_B - W_A|| / ||W_A|| and cosine = <W_A, W_B> / (||W_A|| ||W_B||), over the
whole layer and over each filter (one output channel's kernel, all its input channels). A
filter of A that is all zeros has no relative change (NaN) unless B's is zero too (0). Layers
are matched by qualified name and weight shape; the others are listed as unmatched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from reportgen.compare_data import FilterPicture, LayerWeightChange, WeightComparison


def filters_of(module: nn.Module) -> torch.Tensor | None:
    """The module's conv-like weight as (out channels, ...) float64 on the CPU, or None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or isinstance(weight, nn.parameter.UninitializedParameter):
        return None
    tensor = weight.detach()
    if bool(getattr(module, "transposed", False)) and int(getattr(module, "groups", 1)) == 1:
        tensor = tensor.transpose(0, 1)  # ConvTranspose stores (in, out, *k)
    return tensor.to(device="cpu", dtype=torch.float64)


def _relative(delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return torch.where(base > 0, delta / base.clamp(min=1e-300),
                       torch.where(delta > 0, torch.nan, 0.0))


def _cosine(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    scale = norm_a * norm_b
    return torch.where(scale > 0, dot / scale.clamp(min=1e-300), torch.nan)


def layer_change(name: str, a: torch.Tensor, b: torch.Tensor) -> LayerWeightChange:
    flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    delta = torch.linalg.vector_norm(flat_b - flat_a, dim=1)
    norm_a, norm_b = torch.linalg.vector_norm(flat_a, dim=1), torch.linalg.vector_norm(flat_b, dim=1)
    dot = (flat_a * flat_b).sum(dim=1)
    total_delta = torch.linalg.vector_norm(delta)
    total_a, total_b = torch.linalg.vector_norm(norm_a), torch.linalg.vector_norm(norm_b)
    return LayerWeightChange(
        name=name, shape=tuple(int(d) for d in a.shape),
        relative_l2=float(_relative(total_delta, total_a)), cosine=float(_cosine(dot.sum(), total_a, total_b)),
        filter_relative_l2=_relative(delta, norm_a).numpy(), filter_cosine=_cosine(dot, norm_a, norm_b).numpy())


def _plane(filters: torch.Tensor, channel: int) -> np.ndarray:
    """One filter as drawn: the mean over its input channels ((kh, kw), (k,) or the middle depth slice)."""
    kernel = filters[channel]
    if kernel.dim() == 0:
        return kernel.reshape(1, 1).numpy()
    plane = kernel.mean(dim=0) if kernel.dim() >= 2 else kernel[None]
    while plane.dim() > 2:
        plane = plane[plane.shape[0] // 2]
    return plane.numpy()


def matched(model_a: nn.Module, model_b: nn.Module, selected_a: Sequence[str],
            selected_b: Sequence[str]) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], list[str]]:
    modules_a, modules_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    pairs, unmatched = [], []
    wanted_b = set(selected_b)
    for name in selected_a:
        a = filters_of(modules_a[name])
        b = filters_of(modules_b[name]) if name in wanted_b and name in modules_b else None
        if a is None and b is None:
            continue
        if a is None or b is None or a.shape != b.shape:
            unmatched.append(name)
            continue
        pairs.append((name, a, b))
    unmatched += [name for name in selected_b if name not in set(selected_a) and filters_of(modules_b[name]) is not None]
    return pairs, unmatched


def compare_weights(model_a: nn.Module, model_b: nn.Module, selected_a: Sequence[str], selected_b: Sequence[str],
                    *, max_filters: int) -> WeightComparison | None:
    """Per layer and per filter changes of the layers both models have (same name and shape),
    and the `max_filters` filters with the largest relative change, drawn A | B | B - A."""
    pairs, unmatched = matched(model_a, model_b, selected_a, selected_b)
    if not pairs and not unmatched:
        return None
    layers = [layer_change(name, a, b) for name, a, b in pairs]
    candidates = []
    for (name, a, b), change in zip(pairs, layers):
        for channel, value in enumerate(change.filter_relative_l2):
            score = float(value) if np.isfinite(value) else np.inf
            if score > 0:
                candidates.append((-score, name, channel, a, b, change))
    candidates.sort(key=lambda item: (item[0], item[1], item[2]))  # largest first; ties by layer, channel
    pictures = tuple(
        FilterPicture(layer=name, channel=channel, relative_l2=float(change.filter_relative_l2[channel]),
                      cosine=float(change.filter_cosine[channel]), a=_plane(a, channel), b=_plane(b, channel))
        for _, name, channel, a, b, change in candidates[:max_filters])
    return WeightComparison(layers=tuple(layers), most_changed=pictures, unmatched=tuple(unmatched))


def weight_steps(models: Sequence[nn.Module], selected: Sequence[str], *, strip_channels: int
                 ) -> tuple[tuple[str, ...], np.ndarray, tuple[tuple[str, int, tuple[np.ndarray, ...]], ...]]:
    """A training run: each layer's relative L2 change from checkpoint i to i + 1 ((N - 1, layers)),
    and the first layer's first `strip_channels` filters at every checkpoint."""
    names: list[str] = []
    columns = []
    first_layer: list[torch.Tensor] | None = None
    modules = [dict(model.named_modules()) for model in models]
    for name in selected:
        weights = [filters_of(found[name]) if name in found else None for found in modules]
        if any(w is None or w.shape != weights[0].shape for w in weights):  # type: ignore[union-attr]
            continue
        found = [w for w in weights if w is not None]
        names.append(name)
        columns.append([layer_change(name, found[i], found[i + 1]).relative_l2 for i in range(len(found) - 1)])
        if first_layer is None:
            first_layer = found
    steps = np.array(columns, dtype=np.float64).T if columns else np.zeros((len(models) - 1, 0))
    strips = ()
    if first_layer is not None:
        count = min(strip_channels, first_layer[0].shape[0])
        strips = tuple((names[0], channel, tuple(_plane(w, channel) for w in first_layer)) for channel in range(count))
    return tuple(names), steps, strips

