"""Misfiring filters: channels that fire much harder on the inputs the model gets wrong.

For every labelled input and every channel of the watched layers we take the channel's mean
activation (spatial mean at the layer's observed site, as in the layer statistics: after BN and
the activation, or the raw conv output with `--tap conv`) and split the inputs
into correctly and wrongly classified ones. A channel misfires when its mean activation on the
wrong inputs is far above that on the correct ones, measured as a standardised difference
(Cohen's d with the pooled standard deviation):

    d = (mean_wrong - mean_correct) / pooled_std

Memory stays flat in the number of inputs: per channel we keep float64 running sums (count,
sum, sum of squares for each group) and a running top-k of the wrong inputs by activation, all
on the device. The per-input means of one batch live only until that batch's predictions are
known. They are collected in the main pass (`collectors/misfiring.py`), from the row sums every
collector shares, so misfiring costs no pass of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MISFIRE_EFFECT = 1.0  # d at or above this (and at least MIN_WRONG wrong inputs) flags a channel
MIN_WRONG = 2  # inputs needed in each group (wrong, correct) before anything is flagged
TOP_INPUTS = 3  # wrong inputs kept per channel, by activation


@dataclass(frozen=True)
class LayerMisfiring:
    name: str
    mean_correct: np.ndarray  # (C,)
    mean_wrong: np.ndarray  # (C,) NaN when nothing was wrong
    effect: np.ndarray  # (C,) d; NaN when undefined
    top_inputs: np.ndarray  # (C, k) input indices of the wrong inputs with the highest activation; -1 = none
    top_values: np.ndarray  # (C, k)


@dataclass(frozen=True)
class MisfiringResult:
    correct: int
    wrong: int
    layers: tuple[LayerMisfiring, ...]
    predictions: dict[int, tuple[int, int]]  # wrong input index -> (true label, predicted label)
    threshold: float = MISFIRE_EFFECT
    min_wrong: int = MIN_WRONG


class LayerSums:
    """Per channel of one layer: sums and sums of squares of the per-input means of the correct
    and the wrong inputs, and the top-k wrong inputs by mean (device tensors, float64)."""

    def __init__(self, channels: int, device: torch.device, k: int) -> None:
        def z() -> torch.Tensor:
            return torch.zeros(channels, dtype=torch.float64, device=device)

        self.sum = {True: z(), False: z()}
        self.sumsq = {True: z(), False: z()}
        self.top_values = torch.full((channels, k), float("-inf"), dtype=torch.float64, device=device)
        self.top_inputs = torch.full((channels, k), -1, dtype=torch.long, device=device)
        self.k = k

    def add(self, means: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor, offset: int) -> None:
        """means (B, C) float64; correct, valid (B,) bool."""
        for flag in (True, False):
            rows = valid & (correct if flag else ~correct)
            if bool(rows.any()):
                chosen = means[rows]
                self.sum[flag] += chosen.sum(0)
                self.sumsq[flag] += (chosen * chosen).sum(0)
        wrong = valid & ~correct
        if bool(wrong.any()):
            indices = torch.arange(means.shape[0], device=means.device)[wrong] + offset
            values = means[wrong].transpose(0, 1)  # (C, W)
            self._keep(values, indices[None, :].expand(values.shape[0], -1))

    def merge(self, other: LayerSums) -> None:
        for flag in (True, False):  # out of place: a merge after the pass may run outside inference mode
            self.sum[flag] = self.sum[flag] + other.sum[flag]
            self.sumsq[flag] = self.sumsq[flag] + other.sumsq[flag]
        self._keep(other.top_values, other.top_inputs)

    def _keep(self, values: torch.Tensor, inputs: torch.Tensor) -> None:
        """The k highest of the kept and the new (C, n) values; ties to the lower input index
        (-1, no input, last)."""
        all_values = torch.cat([self.top_values, values], dim=1)
        all_inputs = torch.cat([self.top_inputs, inputs], dim=1)
        rank = torch.where(all_inputs < 0, torch.iinfo(torch.long).max, all_inputs)
        by_input = torch.sort(rank, dim=1, stable=True).indices
        all_values, all_inputs = all_values.gather(1, by_input), all_inputs.gather(1, by_input)
        order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.top_values = all_values.gather(1, order)
        self.top_inputs = all_inputs.gather(1, order)


def layer_result(name: str, sums: LayerSums, n_correct: int, n_wrong: int) -> LayerMisfiring:
    def stats(flag: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
        total = sums.sum[flag].cpu().numpy()
        squares = sums.sumsq[flag].cpu().numpy()
        if n == 0:
            nan = np.full_like(total, np.nan)
            return nan, nan
        mean = total / n
        # unbiased variance from the running sums (clipped: rounding can make it slightly < 0)
        var = np.maximum(squares - n * mean * mean, 0.0) / max(n - 1, 1)
        return mean, var

    mean_c, var_c = stats(True, n_correct)
    mean_w, var_w = stats(False, n_wrong)
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = n_correct + n_wrong - 2
        pooled = np.sqrt(((n_correct - 1) * var_c + (n_wrong - 1) * var_w) / dof) if dof > 0 else np.full_like(mean_c, np.nan)
        # a floor so that a channel constant within each group still gets a finite d
        floor = 1e-6 * (np.abs(mean_c) + np.abs(mean_w) + 1e-12)
        effect = (mean_w - mean_c) / np.maximum(pooled, floor)
    if n_correct == 0 or n_wrong == 0:
        effect = np.full_like(mean_c, np.nan)
    values = sums.top_values.cpu().numpy()
    inputs = sums.top_inputs.cpu().numpy()
    inputs = np.where(np.isfinite(values), inputs, -1)
    return LayerMisfiring(name=name, mean_correct=mean_c, mean_wrong=mean_w, effect=effect,
                          top_inputs=inputs, top_values=values)


def flagged(layer: LayerMisfiring, result: MisfiringResult) -> list[int]:
    """Channels of `layer` that misfire, highest d first (ties by channel index)."""
    if result.wrong < result.min_wrong or result.correct < result.min_wrong:
        return []
    order = [(-float(d), c) for c, d in enumerate(layer.effect) if np.isfinite(d) and d >= result.threshold]
    return [c for _, c in sorted(order)]
