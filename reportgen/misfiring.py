"""Misfiring filters: channels that fire much harder on the inputs the model gets wrong.

For every labelled input and every channel of the watched layers we take the channel's mean
activation (spatial mean of the layer output, as in the layer statistics) and split the inputs
into correctly and wrongly classified ones. A channel misfires when its mean activation on the
wrong inputs is far above that on the correct ones, measured as a standardised difference
(Cohen's d with the pooled standard deviation):

    d = (mean_wrong - mean_correct) / pooled_std

Memory stays flat in the number of inputs: per channel we keep float64 running sums (count,
sum, sum of squares for each group) and a running top-k of the wrong inputs by activation, all
on the device. The per-input means of one batch live only until that batch's predictions are
known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen.outputs import find_logits
from reportgen.devices import model_dtype
from reportgen.errors import ReportError, one_line
from reportgen.inputs import InputSet, call_model

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


class _LayerSums:
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
            all_values = torch.cat([self.top_values, values], dim=1)
            all_inputs = torch.cat([self.top_inputs, indices[None, :].expand(values.shape[0], -1)], dim=1)
            top = torch.topk(all_values, self.k, dim=1)
            self.top_values = top.values
            self.top_inputs = all_inputs.gather(1, top.indices)


class MisfiringTracker:
    """Accumulates per-channel activation by correct/wrong. Hooks only inside `hooks()`."""

    def __init__(self, model: nn.Module, layer_names: Sequence[str], k: int = TOP_INPUTS) -> None:
        self.model = model
        self.layer_names = list(layer_names)
        self.k = k
        self._pending: dict[str, torch.Tensor] = {}
        self._sums: dict[str, _LayerSums] = {}
        self.correct = 0
        self.wrong = 0
        self.predictions: dict[int, tuple[int, int]] = {}

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Attach the hooks for one clean forward; they are removed on exit, also on error."""
        modules = dict(self.model.named_modules())
        handles = []
        self._pending.clear()
        try:
            for name in self.layer_names:
                if name in modules:
                    handles.append(modules[name].register_forward_hook(self._make_hook(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _make_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name in self._pending:  # a module called twice: its first call counts
                return
            if isinstance(output, torch.Tensor) and output.dim() >= 2 and output.is_floating_point():
                values = output.detach().float().reshape(output.shape[0], output.shape[1], -1)
                self._pending[name] = values.mean(dim=2).double()

        return hook

    def add_batch(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, offset: int) -> None:
        """After the forward that ran inside `hooks()`: split that batch by correct/wrong."""
        predicted = logits.argmax(dim=1)
        correct = predicted == targets
        self.correct += int((correct & valid).sum())
        self.wrong += int((~correct & valid).sum())
        for row in torch.nonzero(~correct & valid).flatten().tolist():
            self.predictions[offset + row] = (int(targets[row]), int(predicted[row]))
        for name, means in self._pending.items():
            sums = self._sums.get(name)
            if sums is None:
                sums = _LayerSums(means.shape[1], means.device, self.k)
                self._sums[name] = sums
            sums.add(means, correct, valid, offset)
        self._pending.clear()

    def result(self) -> MisfiringResult:
        layers = []
        for name in self.layer_names:
            sums = self._sums.get(name)
            if sums is None:
                continue
            layers.append(_layer_result(name, sums, self.correct, self.wrong))
        return MisfiringResult(correct=self.correct, wrong=self.wrong, layers=tuple(layers),
                               predictions=dict(sorted(self.predictions.items())))


def _layer_result(name: str, sums: _LayerSums, n_correct: int, n_wrong: int) -> LayerMisfiring:
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


def find_misfiring(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    layer_names: Sequence[str],
    *,
    batch_size: int = 16,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> MisfiringResult:
    """Its own pass over the labelled inputs (use the tracker inside ablation to share one).

    Call in eval mode under `torch.inference_mode()`.
    """
    tracker = MisfiringTracker(model, layer_names)
    dtype = model_dtype(model)
    for start in range(0, len(inputs), max(1, batch_size)):
        stop = min(start + max(1, batch_size), len(inputs))
        raw = [inputs.label(i) for i in range(start, stop)]
        if all(label is None for label in raw):
            if progress is not None:
                progress(stop - start)
            continue
        batch = inputs.batch(start, stop)
        batch = batch.to(device=device, dtype=dtype if batch.is_floating_point() else None)
        try:
            with tracker.hooks():
                output = call_model(model, batch, forward_args)
        except Exception as exc:
            raise ReportError(f"misfiring: the model failed on inputs {inputs.names[start]}..: {one_line(exc)}") from exc
        logits = find_logits(output, stop - start)
        if logits is None:
            raise ReportError("--misfiring needs a classifier: the model's output must be (N, classes) logits")
        bad = [lbl for lbl in raw if lbl is not None and not 0 <= lbl < logits.shape[1]]
        if bad:
            raise ReportError(f"label {bad[0]} is outside the model's {logits.shape[1]} classes")
        valid = torch.tensor([lbl is not None for lbl in raw], device=logits.device)
        targets = torch.tensor([lbl if lbl is not None else 0 for lbl in raw], device=logits.device)
        tracker.add_batch(logits, targets, valid, start)
        if progress is not None:
            progress(stop - start)
    return tracker.result()


def flagged(layer: LayerMisfiring, result: MisfiringResult) -> list[int]:
    """Channels of `layer` that misfire, highest d first (ties by channel index)."""
    if result.wrong < result.min_wrong or result.correct < result.min_wrong:
        return []
    order = [(-float(d), c) for c, d in enumerate(layer.effect) if np.isfinite(d) and d >= result.threshold]
    return [c for _, c in sorted(order)]
