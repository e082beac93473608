"""Perturbation probes: how each filter's feature map and the prediction react when the input changes.

For each shown input, a perturbed copy goes through the model next to the clean one. Per layer
and channel we compare the two feature maps:

- **correlation**: Pearson correlation over spatial positions (1 = same pattern; undefined,
  NaN, when either map is constant);
- **relative L2**: ||perturbed - clean|| / ||clean|| (0 = identical).

For `rotate` the perturbed map is rotated back before comparing: multiples of 90° use
`torch.rot90` (exact on the pixel grid; after a stride-2 layer of an even-sized map the grid can
still be off by one cell, which lowers the correlation a little), other angles use torchvision's
`rotate` both ways and compare only the positions that stay inside the picture both ways.

Probes and their strength (`--probe-strength KIND=VALUE`):
- `rotate`: angle in degrees (default 90);
- `noise`: Gaussian noise, standard deviation as a fraction of each input's own std (default 0.1);
- `blur`: Gaussian blur, sigma in pixels (default 1.0);
- `brightness`: pixels scaled by (1 + s) in [0, 1] pixel space when the preprocessing is known
  (clipped to [0, 1]), else a shift of s times the input's std (default 0.3);
- `fgsm`: x + eps * sign(grad_x loss), the model's own gradient of the cross-entropy for the true
  label (or its clean prediction), eps in [0, 1] pixel units when the normalisation is known
  (eps / std per channel in the model's units), else in the model's input units
  (`--fgsm-epsilon`, default 0.03). Autograd is on for that one pass only; the gradient is taken
  with `torch.autograd.grad` with respect to the input, so no `.grad` is left on parameters.

Noise is seeded: the same inputs give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import downsample, first_tensor, spatial_view
from reportgen.sites import call_key
from reportgen.outputs import find_logits
from reportgen.devices import model_dtype
from reportgen.errors import ReportError, one_line
from reportgen.engine.collector import Batch
from reportgen.engine.loop import run_batches
from reportgen.hooks import HookOwner
from reportgen.inputs import InputSet, call_model
from reportgen.palettes import FLAT_INDEX, LEVELS

PROBE_KINDS = ("rotate", "noise", "blur", "brightness", "fgsm")
DEFAULT_STRENGTH = {"rotate": 90.0, "noise": 0.1, "blur": 1.0, "brightness": 0.3}
DEFAULT_FGSM_EPSILON = 0.03
STABLE_CORRELATION = 0.9  # a channel is "stable" under a probe at or above this mean correlation
STRIP_INPUTS = 4  # inputs that get a clean-vs-perturbed strip (numbers cover all shown inputs)
STRIP_TILE = 32
PROBE_CHUNK = 2  # inputs probed together: bounds the clean maps kept for comparison


@dataclass(frozen=True)
class ProbeOptions:
    kinds: tuple[str, ...] = ()
    strength: tuple[tuple[str, float], ...] = ()  # overrides of DEFAULT_STRENGTH
    fgsm_epsilon: float = DEFAULT_FGSM_EPSILON
    strip_inputs: int = STRIP_INPUTS
    tile_size: int = STRIP_TILE
    seed: int = 0

    def strength_of(self, kind: str) -> float:
        if kind == "fgsm":
            return self.fgsm_epsilon
        return dict(self.strength).get(kind, DEFAULT_STRENGTH[kind])


def parse_kinds(text: str | Sequence[str]) -> tuple[str, ...]:
    """`rotate,noise` (or a list) -> ('rotate', 'noise'); unknown names are a ReportError."""
    parts = text.split(",") if isinstance(text, str) else [p for item in text for p in str(item).split(",")]
    kinds: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if not part:
            continue
        if part == "all":
            kinds.extend(PROBE_KINDS)
        elif part not in PROBE_KINDS:
            raise ReportError(f"--probes: unknown probe {part!r}; choose from {', '.join(PROBE_KINDS)} (or all)")
        else:
            kinds.append(part)
    return tuple(dict.fromkeys(kinds))


def parse_strength(text: str | None) -> tuple[tuple[str, float], ...]:
    """`noise=0.2,rotate=45`, or one number for noise, blur and brightness together."""
    if text is None or not text.strip():
        return ()
    pairs: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, sep, value = part.partition("=")
        targets = [kind.strip().lower()] if sep else ["noise", "blur", "brightness"]
        raw = value if sep else kind
        try:
            number = float(raw)
        except ValueError:
            raise ReportError(f"--probe-strength wants KIND=NUMBER pairs or one number, got {part!r}") from None
        if not math.isfinite(number):
            raise ReportError(f"--probe-strength must be finite, got {part!r}")
        for target in targets:
            if target not in DEFAULT_STRENGTH:
                raise ReportError(f"--probe-strength: no strength for {target!r} (fgsm uses --fgsm-epsilon); "
                                  f"choose from {', '.join(DEFAULT_STRENGTH)}")
            if target in ("noise", "blur") and number < 0:
                raise ReportError(f"--probe-strength {target} must not be negative, got {number:g}")
            pairs[target] = number
    return tuple(sorted(pairs.items()))


@dataclass(frozen=True)
class ProbeLayer:
    """Per channel, averaged over the probed inputs (NaN where undefined on every input)."""

    name: str
    channels_total: int
    correlation: np.ndarray  # (C,)
    relative_l2: np.ndarray  # (C,)


@dataclass(frozen=True)
class StripRow:
    """Clean and perturbed maps of one input's most and least stable channel in one layer."""

    layer: str
    most_stable: int
    least_stable: int
    most_correlation: float
    least_correlation: float
    tiles: np.ndarray  # (4, h, w) palette levels: clean most, perturbed most, clean least, perturbed least
    tile_ranges: tuple[tuple[float, float], tuple[float, float]]  # (min, max) of each pair


@dataclass(frozen=True)
class ProbeInput:
    index: int
    name: str
    clean_top: int | None
    perturbed_top: int | None
    target: int | None
    target_is_label: bool
    clean_probability: float | None  # of `target`
    perturbed_probability: float | None
    thumbnail: np.ndarray | None  # the perturbed input, as `analyze.thumbnail` draws inputs
    strip: tuple[StripRow, ...]


@dataclass(frozen=True)
class ProbeResult:
    kind: str
    strength: float
    description: str
    layers: tuple[ProbeLayer, ...]
    inputs: tuple[ProbeInput, ...]
    skipped_layers: tuple[tuple[str, str], ...]
    note: str = ""  # set when the whole probe could not run

    @property
    def flips(self) -> int:
        return sum(1 for item in self.inputs if item.clean_top is not None and item.clean_top != item.perturbed_top)


@dataclass(frozen=True)
class ProbeRun:
    inputs: tuple[int, ...]
    results: tuple[ProbeResult, ...]


class _Unsupported(Exception):
    """A probe that cannot apply to these inputs (the reason goes into the report)."""


@dataclass(frozen=True)
class _Perturbation:
    batch: torch.Tensor
    description: str
    undo: Callable[[torch.Tensor], torch.Tensor] | None = None
    valid: Callable[[tuple[int, int]], torch.Tensor | None] | None = None
    needs_2d: bool = False


class _MapHooks(HookOwner):
    """Forward hooks on the probed layers. Without `clean` they keep a float32 copy of each
    output (the clean pass); with it they compare against the clean copy right away and keep only
    per-channel numbers and the strip tiles."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, clean: dict[str, torch.Tensor] | None = None,
                 perturbation: _Perturbation | None = None, strip_inputs: int = 0, tile_size: int = STRIP_TILE) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.clean = clean
        self.perturbation = perturbation
        self.strip_inputs = strip_inputs
        self.tile_size = tile_size
        self.maps: dict[str, torch.Tensor] = {}
        self.scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (corr, rel) (B, C)
        self.strips: dict[str, list[StripRow | None]] = {}
        self.skipped: dict[str, str] = {}
        self.order: list[str] = []
        self._calls: dict[str, int] = {}

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name in modules:
                self.hooks.forward(modules[name], self._make(name))

    def _make(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            key = call_key(name, index)
            tensor = first_tensor(output)
            if tensor is None or tensor.dim() < 2 or not tensor.is_floating_point():
                return
            if key not in self.order:
                self.order.append(key)
            # a copy: an in-place op after the layer (ReLU(inplace=True)) must not change it
            values = tensor.detach().to(torch.float32, copy=True)
            if self.clean is None:
                self.maps[key] = values
            else:
                self._compare(key, values)

        return hook

    def _compare(self, key: str, perturbed: torch.Tensor) -> None:
        assert self.clean is not None and self.perturbation is not None
        clean = self.clean.get(key)
        if clean is None:
            self.skipped[key] = "the layer did not run on the clean input"
            return
        spec = self.perturbation
        valid = None
        if spec.undo is not None:
            if perturbed.dim() != 4:
                self.skipped[key] = "rotation can only be undone on 2D feature maps"
                return
            perturbed = spec.undo(perturbed)
            if spec.valid is not None:
                valid = spec.valid((int(perturbed.shape[-2]), int(perturbed.shape[-1])))
        if perturbed.shape != clean.shape:
            self.skipped[key] = (f"the perturbed map has shape {list(perturbed.shape[1:])}, "
                                 f"the clean one {list(clean.shape[1:])}")
            return
        corr, rel = similarity(clean, perturbed, valid)
        self.scores[key] = (corr, rel)
        rows: list[StripRow | None] = []
        for b in range(min(self.strip_inputs, clean.shape[0])):
            rows.append(_strip_row(key, clean[b], perturbed[b], corr[b], self.tile_size))
        self.strips[key] = rows


def similarity(clean: torch.Tensor, perturbed: torch.Tensor,
               valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (input, channel): Pearson correlation over positions and relative L2. (B, C) each.

    `valid` (h, w) bool restricts both to the positions it marks. Correlation is NaN where
    either map is constant; relative L2 is NaN where the clean map is all zero (and the
    perturbed one is not; both zero gives 0)."""
    batch, channels = clean.shape[:2]
    c = clean.double().reshape(batch, channels, -1)
    p = perturbed.double().reshape(batch, channels, -1)
    if valid is not None:
        keep = valid.reshape(-1).to(c.device)
        c, p = c[..., keep], p[..., keep]
    cm = c - c.mean(dim=2, keepdim=True)
    pm = p - p.mean(dim=2, keepdim=True)
    sc = (cm * cm).sum(dim=2)
    sp = (pm * pm).sum(dim=2)
    tiny_c = sc <= 1e-12 * (c * c).sum(dim=2) + 1e-30
    tiny_p = sp <= 1e-12 * (p * p).sum(dim=2) + 1e-30
    corr = (cm * pm).sum(dim=2) / torch.sqrt(sc * sp).clamp_min(1e-300)
    corr = torch.where(tiny_c | tiny_p | (c.shape[2] < 2), torch.full_like(corr, float("nan")), corr.clamp(-1, 1))
    norm_c = torch.linalg.vector_norm(c, dim=2)
    diff = torch.linalg.vector_norm(p - c, dim=2)
    rel = torch.where(norm_c > 0, diff / norm_c.clamp_min(1e-300),
                      torch.where(diff > 0, torch.full_like(diff, float("nan")), torch.zeros_like(diff)))
    return corr, rel


def _pair_levels(first: torch.Tensor, second: torch.Tensor, tile_size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Two maps of one channel on one shared min-max scale -> (2, h, w) levels 0..253."""
    pair = torch.stack([spatial_view(first[None, None])[0, 0], spatial_view(second[None, None])[0, 0]])
    finite = bool(torch.isfinite(pair).all())
    safe = torch.nan_to_num(pair, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(safe.min()), float(safe.max())
    pooled = downsample(safe[:, None], tile_size)[:, 0]
    if not finite or high <= low:
        levels = torch.full(pooled.shape, FLAT_INDEX, dtype=torch.uint8)
    else:
        unit = ((pooled - low) / (high - low)).clamp(0.0, 1.0)
        levels = torch.floor(unit * (LEVELS - 1) + 0.5).to(torch.uint8)
    return levels.cpu().numpy(), (low, high)


def _strip_row(key: str, clean: torch.Tensor, perturbed: torch.Tensor, corr: torch.Tensor,
               tile_size: int) -> StripRow | None:
    """clean/perturbed (C, ...) of one input; corr (C,)."""
    values = corr.cpu().numpy()
    defined = np.flatnonzero(np.isfinite(values))
    if defined.size == 0:
        return None
    order = sorted(defined.tolist(), key=lambda c: (-values[c], c))
    most, least = order[0], order[-1]
    most_levels, most_range = _pair_levels(clean[most], perturbed[most], tile_size)
    least_levels, least_range = _pair_levels(clean[least], perturbed[least], tile_size)
    return StripRow(
        layer=key,
        most_stable=int(most),
        least_stable=int(least),
        most_correlation=float(values[most]),
        least_correlation=float(values[least]),
        tiles=np.concatenate([most_levels, least_levels]),
        tile_ranges=(most_range, least_range),
    )


def _pixel_space(inputs: InputSet, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) shaped for `batch` when its normalisation is known, else None."""
    prep = inputs.preprocessing
    if prep is None or prep.mean is None or prep.std is None or batch.dim() != 4:
        return None
    if len(prep.mean) != batch.shape[1] or len(prep.std) != batch.shape[1]:
        return None
    mean = torch.tensor(prep.mean, dtype=batch.dtype, device=batch.device).reshape(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=batch.dtype, device=batch.device).reshape(1, -1, 1, 1)
    return mean, std


def _per_input_std(batch: torch.Tensor) -> torch.Tensor:
    flat = batch.reshape(batch.shape[0], -1).float()
    std = flat.std(dim=1) if flat.shape[1] > 1 else torch.ones(batch.shape[0], device=batch.device)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return std.reshape(-1, *([1] * (batch.dim() - 1))).to(batch.dtype)


def _rotation(angle: float, batch: torch.Tensor) -> _Perturbation:
    if batch.dim() != 4:
        raise _Unsupported("rotation needs 2D image inputs (N, C, H, W)")
    quarter = angle / 90.0
    if abs(quarter - round(quarter)) < 1e-9:
        k = round(quarter) % 4
        return _Perturbation(
            batch=torch.rot90(batch, k, dims=(2, 3)),
            description=f"rotated by {angle:g}° (exact 90° steps); feature maps rotated back before comparing",
            undo=lambda maps: torch.rot90(maps, -k, dims=(2, 3)),
        )
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    def undo(maps: torch.Tensor) -> torch.Tensor:
        return TF.rotate(maps, -angle, interpolation=InterpolationMode.BILINEAR)

    def valid(size: tuple[int, int]) -> torch.Tensor:
        ones = torch.ones(1, 1, *size)
        there = TF.rotate(ones, angle, interpolation=InterpolationMode.NEAREST)
        back = TF.rotate(there, -angle, interpolation=InterpolationMode.NEAREST)
        return back[0, 0] > 0.5

    return _Perturbation(
        batch=TF.rotate(batch, angle, interpolation=InterpolationMode.BILINEAR),
        description=(f"rotated by {angle:g}° (bilinear, corners filled with 0); feature maps rotated back "
                     "and compared only where they stay inside the picture both ways"),
        undo=undo,
        valid=valid,
    )


def _perturb(kind: str, strength: float, batch: torch.Tensor, inputs: InputSet, model: nn.Module,
             targets: torch.Tensor | None, seed: int, first: int = 0,
             forward_args: Callable[[torch.Tensor], Any] | None = None) -> _Perturbation:
    """`batch` holds inputs first, first + 1, ...; noise is drawn per input from `seed` and its index."""
    if kind == "rotate":
        return _rotation(strength, batch)
    if kind == "noise":
        # one generator per input (seeded by its index), so how inputs are chunked changes nothing
        noise = torch.stack([
            torch.randn(batch.shape[1:], generator=torch.Generator().manual_seed(seed * 100_003 + first + row),
                        dtype=torch.float32)
            for row in range(batch.shape[0])
        ]).to(batch.device, batch.dtype)
        return _Perturbation(batch=batch + noise * strength * _per_input_std(batch),
                             description=f"Gaussian noise, std = {strength:g} x each input's own std (seeded)")
    if kind == "blur":
        if batch.dim() != 4:
            raise _Unsupported("blur needs 2D image inputs (N, C, H, W)")
        if strength <= 0:
            return _Perturbation(batch=batch.clone(), description="blur with sigma 0 (no change)")
        from torchvision.transforms import functional as TF

        size = 2 * math.ceil(3 * strength) + 1
        limit = 2 * min(batch.shape[-2:]) - 1  # reflect padding must stay inside the picture
        size = max(1, min(size, limit if limit % 2 == 1 else limit - 1))
        return _Perturbation(batch=TF.gaussian_blur(batch, [size, size], [strength, strength]),
                             description=f"Gaussian blur, sigma {strength:g} px ({size}x{size} kernel)")
    if kind == "brightness":
        pixel = _pixel_space(inputs, batch)
        if pixel is not None:
            mean, std = pixel
            image = batch * std + mean
            bright = image * (1.0 + strength)
            inside = float(image.min()) >= -1e-3 and float(image.max()) <= 1 + 1e-3
            if inside:
                bright = bright.clamp(0.0, 1.0)
            return _Perturbation(batch=(bright - mean) / std,
                                 description=f"brightness x{1 + strength:g} in pixel space"
                                             + (" (clipped to [0, 1])" if inside else ""))
        return _Perturbation(batch=batch + strength * _per_input_std(batch),
                             description=f"brightness: shifted by {strength:g} x each input's std "
                                         "(no known normalisation to undo)")
    if kind == "fgsm":
        return _fgsm(model, batch, inputs, targets, strength, forward_args)
    raise ValueError(f"unknown probe {kind!r}")


def _fgsm(model: nn.Module, batch: torch.Tensor, inputs: InputSet, targets: torch.Tensor | None,
          epsilon: float, forward_args: Callable[[torch.Tensor], Any] | None) -> _Perturbation:
    if targets is None:
        raise _Unsupported("FGSM needs a classifier output (N, classes) to take the loss of")
    if not batch.is_floating_point():
        raise _Unsupported("FGSM needs floating-point inputs")
    pixel = _pixel_space(inputs, batch)
    step = epsilon / pixel[1] if pixel is not None else torch.tensor(epsilon, dtype=batch.dtype, device=batch.device)
    with torch.inference_mode(False), torch.enable_grad():
        x = batch.detach().clone().requires_grad_(True)
        try:
            output = find_logits(call_model(model, x, forward_args), x.shape[0])
            if output is None:
                raise _Unsupported("FGSM needs a classifier output (N, classes)")
            loss = F.cross_entropy(output.float(), targets.clone(), reduction="sum")
            (gradient,) = torch.autograd.grad(loss, [x])
        except _Unsupported:
            raise
        except RuntimeError as exc:
            raise _Unsupported(f"no input gradient: {one_line(exc)}") from exc
        adversarial = (x + step * gradient.sign()).detach()
    if pixel is not None:
        mean, std = pixel
        image = batch * std + mean
        if float(image.min()) >= -1e-3 and float(image.max()) <= 1 + 1e-3:
            adversarial = ((adversarial * std + mean).clamp(0.0, 1.0) - mean) / std
        unit = f"ε = {epsilon:g} in [0, 1] pixel units (ε/std per channel in the model's input)"
    else:
        unit = f"ε = {epsilon:g} in the model's input units"
    return _Perturbation(batch=adversarial,
                         description=f"FGSM: x + ε·sign(∇x loss) with the model's own gradient, {unit}")


@dataclass
class _KindState:
    """What one probe kind has gathered over the input chunks so far."""

    kind: str
    strength: float
    description: str = ""
    note: str = ""
    scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # key -> per chunk (B, C)
    inputs: list[ProbeInput] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def run_probes(
    model: nn.Module,
    inputs: InputSet,
    device: torch.device,
    layer_names: Sequence[str],
    options: ProbeOptions,
    *,
    count: int,
    thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None = None,
    forward_args: Callable[[torch.Tensor], Any] | None = None,
) -> ProbeRun:
    """Probe the first `count` inputs. Call in eval mode, NOT under inference mode (FGSM needs
    autograd for its one pass; every other pass runs under `torch.inference_mode()` here).

    Inputs go `PROBE_CHUNK` at a time: the clean feature maps of every probed layer are kept
    only for the chunk being compared, so memory does not grow with the number of inputs."""
    count = min(count, len(inputs))
    if count < 1 or not options.kinds:
        return ProbeRun(inputs=(), results=())
    dtype = model_dtype(model)
    states = [_KindState(kind=kind, strength=options.strength_of(kind)) for kind in options.kinds]
    order: list[str] = []

    def step(loaded: Batch) -> None:
        start, stop, batch = loaded.start, loaded.stop, loaded.tensor
        with torch.inference_mode():
            recorder = _MapHooks(model, layer_names)
            try:
                with recorder:
                    clean_output = call_model(model, batch, forward_args)
            except Exception as exc:
                raise ReportError(f"probes: the model failed on the clean input {inputs.names[start]}: "
                                  f"{one_line(exc)}") from exc
        order.extend(key for key in recorder.order if key not in order)
        clean_logits = find_logits(clean_output, stop - start)
        labels = [inputs.label(i) for i in range(start, stop)]
        targets = None
        if clean_logits is not None:
            predicted = clean_logits.argmax(dim=1)
            targets = torch.tensor([lbl if lbl is not None and 0 <= lbl < clean_logits.shape[1] else int(predicted[i])
                                    for i, lbl in enumerate(labels)], device=clean_logits.device)
        for state in states:
            if state.note:
                continue
            try:
                perturbation = _perturb(state.kind, state.strength, batch, inputs, model, targets,
                                        options.seed, start, forward_args)
            except _Unsupported as exc:
                state.note = str(exc)
                continue
            state.description = perturbation.description
            comparer = _MapHooks(model, layer_names, clean=recorder.maps, perturbation=perturbation,
                                 strip_inputs=max(0, options.strip_inputs - start), tile_size=options.tile_size)
            with torch.inference_mode():
                try:
                    with comparer:
                        output = call_model(model, perturbation.batch, forward_args)
                except Exception as exc:
                    state.note = f"the model rejected the perturbed input: {one_line(exc)}"
                    continue
            _gather(state, comparer, recorder.order, perturbation, clean_logits, find_logits(output, stop - start), targets,
                    labels, inputs, start, thumbnail, options)
        del recorder

    run_batches(inputs, step, device=device, dtype=dtype, batch_size=PROBE_CHUNK, count=count)
    results = []
    for state in states:
        if state.note:
            results.append(ProbeResult(kind=state.kind, strength=state.strength, description=state.description,
                                       layers=(), inputs=(), skipped_layers=(), note=state.note))
            continue
        layers = []
        for key in order:
            chunks = state.scores.get(key)
            if not chunks:
                continue
            corr = np.concatenate([c for c, _ in chunks])
            rel = np.concatenate([r for _, r in chunks])
            layers.append(ProbeLayer(name=key, channels_total=int(corr.shape[1]), correlation=_nanmean(corr),
                                     relative_l2=_nanmean(rel)))
        results.append(ProbeResult(kind=state.kind, strength=state.strength, description=state.description,
                                   layers=tuple(layers), inputs=tuple(state.inputs),
                                   skipped_layers=tuple(sorted(state.skipped.items()))))
    return ProbeRun(inputs=tuple(range(count)), results=tuple(results))


def _gather(state: _KindState, comparer: _MapHooks, order: list[str], perturbation: _Perturbation,
            clean_logits: torch.Tensor | None, logits: torch.Tensor | None, targets: torch.Tensor | None,
            labels: list[int | None], inputs: InputSet, start: int,
            thumbnail: Callable[[torch.Tensor], np.ndarray | None] | None, options: ProbeOptions) -> None:
    """Add one chunk's comparison to `state`."""
    for key in order:
        if key in comparer.scores:
            corr, rel = comparer.scores[key]
            state.scores.setdefault(key, []).append((corr.cpu().numpy(), rel.cpu().numpy()))
    state.skipped.update(comparer.skipped)
    if logits is not None and (logits.dim() != 2 or clean_logits is None or logits.shape != clean_logits.shape):
        logits = None
    for b in range(len(labels)):
        index = start + b
        clean_top = perturbed_top = target = None
        clean_p = perturbed_p = None
        if clean_logits is not None and targets is not None:
            target = int(targets[b])
            clean_top = int(clean_logits[b].argmax())
            clean_p = float(torch.softmax(clean_logits[b].float(), dim=0)[target])
            if logits is not None:
                perturbed_top = int(logits[b].argmax())
                perturbed_p = float(torch.softmax(logits[b].float(), dim=0)[target])
        strip: list[StripRow] = []
        for key in order:
            rows = comparer.strips.get(key, [])
            row = rows[b] if b < len(rows) else None
            if row is not None:
                strip.append(row)
        shown = index < options.strip_inputs
        state.inputs.append(ProbeInput(
            index=index,
            name=inputs.names[index],
            clean_top=clean_top,
            perturbed_top=perturbed_top,
            target=target,
            target_is_label=labels[b] is not None,
            clean_probability=clean_p,
            perturbed_probability=perturbed_p,
            thumbnail=thumbnail(perturbation.batch[b].detach().cpu()) if shown and thumbnail is not None else None,
            strip=tuple(strip) if shown else (),
        ))


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over inputs (axis 0) ignoring NaN; NaN where every input is NaN (no warning)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=0)
    n = finite.sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def layer_summary(layer: ProbeLayer) -> tuple[float | None, float | None, float | None, int]:
    """(median correlation, fraction of channels stable, mean relative L2, channels defined)."""
    corr = layer.correlation[np.isfinite(layer.correlation)]
    rel = layer.relative_l2[np.isfinite(layer.relative_l2)]
    if corr.size == 0:
        return None, None, float(rel.mean()) if rel.size else None, 0
    return (float(np.median(corr)), float((corr >= STABLE_CORRELATION).mean()),
            float(rel.mean()) if rel.size else None, int(corr.size))
