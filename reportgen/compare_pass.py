"""The compare pass: two or more models on the same batches, one engine loop, joined per batch.

CKA and the channel correlations need the models' features for the same inputs at the same
time, so the models do not get a pass each: `run_batches` (engine/loop.py) hands every batch to
one step that runs each model in turn, each with its own `MainPass` (its hooks attached only
around its own forward, its collectors riding it as in a report), and then joins them:

- `GramCollector` (one per model) keeps, for the batch only, each observed layer call's
  (n, n) float64 Gram matrix, and on the two compared models (the first and the last) the
  observed tensor itself;
- `PairState` adds the batch to the CKA sums of every layer of A against every layer of B
  (`cka.CkaSums`), for a training run each checkpoint's layer against the same layer of the
  last and of the next checkpoint, the per-channel sums of the A-B correlation, and the
  thumbnails of the inputs whose top-1 class flipped.

Nothing is kept per input but the predictions (and at most `max_flips` thumbnails), so memory
is flat in the number of inputs. Every state merges by addition, and the whole batch is one
transaction: a batch that runs out of memory is undone in every model and run again at half
the size (the CKA then mixes batch sizes, which the report lists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from reportgen import gradcam, thumbnails
from reportgen import distributed
from reportgen.analyze import AnalysisOptions, learn_plan, select_layers
from reportgen.cka import CHUNK, MIN_BATCH, CkaSums, gram
from reportgen.collectors.activations import ActivationCollector
from reportgen.collectors.predictions import PredictionCollector
from reportgen.compare_alerts import alerts_diff, layer_alerts
from reportgen.compare_data import (
    AlertsDiff,
    ChannelComparison,
    CheckpointInfo,
    CkaMatrix,
    CompareAnalysis,
    Flip,
    ObservedLayer,
    PredictionComparison,
    TrainingRun,
)
from reportgen.devices import model_dtype
from reportgen.engine.collector import Batch, Collector, Observation
from reportgen.engine.loop import load_batch, run_batches
from reportgen.engine.main_pass import MainPass
from reportgen.errors import ReportError
from reportgen.inputs import InputSet, from_tensors
from reportgen.model_state import on_device, preserved_modes
from reportgen.sites import Plan, Site
from reportgen.summary import fallback_summary
from reportgen.weight_change import compare_weights, weight_steps


@dataclass(frozen=True)
class CompareOptions:
    analysis: AnalysisOptions = AnalysisOptions()
    top_k: int = 5  # inputs kept per channel for the top-k overlap (0: off)
    max_flips: int = 16  # flipped inputs shown (all are counted)
    max_filters: int = 12  # most-changed filters drawn
    strip_channels: int = 4  # a training run: channels of the first layer drawn across checkpoints
    cam: bool = True  # Grad-CAM of the drawn flips in A and in B (a small pass over them after the pass)


TOP_SET_CHANNELS = 2  # per layer, the channels whose top-k inputs (A's and B's) are drawn


# -- one model's side of a batch --
@dataclass
class GramState:
    grams: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (n, n) float64
    held: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (n, C, S) float32, this batch only
    layers: dict[str, ObservedLayer] = field(default_factory=dict)

    def merge(self, other: GramState) -> None:
        # the Gram matrices live for one batch (PairState takes them at the end of the step);
        # only what the layers are is kept
        for key, layer in other.layers.items():
            self.layers.setdefault(key, layer)


class GramCollector(Collector[GramState]):
    """Per batch: each observed layer call's Gram matrix of its flattened per-input features
    (and, with `hold`, the observed values for the channel correlation)."""

    observes = True

    def __init__(self, *, hold: bool) -> None:
        super().__init__()
        self.hold = hold
        # one buffer per layer call for the held values, reused batch after batch: a fresh
        # copy per batch would leave the allocator's high-water mark growing with the pass
        self._buffers: dict[str, torch.Tensor] = {}

    def empty(self) -> GramState:
        return GramState()

    def observe(self, observation: Observation) -> None:
        values, flat = observation.rows()
        staged = self.staged
        staged.grams[observation.key] = gram(values)
        if self.hold:
            # a later in-place op of the forward could change the observed tensor: a copy, for this batch
            buffer = self._buffers.get(observation.key)
            if buffer is None or buffer.shape[1:] != flat.shape[1:] or buffer.shape[0] < flat.shape[0]:
                buffer = torch.empty_like(flat)
                self._buffers[observation.key] = buffer
            held = buffer[:flat.shape[0]]
            held.copy_(flat)
            staged.held[observation.key] = held
        if observation.key not in self.state.layers:
            staged.layers[observation.key] = ObservedLayer(
                key=observation.key, name=observation.name, type=observation.module_type,
                tap=tap_of(observation.key, observation.site), shape=tuple(int(d) for d in values.shape[1:]))


def tap_of(key: str, site: Site) -> str:
    """The module call whose output the features are (the conv's own when observed raw)."""
    if site.raw is None and site.steps:
        return site.module_key or f"{key} → {' → '.join(site.steps)}"
    return key


# -- the join --
@dataclass
class CorrelationSums:
    """Per channel, over all inputs and positions: count, sums of a, b, a^2, b^2, a*b (float64)."""

    count: int
    a: torch.Tensor
    b: torch.Tensor
    aa: torch.Tensor
    bb: torch.Tensor
    ab: torch.Tensor

    @classmethod
    def of(cls, a: torch.Tensor, b: torch.Tensor) -> CorrelationSums:
        """Sums of (N, C, S) values, in float64, a block of channels at a time (the float64
        temporaries stay under cka.CHUNK elements whatever the layer's size)."""
        n, channels, positions = a.shape
        step = max(1, CHUNK // max(n * positions, 1))
        parts: list[list[torch.Tensor]] = [[], [], [], [], []]
        for start in range(0, channels, step):
            x, y = a[:, start:start + step].double(), b[:, start:start + step].double()
            for found, value in zip(parts, (x, y, x * x, y * y, x * y)):
                found.append(value.sum(dim=(0, 2)))
        sa, sb, saa, sbb, sab = (torch.cat(found) for found in parts)
        return cls(count=n * positions, a=sa, b=sb, aa=saa, bb=sbb, ab=sab)

    def merge(self, other: CorrelationSums) -> None:
        self.count += other.count
        self.a, self.b = self.a + other.a, self.b + other.b
        self.aa, self.bb, self.ab = self.aa + other.aa, self.bb + other.bb, self.ab + other.ab

    def correlation(self) -> np.ndarray:
        n = max(self.count, 1)
        mean_a, mean_b = self.a / n, self.b / n
        cov = self.ab / n - mean_a * mean_b
        var_a = torch.clamp(self.aa / n - mean_a**2, min=0)
        var_b = torch.clamp(self.bb / n - mean_b**2, min=0)
        scale = torch.sqrt(var_a * var_b)
        # a channel constant in either model (a dead one) has no correlation: NaN, said as n/a
        r = torch.where(scale > 1e-12 * (1 + mean_a.abs() * mean_b.abs()), cov / scale, torch.nan)
        return r.clamp(-1, 1).cpu().numpy()


@dataclass
class PairState:
    cka: CkaSums | None = None
    to_last: list[CkaSums] = field(default_factory=list)
    to_next: list[CkaSums] = field(default_factory=list)
    correlation: dict[str, CorrelationSums] = field(default_factory=dict)
    flip_pictures: dict[int, np.ndarray | None] = field(default_factory=dict)
    flip_inputs: dict[int, np.ndarray] = field(default_factory=dict)  # the kept flips as the models saw them
    flips_total: int = 0

    def merge(self, other: PairState) -> None:
        if other.cka is not None:
            if self.cka is None:
                self.cka = other.cka
            else:
                self.cka.merge(other.cka)
        if not self.to_last:
            self.to_last, self.to_next = other.to_last, other.to_next
        else:
            for mine, theirs in zip(self.to_last + self.to_next, other.to_last + other.to_next):
                mine.merge(theirs)
        for key, sums in other.correlation.items():
            if key in self.correlation:
                self.correlation[key].merge(sums)
            else:
                self.correlation[key] = sums
        self.flip_pictures.update(other.flip_pictures)
        self.flip_inputs.update(other.flip_inputs)
        self.flips_total += other.flips_total


@dataclass
class Side:
    """One model of the pass: its main pass and the collectors the join reads."""

    model: nn.Module
    main: MainPass
    grams: GramCollector
    predictions: PredictionCollector
    activations: ActivationCollector | None
    dtype: torch.dtype


class ComparePass:
    """Every model on each batch, then the join (see the module doc). A `Transaction` for
    `run_batches`: begin, commit and discard go to every model's collectors and the join."""

    def __init__(self, sides: Sequence[Side], inputs: InputSet, *, max_flips: int) -> None:
        if len(sides) < 2:
            raise ValueError("a comparison needs two models or more")
        self.sides = list(sides)
        self.inputs = inputs
        self.max_flips = max_flips
        self.state = PairState()
        self._staged: PairState | None = None
        self.keys: list[list[str]] = []  # per model: its observed layer calls, fixed by the first batch
        self.common: list[str] = []  # the keys every model observed (a training run's layers)
        self.notes: list[str] = []

    # -- Transaction --
    def begin(self, batch: Batch) -> None:
        for side in self.sides:
            side.main.begin(batch)
        self._staged = PairState()

    def commit(self) -> None:
        for side in self.sides:
            side.main.commit()
        if self._staged is not None:
            self.state.merge(self._staged)
        self._staged = None

    def discard(self) -> None:
        for side in self.sides:
            side.main.discard()
        self._staged = None

    def retry(self, exc: BaseException) -> bool:
        return any([side.main.retry(exc) for side in self.sides])

    def shareable(self) -> tuple[Any, ...]:
        """What another process needs to merge this pass's results in (`merge_states`)."""
        return (self.keys, self.common, self.state,
                [[collector.state for collector in side.main.collectors] for side in self.sides])

    def merge_states(self, shared: tuple[Any, ...]) -> None:
        """Add another rank's `shareable()` (the same models over other inputs)."""
        keys, common, state, collectors = shared
        if not self.keys:
            self.keys, self.common = keys, common
        self.state.merge(state)
        for side, states in zip(self.sides, collectors):
            for collector, added in zip(side.main.collectors, states):
                collector.merge_state(added)

    def merge(self, other: ComparePass) -> None:
        """Add another pass's committed results over other inputs of the same models (a share
        of the inputs run elsewhere): the join's sums add, each model's collectors merge."""
        if not self.keys:
            self.keys, self.common = other.keys, other.common
        self.state.merge(other.state)
        for mine, theirs in zip(self.sides, other.sides):
            for collector, added in zip(mine.main.collectors, theirs.main.collectors):
                collector.merge(added)

    # -- the step --
    def step(self, batch: Batch) -> None:
        for side in self.sides:
            own = batch if batch.tensor.dtype == side.dtype or not batch.tensor.is_floating_point() \
                else replace(batch, tensor=batch.tensor.to(side.dtype))
            with side.main.attached():
                side.main.step(own, self.inputs)
        self._join(batch)

    def _join(self, batch: Batch) -> None:
        staged = self._staged
        assert staged is not None
        grams = [side.grams.staged.grams for side in self.sides]
        if not self.keys:
            self._fix_layers(grams)
        if all(key in found for keys, found in zip(self.keys, grams) for key in keys):
            stacked = [torch.stack([found[key] for key in keys]) if keys else None
                       for keys, found in zip(self.keys, grams)]
            if stacked[0] is not None and stacked[-1] is not None:
                staged.cka = CkaSums(len(self.keys[0]), len(self.keys[-1]))
                staged.cka.update(stacked[0], stacked[-1])
            if len(self.sides) > 2 and self.common:
                common = [torch.stack([found[key] for key in self.common]) for found in grams]
                for i in range(len(common) - 1):
                    to_last = CkaSums(len(self.common), len(self.common), diagonal=True)
                    to_last.update(common[i], common[-1])
                    to_next = CkaSums(len(self.common), len(self.common), diagonal=True)
                    to_next.update(common[i], common[i + 1])
                    staged.to_last.append(to_last)
                    staged.to_next.append(to_next)
        elif not any("some layer was not observed" in note for note in self.notes):
            self.notes.append(f"On the batch from input {batch.start}, some layer was not observed in every "
                              "model; that batch was left out of CKA.")
        held_a, held_b = self.sides[0].grams.staged.held, self.sides[-1].grams.staged.held
        for key, a in held_a.items():
            b = held_b.get(key)
            if b is not None and a.shape == b.shape:
                staged.correlation[key] = CorrelationSums.of(a, b)
        self._flips(batch, staged)

    def _fix_layers(self, grams: Sequence[dict[str, torch.Tensor]]) -> None:
        for side, found in zip(self.sides, grams):
            order = side.main.layer_order()
            self.keys.append(sorted(found, key=lambda key: order.get(key, len(order))))
        shared = set.intersection(*(set(keys) for keys in self.keys))
        self.common = [key for key in self.keys[0] if key in shared]

    def _flips(self, batch: Batch, staged: PairState) -> None:
        records_a = self.sides[0].predictions.staged.records
        records_b = self.sides[-1].predictions.staged.records
        for row in range(batch.size):
            index = batch.start + row
            a, b = records_a.get(index), records_b.get(index)
            if a is None or b is None or not a.top_indices or not b.top_indices:
                continue
            if a.top_indices[0] != b.top_indices[0]:
                staged.flips_total += 1
                if len(self.state.flip_pictures) + len(staged.flip_pictures) < self.max_flips:
                    staged.flip_pictures[index] = thumbnails.draw(batch.host[row], self.inputs.preprocessing).picture
                    staged.flip_inputs[index] = batch.host[row].cpu().numpy().copy()  # for Grad-CAM after the pass


def build_sides(models: Sequence[nn.Module], selected: Sequence[Sequence[str]],
                plans: Sequence[tuple[Plan | None, str]], analysis: AnalysisOptions, *, top_k: int) -> list[Side]:
    """Each model's main pass and collectors: predictions and Gram matrices for every model; on
    the two compared ones (the first and the last) the held values and the activation statistics
    with top-k. `plans`: each model's activation sites (analyze.learn_plan)."""
    compared = (0, len(models) - 1)
    sides = []
    for index, (model, (plan, raw_reason)) in enumerate(zip(models, plans)):
        grams = GramCollector(hold=index in compared)
        predictions = PredictionCollector()
        activations = ActivationCollector(max_channels=analysis.max_channels, tile_size=analysis.tile_size,
                                          keep_inputs=0, top_k=top_k) if index in compared else None
        riders: list[Collector[Any]] = [predictions, grams, *([activations] if activations else [])]
        main = MainPass(model, riders, observed=selected[index], plan=plan, raw_reason=raw_reason,
                        forward_args=analysis.forward_args)
        main.summary = fallback_summary(model, "not drawn in a comparison")  # no torchinfo walk
        sides.append(Side(model, main, grams, predictions, activations, model_dtype(model)))
    return sides


def compare(models: Sequence[nn.Module], infos: Sequence[CheckpointInfo], inputs: InputSet, device: torch.device,
            options: CompareOptions, *, progress: Callable[[int], None] | None = None) -> CompareAnalysis | None:
    """Run every model on the same batches (`ComparePass`) and hand on what differs: CKA, the
    channels, the predictions, the weights, and for three checkpoints or more the run.

    Under torchrun each rank runs its share of whole batches (distributed.py) and rank 0 merges
    every rank's join and collectors (`ComparePass.merge_states`); None on the other ranks."""
    if len(models) < 2:
        raise ReportError("compare needs two models or more")
    if len(inputs) == 0:
        raise ReportError("no inputs to compare on")
    for model, info in zip(models, infos):
        if isinstance(model, torch.jit.ScriptModule):
            raise ReportError(f"{info.name} is a TorchScript model: compare needs forward hooks, which PyTorch "
                              "cannot attach to a ScriptModule")
    analysis = options.analysis
    batch_size = max(1, analysis.batch_size)
    selected = [select_layers(model, analysis.layers) for model in models]
    group = distributed.current()
    share = group.share(len(inputs), batch_size) if group is not None else (0, len(inputs))
    if group is not None and inputs.skippable:
        inputs.skippable = []  # leaving a file out would shift every later rank's share
    # every rank learns the sites on input 0, so that all of them observe the same places
    first = load_batch(inputs, 0, min(batch_size, len(inputs)), device, model_dtype(models[0]))
    with ExitStack() as stack:
        plans = []
        for index, model in enumerate(models):
            sample = first.tensor[:1]
            sample = sample.to(model_dtype(model)) if sample.is_floating_point() else sample
            plans.append(learn_plan(model, sample, selected[index], device, analysis))
            stack.enter_context(preserved_modes(model))
            stack.enter_context(on_device(model, device))
            model.eval()
        sides = build_sides(models, selected, plans, analysis, top_k=options.top_k)
        stack.enter_context(torch.inference_mode())
        joined = ComparePass(sides, inputs, max_flips=options.max_flips)
        notes: list[str] = []
        error: BaseException | None = None
        try:
            run_batches(inputs, joined.step, device=device, dtype=model_dtype(models[0]), batch_size=batch_size,
                        transaction=joined, progress=progress, notes=notes, first=share[0], count=share[1],
                        preloaded=first if first.tensor.dtype == model_dtype(models[0]) else None,
                        workers=analysis.workers)
        except Exception as exc:
            if group is None:
                raise
            error = exc
        finally:
            for side in sides:
                side.main.finish()
        if group is not None:
            group.agree(error)
            shares = group.gather(joined.shareable())
            if shares is None:
                return None
            for rank_share in shares[1:]:
                joined.merge_states(distributed.move(rank_share, device))
            notes.append(group.describe())
        notes.extend(joined.notes)
        if joined.state.cka is None or joined.state.cka.batches == 0:
            notes.append(f"No batch had {MIN_BATCH} inputs or more, so there is no CKA (its unbiased HSIC needs "
                         f"n >= {MIN_BATCH}): use --batch-size {MIN_BATCH} or more and at least {MIN_BATCH} inputs.")
        cams = _flip_cams(joined, [models[0], models[-1]], device, notes) if options.cam else {}
        weights = compare_weights(models[0], models[-1], selected[0], selected[-1], max_filters=options.max_filters)
        run = _training_run(joined, models, selected[0], options) if len(models) > 2 else None
        alerts = _alerts(joined, models, selected)
        channels = _channels(joined)
        predictions = _predictions(joined, inputs, cams)
        notes.extend(note for note in joined.notes if note not in notes)
    return CompareAnalysis(
        checkpoints=tuple(infos),
        layers_a=_layers(joined, 0),
        layers_b=_layers(joined, -1),
        cka=_matrix(joined),
        channels=channels,
        pictures=_pictures(channels, inputs) if options.top_k else {},
        weights=weights,
        predictions=predictions,
        run=run,
        device=str(device),
        batch_size=batch_size,
        inputs=len(inputs),
        num_classes=sides[0].predictions.state.num_classes,
        notes=tuple(notes),
        alerts=alerts,
    )


def _layers(joined: ComparePass, index: int) -> tuple[ObservedLayer, ...]:
    found = joined.sides[index].grams.state.layers
    keys = joined.keys[index] if joined.keys else []
    return tuple(found[key] for key in keys if key in found)


def _matrix(joined: ComparePass) -> CkaMatrix:
    rows, cols = (tuple(joined.keys[0]), tuple(joined.keys[-1])) if joined.keys else ((), ())
    sums = joined.state.cka or CkaSums(len(rows), len(cols))
    return CkaMatrix(rows=rows, cols=cols, values=sums.values(), batches=sums.batches,
                     inputs_used=sums.inputs_used, inputs_skipped=sums.inputs_skipped,
                     batch_sizes=dict(sorted(sums.batch_sizes.items())))


def _channels(joined: ComparePass) -> tuple[ChannelComparison, ...]:
    a, b = joined.sides[0].activations, joined.sides[-1].activations
    assert a is not None and b is not None
    layers_a = {layer.key: layer for layer in a.results()}
    layers_b = {layer.key: layer for layer in b.results()}
    found = []
    for key in joined.keys[0] if joined.keys else []:
        sums = joined.state.correlation.get(key)
        if sums is None or key not in layers_a or key not in layers_b:
            continue
        first, second = layers_a[key], layers_b[key]
        jaccard = None
        top_k = 0
        if first.top_inputs is not None and second.top_inputs is not None:
            top_k = int(first.top_inputs.shape[1])
            jaccard = np.array([_jaccard(x, y) for x, y in zip(first.top_inputs, second.top_inputs)])
        sets = ()
        if jaccard is not None and first.top_inputs is not None and second.top_inputs is not None:
            order = sorted((float(j), c) for c, j in enumerate(jaccard) if np.isfinite(j) and j < 1)
            sets = tuple((c, _indices(first.top_inputs[c]), _indices(second.top_inputs[c]))
                         for _, c in order[:TOP_SET_CHANNELS])
        found.append(ChannelComparison(key=key, correlation=sums.correlation(),
                                       active_a=np.asarray(first.fraction_inputs_active),
                                       active_b=np.asarray(second.fraction_inputs_active), jaccard=jaccard,
                                       top_k=top_k, top_sets=sets))
    return tuple(found)


def _indices(row: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in row if 0 <= i < 2**62)


def _pictures(channels: Sequence[ChannelComparison], inputs: InputSet) -> dict[int, np.ndarray]:
    """The thumbnail of every input in a drawn top-k set, each input loaded once after the pass."""
    wanted = sorted({i for layer in channels for _, a, b in layer.top_sets for i in (*a, *b)})
    found = {}
    for index in wanted:
        picture = thumbnails.draw(inputs.batch(index, index + 1)[0], inputs.preprocessing).picture
        if picture is not None:
            found[index] = picture
    return found


def _alerts(joined: ComparePass, models: Sequence[nn.Module], selected: Sequence[Sequence[str]]) -> AlertsDiff:
    found = []
    for side, model, names in ((joined.sides[0], models[0], selected[0]), (joined.sides[-1], models[-1], selected[-1])):
        assert side.activations is not None
        found.append(layer_alerts(side.activations.results(), model, names))
    return alerts_diff(found[0], found[1])


def _jaccard(first: np.ndarray, second: np.ndarray) -> float:
    x, y = set(int(i) for i in first if i >= 0), set(int(i) for i in second if i >= 0)
    union = x | y
    return len(x & y) / len(union) if union else float("nan")


def _flip_cams(joined: ComparePass, models: Sequence[nn.Module], device: torch.device,
               notes: list[str]) -> dict[tuple[int, int], np.ndarray]:
    """Grad-CAM of each kept flip in A and in B, for the class each model predicts (a pass of
    `gradcam.grad_cam` over those few inputs only): (side 0 or 1, input index) -> the map."""
    kept = sorted(joined.state.flip_inputs)
    if not kept:
        return {}
    subset = from_tensors([torch.from_numpy(joined.state.flip_inputs[i]) for i in kept],
                          [joined.inputs.names[i] for i in kept])
    found: dict[tuple[int, int], np.ndarray] = {}
    for side, (model, name) in enumerate(zip(models, ("A", "B"))):
        layer = gradcam.default_cam_layer(model)
        if layer is None:
            notes.append(f"No Grad-CAM for model {name}'s flips: it has no convolution.")
            continue
        result = gradcam.grad_cam(model, subset, count=len(kept), device=device, dtype=model_dtype(model),
                                  layer=layer)
        if result.note:
            notes.append(f"Grad-CAM of model {name}'s flips: {result.note}")
        for record in result.records:
            if record.kind == "predicted":
                found[side, kept[record.input_index]] = record.cam
    return found


def _predictions(joined: ComparePass, inputs: InputSet,
                 cams: dict[tuple[int, int], np.ndarray]) -> PredictionComparison | None:
    records_a = joined.sides[0].predictions.records()
    records_b = {r.index: r for r in joined.sides[-1].predictions.records()}
    if not records_a or not records_b:
        return None
    widths = [side.predictions.state.num_classes for side in (joined.sides[0], joined.sides[-1])]
    if widths[0] != widths[1]:
        joined.notes.append(f"A outputs {widths[0]} classes and B {widths[1]}: their predictions are not "
                            "compared (a class index would not mean the same class).")
        return None
    same = labelled = right_a = right_b = negative = positive = 0
    per_class: dict[int, list[int]] = {}
    flips = []
    for a in records_a:
        b = records_b.get(a.index)
        if b is None:
            continue
        top_a, top_b = a.top_indices[0], b.top_indices[0]
        same += top_a == top_b
        if a.label is not None:
            labelled += 1
            ok_a, ok_b = top_a == a.label, top_b == a.label
            right_a += ok_a
            right_b += ok_b
            negative += ok_a and not ok_b
            positive += ok_b and not ok_a
            row = per_class.setdefault(a.label, [0, 0, 0])
            row[0] += 1
            row[1] += ok_a
            row[2] += ok_b
        if a.index in joined.state.flip_pictures:
            flips.append(Flip(index=a.index, name=inputs.names[a.index], label=a.label,
                              top_a=tuple(zip(a.top_indices, a.top_probabilities)),
                              top_b=tuple(zip(b.top_indices, b.top_probabilities)),
                              thumbnail=joined.state.flip_pictures[a.index], cam_a=cams.get((0, a.index)),
                              cam_b=cams.get((1, a.index)),
                              input_shape=tuple(joined.state.flip_inputs[a.index].shape)))
    total = len(records_a)
    return PredictionComparison(
        inputs=total, agreement=same / total if total else float("nan"), flips=tuple(flips),
        flips_total=joined.state.flips_total, labelled=labelled, correct_a=right_a, correct_b=right_b,
        negative_flips=negative, positive_flips=positive,
        per_class=tuple((c, *row) for c, row in sorted(per_class.items())))  # type: ignore[misc]


def _training_run(joined: ComparePass, models: Sequence[nn.Module], selected: Sequence[str],
                  options: CompareOptions) -> TrainingRun:
    state = joined.state
    to_last = np.stack([s.values() for s in state.to_last]) if state.to_last else np.zeros((0, len(joined.common)))
    to_next = np.stack([s.values() for s in state.to_next]) if state.to_next else np.zeros((0, len(joined.common)))
    names, steps, strips = weight_steps(models, selected, strip_channels=options.strip_channels)
    return TrainingRun(layers=tuple(joined.common), cka_to_last=to_last, cka_to_next=to_next, weight_step=steps,
                       weight_layers=names, strips=strips)
