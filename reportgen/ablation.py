"""Filter ablation: zero one output channel of a layer at a time and measure what the model loses.

For every ablated channel the whole set of labelled inputs goes through the model with that
channel's output set to zero, and we record accuracy, mean true-class probability and mean
cross-entropy loss (overall and per true class). The impact of a filter is the change against
the unablated model; filters are ranked by the loss increase.

Batched method. One forward per ablated channel would rerun the whole network A times per
batch. Instead, for a chunk of A channels, a forward pre-hook on an *expansion module* M
(an ancestor of the layer, or the layer itself) repeats each of the B input rows A times, and a
forward hook on the layer multiplies its output by a (A, C) channel mask, so row b*A + a has
channel a zeroed. Upstream of M runs once on B rows; only M and what follows run on B*A rows.

M is chosen per layer as the deepest ancestor for which expansion is exact: starting at the layer
itself and walking up to the model input. A tensor computed before M that meets an expanded one
later (a residual shortcut, say) either fails to broadcast (B != B*A, so the forward raises) or
broadcasts correctly (B == 1: every expanded row came from that same input). The first chunk of
the first batch carries one extra, unmasked slot whose logits must equal a plain forward; a
candidate that raises, changes the batch size of the output or fails that check is rejected
and the next one up is tried. The model input always works for models that treat inputs
independently (eval mode); a layer for which even that fails is skipped, with the reason.

After the first batch, layers that share an expansion module are ablated together: one pass
holds slots for channels of several layers (each layer's mask is all ones on the others'
slots), so the network before that module runs once per pass for all of them. Measured in conv
multiply-adds on resnet18 (64 inputs, 8 channels in each of its 20 convs), this costs 0.63 full
forwards per ablation, against 0.82 one layer at a time and 1.0 for a forward per channel.

Hooks live only inside `_AblationHooks` (a context manager); the caller runs this in eval mode
under `torch.inference_mode()` and restores the model's modes (see `impact.py`).
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.outputs import find_logits
from reportgen.devices import model_dtype
from reportgen.errors import ReportError, one_line
from reportgen.distributed import Group, move
from reportgen.engine.collector import Batch
from reportgen.engine.loop import run_batches
from reportgen.hooks import HookOwner, HookSet
from reportgen.inputs import InputSet, call_model

ForwardArgs = Optional[Callable[[torch.Tensor], Any]]  # batch -> the model's arguments (inputs.call_model)

DEFAULT_MAX_CHANNELS = 16
DEFAULT_MAX_ROWS = 512  # rows (inputs x ablated channels) in one forward pass


@dataclass(frozen=True)
class AblationOptions:
    """`layers`: globs over qualified module names (empty: the report's layers). `max_channels`:
    the first N output channels of each layer are ablated (None: all). `max_rows`: inputs times
    ablated channels in one forward pass (memory bound)."""

    layers: tuple[str, ...] = ()
    max_channels: int | None = DEFAULT_MAX_CHANNELS
    batch_size: int = 16
    max_rows: int = DEFAULT_MAX_ROWS


@dataclass(frozen=True)
class Scores:
    """Metrics over the labelled inputs; arrays are per ablated channel, `per_class` is
    (..., classes) mean true-class probability per true class."""

    accuracy: np.ndarray
    probability: np.ndarray
    loss: np.ndarray
    per_class: np.ndarray


@dataclass(frozen=True)
class LayerAblation:
    name: str
    type: str
    channels_total: int
    channels: tuple[int, ...]  # the ablated output channels, in order
    scores: Scores  # arrays of length len(channels); per_class (len(channels), classes)
    expanded_at: str  # module whose input was expanded; "" = the model input
    rows: int  # forward rows run for this layer
    seconds: float  # wall time (benchmarks only: never rendered, output stays deterministic)


@dataclass(frozen=True)
class AblationResult:
    inputs: int  # inputs that counted (those with a target)
    targets: str  # "labels" (true labels) or "predictions" (the unablated model's own top-1)
    classes: tuple[int, ...]  # class indices present among the targets, sorted
    class_counts: tuple[int, ...]
    baseline: Scores  # scalars as 0-d arrays; per_class (classes,)
    layers: tuple[LayerAblation, ...]
    skipped: tuple[tuple[str, str], ...]  # (layer, reason)
    max_channels: int | None
    forward_rows: int
    seconds: float


@dataclass(frozen=True)
class Baseline:
    """What ablation needs from the unablated model, collected in the main pass
    (`collectors/ablation_baseline.py`), so that ablation runs no clean pass of its own."""

    targets: np.ndarray  # (N,) int64: the true class, or the model's own top-1 without labels
    valid: np.ndarray  # (N,) bool: the input counts (it has a label, or no input has one)
    labelled: bool
    num_classes: int
    verify: dict[int, np.ndarray]  # input -> (classes,) float32 clean logits, for ablation's first batches
    scores: Scores  # the unablated model's metrics (scalars as 0-d arrays)
    classes: tuple[int, ...]  # present among the targets, sorted
    class_counts: tuple[int, ...]
    counted: int


def select_ablation_layers(model: nn.Module, patterns: Sequence[str], default: Sequence[str]) -> list[str]:
    """Names matching any glob in `patterns` (must match something), or `default`."""
    if not patterns:
        return list(default)
    names = [name for name, _ in model.named_modules() if name]
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        sample = ", ".join(names[:8]) or "(the model has no submodules)"
        raise ReportError(f"--ablation-layers {' '.join(patterns)} matches no layer; names look like: {sample}")
    return chosen


def ancestors(name: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`, ``]: the expansion candidates, deepest first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]


class _Rejected(Exception):
    """An expansion candidate that does not give exact per-row ablations."""


def _expand(value: Any, batch: int, slots: int) -> Any:
    """Repeat each row of every batch-sized tensor in `value` (also inside tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == batch:
            return value.repeat_interleave(slots, dim=0)
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_expand(v, batch, slots) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_expand(v, batch, slots) for v in value)
    if isinstance(value, dict):
        return {k: _expand(v, batch, slots) for k, v in value.items()}
    return value


class _AblationHooks(HookOwner):
    """Expands the batch at `expand` (pre-hook) and masks each layer's output channels (hooks).

    Row b*S + s of everything after the expansion belongs to input b with mask row s of every
    layer's (S, C) mask (all ones where that slot ablates another layer).
    """

    def __init__(self, expand: nn.Module, masks: Sequence[tuple[nn.Module, torch.Tensor]], batch: int) -> None:
        super().__init__()
        self.expand = expand
        self.masks = list(masks)
        self.batch = batch
        self.slots = int(self.masks[0][1].shape[0])

    def _register(self) -> None:
        self.hooks.pre(self.expand, self._pre, with_kwargs=True)
        for layer, mask in self.masks:
            self.hooks.forward(layer, self._masker(mask))

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        new_args = tuple(_expand(a, self.batch, self.slots) for a in args)
        new_kwargs = {k: _expand(v, self.batch, self.slots) for k, v in kwargs.items()}
        return new_args, new_kwargs

    def _masker(self, mask: torch.Tensor) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                raise _Rejected("the layer's output is not a (N, C, ...) tensor")
            rows, channels = output.shape[0], output.shape[1]
            if rows != self.batch * self.slots or channels != mask.shape[1]:
                raise _Rejected(f"the layer saw {rows} rows, not {self.batch} x {self.slots}")
            shaped = output.reshape(self.batch, self.slots, channels, -1)
            return (shaped * mask.to(dtype=output.dtype)[None, :, :, None]).reshape(output.shape)

        return hook


@dataclass
class Sums:
    """Running sums on the device for one layer (or the baseline: one 'channel')."""

    correct: torch.Tensor
    probability: torch.Tensor
    loss: torch.Tensor
    per_class: torch.Tensor  # (A, K) sum of true-class probability by true class

    @classmethod
    def zeros(cls, count: int, classes: int, device: torch.device) -> Sums:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(z(count), z(count), z(count), z(count, classes))

    def add(self, positions: slice, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> None:
        """logits (B, A, K); targets (B,) (clamped valid indices); weight (B,) 1 = counts."""
        logp = F.log_softmax(logits.float(), dim=2)
        index = targets[:, None, None].expand(logits.shape[0], logits.shape[1], 1)
        true_logp = logp.gather(2, index).squeeze(2).double()  # (B, A)
        w = weight.double()[:, None]
        prob = true_logp.exp()
        self.loss[positions] += (-true_logp * w).sum(0)
        self.probability[positions] += (prob * w).sum(0)
        hits = (logits.argmax(dim=2) == targets[:, None]).double()
        self.correct[positions] += (hits * w).sum(0)
        onehot = F.one_hot(targets, self.per_class.shape[1]).double() * weight.double()[:, None]  # (B, K)
        self.per_class[positions] += prob.transpose(0, 1) @ onehot

    def merge(self, other: Sums) -> None:
        # out of place: a merge after the pass may run outside inference mode
        self.correct = self.correct + other.correct
        self.probability = self.probability + other.probability
        self.loss = self.loss + other.loss
        self.per_class = self.per_class + other.per_class

    def scores(self, total: float, counts: np.ndarray, present: np.ndarray) -> Scores:
        denominator = max(total, 1.0)
        per_class = self.per_class.cpu().numpy()[:, present] / np.maximum(counts, 1)[None, :]
        return Scores(
            accuracy=(self.correct / denominator).cpu().numpy(),
            probability=(self.probability / denominator).cpu().numpy(),
            loss=(self.loss / denominator).cpu().numpy(),
            per_class=per_class,
        )


@dataclass
class _LayerState:
    name: str
    module: nn.Module
    channels: list[int]
    channels_total: int
    candidates: list[str]
    expanded_at: str | None = None
    sums: Sums | None = None
    rows: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    fresh: bool = False  # its expansion was chosen on this batch (and it ran there already)


def _output_channels(model: nn.Module, modules: dict[str, nn.Module], names: Sequence[str],
                     batch: torch.Tensor, forward_args: ForwardArgs) -> dict[str, int]:
    """Channel count of each named module's (first) output: one forward of the first input."""
    seen: dict[str, int] = {}

    def make(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                seen.setdefault(name, int(output.shape[1]))
        return hook

    with HookSet() as hooks:
        for name in names:
            if name in modules:
                hooks.forward(modules[name], make(name))
        call_model(model, batch[:1], forward_args)
    return seen


def _logits(output: Any) -> torch.Tensor | None:
    return find_logits(output, None)


def chunks(count: int, batch: int, max_rows: int) -> list[range]:
    """Ablation slots per pass: as many channels as fit in `max_rows` rows of `batch` inputs."""
    per_pass = max(1, max_rows // max(batch, 1))
    return [range(start, min(start + per_pass, count)) for start in range(0, count, per_pass)]


def run_ablation(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    layer_names: Sequence[str],
    options: AblationOptions,
    *,
    baseline: Baseline | None,
    forward_args: ForwardArgs = None,
    progress: Callable[[int], None] | None = None,
    group: Group | None = None,
) -> AblationResult | None:
    """Ablate each channel of each layer in `layer_names` over all of `inputs` (see module doc).

    Under torchrun (`group`), each rank ablates its share of whole batches and rank 0 merges the
    sums (the result; None on the other ranks).

    Call in eval mode under `torch.inference_mode()`. `baseline`: the unablated model's targets,
    metrics and first clean logits, from the main pass (`collectors/ablation_baseline.py`; for a
    call on its own, `clean_baseline` there); None: the output held no logits.
    """
    started = time.perf_counter()
    if len(inputs) == 0:
        raise ReportError("no inputs to ablate")
    if options.max_rows < 1:
        raise ReportError(f"ablation rows per pass must be at least 1, got {options.max_rows}")
    if options.max_channels is not None and options.max_channels < 1:
        raise ReportError(f"--ablation-max-channels must be at least 1, got {options.max_channels}")
    modules = dict(model.named_modules())
    dtype = model_dtype(model)
    # Inputs per batch: the report's batch size. A pass holds max_rows // batch_size slots, and
    # the network before the expansion module runs once per pass, so a small batch with many
    # slots per pass (several layers' channels together, see _grouped) reruns it least.
    batch_size = max(1, options.batch_size)
    if baseline is None:
        raise ReportError("--ablation needs a classifier: the model's output must be (N, classes) logits")
    num_classes = baseline.num_classes
    states: list[_LayerState] = []
    skipped: list[tuple[str, str]] = []
    share = group.share(len(inputs), batch_size) if group is not None else (0, len(inputs))

    def step(batch: Batch) -> None:
        nonlocal states
        rows = batch.size
        targets = torch.from_numpy(baseline.targets[batch.start:batch.stop]).to(device)
        weight = torch.from_numpy(baseline.valid[batch.start:batch.stop]).to(device).double()
        first = batch.start == share[0]
        if first:
            states = _layer_states(model, modules, layer_names, batch.tensor, options, skipped, forward_args)
        clean = torch.from_numpy(np.stack([baseline.verify[i] for i in range(batch.start, batch.stop)])).to(device) \
            if first else None
        # First batch: each layer on its own, choosing (and checking) where to expand.
        for state in [s for s in states if s.skipped is None and s.expanded_at is None]:
            layer_started = time.perf_counter()
            state.sums = Sums.zeros(len(state.channels), num_classes, device)
            for part in chunks(len(state.channels), rows, options.max_rows):
                verify = clean if state.expanded_at is None else None
                try:
                    logits = _ablated(model, modules, batch.tensor, state, list(part), verify, forward_args)
                except _Rejected as exc:
                    _skip(state, str(exc), skipped)
                    break
                state.rows += logits.shape[0] * logits.shape[1]
                state.sums.add(slice(part.start, part.stop), logits, targets, weight)
            state.seconds += time.perf_counter() - layer_started
            if progress is not None:
                progress(rows)
            state.fresh = True
        # Later batches: one pass per expansion module for all the layers that share it, so the
        # network before it runs once for all of them (not once per layer).
        groups: dict[str, list[_LayerState]] = {}
        for state in states:
            if state.skipped is None and not state.fresh and state.expanded_at is not None:
                groups.setdefault(state.expanded_at, []).append(state)
            state.fresh = False
        for expand_name, members in groups.items():
            _grouped(model, modules, batch.tensor, expand_name, members, targets, weight, options.max_rows,
                     forward_args, skipped)
            if progress is not None:
                progress(rows * len(members))

    if group is None:
        run_batches(inputs, step, device=device, dtype=dtype, batch_size=batch_size)
    else:
        error: BaseException | None = None
        try:
            run_batches(inputs, step, device=device, dtype=dtype, batch_size=batch_size, first=share[0],
                        count=share[1])
        except Exception as exc:
            error = exc
        group.agree(error)
        shares = group.gather([(state.name, state.expanded_at, state.sums, state.rows, state.seconds, state.skipped,
                                state.channels, state.channels_total) for state in states])
        if shares is None:
            return None
        states, skipped = _merged_states(model, modules, layer_names, options, shares, skipped, device)
    present = np.array(baseline.classes, dtype=np.int64)
    counts = np.array(baseline.class_counts, dtype=np.int64)
    layers = tuple(
        LayerAblation(
            name=state.name,
            type=type(state.module).__name__,
            channels_total=state.channels_total,
            channels=tuple(state.channels),
            scores=state.sums.scores(baseline.counted, counts, present),
            expanded_at=state.expanded_at or "",
            rows=state.rows,
            seconds=state.seconds,
        )
        for state in states
        if state.skipped is None and state.sums is not None
    )
    return AblationResult(
        inputs=baseline.counted,
        targets="labels" if baseline.labelled else "predictions",
        classes=baseline.classes,
        class_counts=baseline.class_counts,
        baseline=baseline.scores,
        layers=layers,
        skipped=tuple(skipped),
        max_channels=options.max_channels,
        # the clean rows ran once, in the main pass
        forward_rows=len(inputs) + sum(state.rows for state in states),
        seconds=time.perf_counter() - started,
    )


def _merged_states(model: nn.Module, modules: dict[str, nn.Module], layer_names: Sequence[str],
                   options: AblationOptions, shares: list[Any], skipped: list[tuple[str, str]],
                   device: torch.device) -> tuple[list[_LayerState], list[tuple[str, str]]]:
    """Every rank's per-layer sums added up (rank 0). A layer skipped on any rank is skipped."""
    merged: dict[str, _LayerState] = {}
    reasons = dict(skipped)
    for part in shares:
        for name, expanded_at, sums, rows, seconds, reason, channels, channels_total in part:
            if reason is not None:
                reasons.setdefault(name, reason)
                continue
            state = merged.get(name)
            if state is None:
                module = modules[name]
                merged[name] = _LayerState(name=name, module=module, channels=list(channels),
                                           channels_total=channels_total, candidates=[],
                                           expanded_at=expanded_at, sums=move(sums, device), rows=rows,
                                           seconds=seconds)
            else:
                state.sums.merge(move(sums, device))  # type: ignore[union-attr]
                state.rows += rows
                state.seconds += seconds
    ordered = [merged[name] for name in layer_names if name in merged and name not in reasons]
    return ordered, list(reasons.items())


def _layer_states(
    model: nn.Module,
    modules: dict[str, nn.Module],
    layer_names: Sequence[str],
    batch: torch.Tensor,
    options: AblationOptions,
    skipped: list[tuple[str, str]],
    forward_args: ForwardArgs,
) -> list[_LayerState]:
    states = []
    found = _output_channels(model, modules, layer_names, batch, forward_args)
    for name in layer_names:
        module = modules.get(name)
        if module is None:
            skipped.append((name, "no such module"))
            continue
        channels = found.get(name)
        if channels is None:
            skipped.append((name, "its output is not a (N, C, ...) tensor, or it never ran"))
            continue
        limit = channels if options.max_channels is None else min(channels, options.max_channels)
        states.append(
            _LayerState(
                name=name,
                module=module,
                channels=list(range(limit)),
                channels_total=channels,
                candidates=[c for c in ancestors(name) if c in modules or c == ""],
            )
        )
    return states


def _ablated(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batch: torch.Tensor,
    state: _LayerState,
    channels: list[int],
    verify: torch.Tensor | None,
    forward_args: ForwardArgs = None,
) -> torch.Tensor:
    """Logits (B, A, K) with channel channels[a] of the layer zeroed in slot a.

    With `verify` (the clean logits of this batch), the expansion module is chosen first: an
    extra all-ones slot 0 must reproduce `verify`.
    """
    rows = batch.shape[0]
    extra = 1 if verify is not None else 0
    mask = torch.ones(len(channels) + extra, state.channels_total, device=batch.device)
    for slot, channel in enumerate(channels):
        mask[slot + extra, channel] = 0.0
    candidates = [state.expanded_at] if state.expanded_at is not None else state.candidates
    reasons = []
    for candidate in candidates:
        expand = modules[candidate] if candidate else model
        try:
            with _AblationHooks(expand, [(state.module, mask)], rows):
                output = call_model(model, batch, forward_args)
            logits = _logits(output)
            if logits is None or logits.shape[0] != rows * mask.shape[0]:
                raise _Rejected("the output lost the expanded batch")
            shaped = logits.reshape(rows, mask.shape[0], -1)
            if verify is not None:
                scale = float(verify.abs().max()) + 1.0
                tolerance = (1e-2 if verify.dtype in (torch.float16, torch.bfloat16) else 1e-3) * scale
                if float((shaped[:, 0].float() - verify.float()).abs().max()) > tolerance:
                    raise _Rejected("unablated rows differ from a plain forward")
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a candidate that breaks the forward is rejected, not fatal
            reasons.append(f"{candidate or 'model input'}: {one_line(exc)}")
            continue
        state.expanded_at = candidate
        return shaped[:, extra:]
    detail = reasons[-1] if reasons else "no candidate"
    raise _Rejected(f"no exact batched ablation (the model mixes inputs across the batch?): {detail}")


def _skip(state: _LayerState, reason: str, skipped: list[tuple[str, str]]) -> None:
    state.skipped = reason
    skipped.append((state.name, reason))


def _grouped(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batch: torch.Tensor,
    expand_name: str,
    members: list[_LayerState],
    targets: torch.Tensor,
    weight: torch.Tensor,
    max_rows: int,
    forward_args: ForwardArgs,
    skipped: list[tuple[str, str]],
) -> None:
    """Ablate every channel of every layer in `members` (all expanded at `expand_name`) on
    `batch`, as many slots per pass as `max_rows` allows; slot s ablates one (layer, channel)."""
    rows = batch.shape[0]
    slots = [(state, position) for state in members for position in range(len(state.channels))]
    expand = modules[expand_name] if expand_name else model
    for part in chunks(len(slots), rows, max_rows):
        started = time.perf_counter()
        chosen = slots[part.start:part.stop]
        masks = []
        spans: list[tuple[_LayerState, int, int, int]] = []  # state, first slot, first position, count
        for state in members:
            mine = [(slot, position) for slot, (owner, position) in enumerate(chosen) if owner is state]
            if not mine:
                continue
            mask = torch.ones(len(chosen), state.channels_total, device=batch.device)
            for slot, position in mine:
                mask[slot, state.channels[position]] = 0.0
            masks.append((state.module, mask))
            spans.append((state, mine[0][0], mine[0][1], len(mine)))
        try:
            with _AblationHooks(expand, masks, rows):
                output = call_model(model, batch, forward_args)
            logits = _logits(output)
            if logits is None or logits.shape[0] != rows * len(chosen):
                raise _Rejected("the output lost the expanded batch")
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # it worked on the first batch; a later failure skips the layers
            for state in members:
                if state.skipped is None:
                    _skip(state, f"failed on a later batch: {one_line(exc)}", skipped)
            return
        shaped = logits.reshape(rows, len(chosen), -1)
        elapsed = time.perf_counter() - started
        for state, first_slot, first_position, count in spans:
            assert state.sums is not None
            state.sums.add(slice(first_position, first_position + count),
                           shaped[:, first_slot:first_slot + count], targets, weight)
            state.rows += rows * count
            state.seconds += elapsed * count / len(chosen)  # the pass's time, shared by slots


def ranking(deltas: np.ndarray, channels: Sequence[int]) -> list[int]:
    """Positions into `channels`, most impact (largest delta) first; ties by channel index.
    NaN (a non-finite loss) ranks first: it is the largest damage there is."""
    keys = [(-math.inf if not math.isfinite(float(d)) else -float(d), int(c), i)
            for i, (d, c) in enumerate(zip(deltas, channels))]
    return [i for _, _, i in sorted(keys)]
