"""Grad-CAM for classifiers, and which layers' outputs reach the model's output.

One extra pass over the shown inputs only (at most `max_inputs_shown`, in chunks of
`CHUNK`), the only place reportgen computes gradients:
- autograd on for this pass alone (`torch.inference_mode(False)` + `torch.enable_grad()`), on a
  fresh copy of the inputs that requires grad, so the graph exists even for frozen models;
- hooks only inside `CamHooks`, a context manager whose `__exit__` removes them. The target
  layer's forward hook copies its output (before any in-place op after it can change it) and
  registers a tensor hook on that output for the gradient; the backward is
  `torch.autograd.grad(score, inputs=[gradient edge of that output])`, which stops at the layer
  and never writes `.grad` of any parameter (every `p.grad` is checked and put back regardless);
- `requires_grad` flags are not touched; training flags and device are restored by the caller
  (`analyze` runs this inside `preserved_modes` and `on_device`, with the model in eval mode).

Grad-CAM (Selvaraju et al. 2017): weights = mean of d score / d A per channel over every
non-channel axis (time for 1D layers, space for 2D, both for 3D);
map = ReLU(sum_k weight_k A_k), scaled by its own max to 0..1 (all 0 when no location speaks for
the class). Reachability: the autograd graph from the output is walked (no computation) and a
layer whose output's gradient edge is not in it cannot affect the output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import first_tensor
from reportgen.engine.collector import Batch
from reportgen.engine.loop import StopPass, run_batches
from reportgen.errors import ReportError
from reportgen.hooks import HookOwner
from reportgen.inputs import InputSet
from reportgen.outputs import find_logits
from reportgen.tokens import TokenLayout, layout_of, mixing_before, transformer_blocks

# Words of the errors autograd raises in a forward (in-place on a leaf or a needed tensor,
# inference tensors, views modified in place, ...): only those make a batch run again without it.
AUTOGRAD_ERROR = re.compile(r"grad|in-?place|leaf|inference tensor|backward|version", re.IGNORECASE)
CHUNK = 4  # inputs per Grad-CAM forward: bounds the memory the autograd graph holds
MAX_CAM_SIDE = 16  # the JSON holds the map at the layer's resolution, pooled to at most this


@dataclass(frozen=True)
class CamRecord:
    """One Grad-CAM map of one input for one class, at the layer's resolution (numpy)."""

    input_index: int
    kind: str  # "predicted" or "true"
    target: int
    cam: np.ndarray  # (h, w) float32, 0..1; (l,) for a 1D layer, (t, h, w) for a 3D one


@dataclass(frozen=True)
class CamResult:
    layer: str
    records: tuple[CamRecord, ...]
    reaches_output: dict[str, bool]
    note: str = ""


@dataclass
class Captured:
    activation: torch.Tensor | None = None
    edge: Any = None
    gradient: torch.Tensor | None = None
    edges: dict[str, list[Any]] = field(default_factory=dict)
    layout: TokenLayout | None = None  # the target's output is tokens: activation and gradient as maps

    def keep(self, module: nn.Module, tensor: torch.Tensor) -> None:
        """The target layer's output, copied before any in-place op after the layer can change it;
        a transformer's tokens as maps on their grid (tokens.py)."""
        self.layout = layout_of(module, tuple(tensor.shape))
        activation = tensor.detach()
        self.activation = self.layout.maps(activation).clone() if self.layout is not None else activation.clone()


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the (non-transposed) convolutions, in definition order."""
    return [name for name, module in model.named_modules()
            if name and isinstance(module, nn.modules.conv._ConvNd)
            and not isinstance(module, nn.modules.conv._ConvTransposeNd)]


def default_cam_layer(model: nn.Module) -> str | None:
    """The last convolution, in definition order; or, when a transformer block comes after it,
    the last block (tokens.transformer_blocks): for global attention (ViT) its first norm, whose
    patch tokens the class token still reads (the block's own output reaches the head through
    the class token alone, so its patch tokens get no gradient), else (window attention, Swin:
    the head pools every token) the block's output."""
    names = conv_layers(model)
    blocks = transformer_blocks(model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    if blocks and (not names or order[blocks[-1]] > order[names[-1]]):
        last = blocks[-1]
        if mixing_before(model, last) == "global":
            norms = [name for name, module in model.named_modules()
                     if name.startswith(f"{last}.") and isinstance(module, nn.LayerNorm)]
            if norms:
                return norms[0]
        return last
    return names[-1] if names else None


def check_cam_layer(model: nn.Module, name: str) -> None:
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        convs = [n for n, m in model.named_modules() if n and isinstance(m, nn.modules.conv._ConvNd)]
        sample = ", ".join((convs or names)[-6:]) or "(the model has no submodules)"
        raise ReportError(f"--cam-layer {name} is not a module of the model; the last convs are: {sample}")


class CamHooks(HookOwner):
    """Forward hooks for one Grad-CAM pass; `__exit__` always removes them (HookOwner)."""

    def __init__(self, model: nn.Module, target: str, watched: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.watched = [name for name in watched if name != target]
        self.captured = Captured()

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        self.hooks.forward(modules[self.target], self._target_hook)
        for name in self.watched:
            if name in modules:
                self.hooks.forward(modules[name], self._watch_hook(name))

    def _remove(self) -> None:
        super()._remove()
        self.captured = Captured()  # drop the graph's tensors with the hooks

    def reset(self) -> None:
        self.captured = Captured()

    def _edge(self, tensor: torch.Tensor) -> Any:
        return torch.autograd.graph.get_gradient_edge(tensor) if tensor.requires_grad else None

    def _target_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None or not tensor.is_floating_point():
            return
        captured = self.captured
        captured.keep(module, tensor)
        captured.edge = self._edge(tensor)
        self.captured.edges.setdefault(self.target, []).append(captured.edge)
        if tensor.requires_grad:
            def keep(gradient: torch.Tensor) -> None:
                captured.gradient = gradient.detach()

            tensor.register_hook(keep)

    def _watch_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None and tensor.is_floating_point():
                self.captured.edges.setdefault(name, []).append(self._edge(tensor))

        return hook


def graph_nodes(root: Any) -> set[Any]:
    """Every autograd node reachable from `root` (iterative: graphs are deep)."""
    seen: set[Any] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return seen


def saved_grads(model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for parameter in model.parameters():
        yield parameter, parameter.grad


def grad_cam(
    model: nn.Module,
    inputs: InputSet,
    *,
    count: int,
    device: torch.device,
    dtype: torch.dtype,
    layer: str,
    watched: Sequence[str] = (),
    fallbacks: Sequence[str] = (),
    call: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> CamResult:
    """Grad-CAM maps for the first `count` inputs (predicted class, and the true class when a
    label is known and differs), and whether each watched layer reaches the output.

    When `layer`'s output does not reach the model's output, the first of `fallbacks` that does
    is used instead (one more pass), and the note says so."""
    saved = list(saved_grads(model))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            records, reaches, note = _pass(model, inputs, count, device, dtype, layer,
                                           list(dict.fromkeys([*watched, *fallbacks])), call)
            if reaches.get(layer) is False:
                usable = [name for name in fallbacks if reaches.get(name)]
                if not usable:
                    return CamResult(layer, (), reaches, f"Grad-CAM was skipped: {layer} does not reach the output.")
                records, _, note = _pass(model, inputs, count, device, dtype, usable[0], (), call)
                note = note or f"Grad-CAM at {usable[0]}: {layer}, the last convolution, does not reach the output."
                layer = usable[0]
    finally:
        for parameter, grad in saved:
            if parameter.grad is not grad:
                parameter.grad = grad
    return CamResult(layer, tuple(records), reaches, note)


def _pass(
    model: nn.Module,
    inputs: InputSet,
    count: int,
    device: torch.device,
    dtype: torch.dtype,
    layer: str,
    watched: Sequence[str],
    call: Callable[[nn.Module, torch.Tensor], Any] | None,
) -> tuple[list[CamRecord], dict[str, bool], str]:
    """One Grad-CAM pass at `layer` (autograd already on): (maps, reachability, note)."""
    records: list[CamRecord] = []
    reaches: dict[str, bool] = {}
    note = ""

    def step(batch: Batch) -> None:
        nonlocal reaches, note
        if not batch.tensor.is_floating_point():
            note = "Grad-CAM needs floating-point inputs."
            records.clear()
            raise StopPass
        tensor = batch.tensor.clone().requires_grad_(True)
        hooks.reset()
        output = call(model, tensor) if call is not None else model(tensor)
        logits = find_logits(output, batch.size)
        if batch.start == 0:  # reaching any output counts, logits or not
            reaches = reachability(logits if logits is not None else first_tensor(output), hooks.captured.edges)
            if reaches.get(layer) is False:
                raise StopPass
        captured = hooks.captured
        if logits is None or logits.dim() != 2 or logits.shape[1] < 2 or logits.grad_fn is None:
            note = "Grad-CAM needs a classifier: a (batch, classes) output with a gradient."
            records.clear()
            raise StopPass
        if captured.activation is None or captured.edge is None or not has_map_axes(captured.activation):
            note = (f"Grad-CAM needs a feature map with a temporal or spatial axis (1D, 2D or 3D) "
                    f"from {layer}, which did not produce one.")
            records.clear()
            raise StopPass
        records.extend(maps(logits, captured, inputs, batch.start, batch.stop))
        hooks.reset()

    with CamHooks(model, layer, watched) as hooks:
        run_batches(inputs, step, device=device, dtype=dtype, batch_size=CHUNK, count=count)
    return (records if reaches.get(layer) is not False else []), reaches, note


def reachability(logits: torch.Tensor | None, edges: dict[str, list[Any]]) -> dict[str, bool]:
    if logits is None or logits.grad_fn is None:
        return {}
    nodes = graph_nodes(logits.grad_fn)
    result = {}
    for name, found in edges.items():
        usable = [edge for edge in found if edge is not None]
        if usable:
            result[name] = any(edge.node in nodes for edge in usable)
    return result


def maps(logits: torch.Tensor, captured: Captured, inputs: InputSet, start: int, stop: int) -> list[CamRecord]:
    predicted = logits.detach().argmax(dim=1)
    targets: list[tuple[str, torch.Tensor, list[int]]] = [("predicted", predicted, list(range(stop - start)))]
    labels = [inputs.label(i) for i in range(start, stop)]
    true_rows = [row for row, label in enumerate(labels)
                 if label is not None and 0 <= label < logits.shape[1] and label != int(predicted[row])]
    if true_rows:
        true = predicted.clone()
        for row in true_rows:
            true[row] = int(labels[row])  # type: ignore[arg-type]
        targets.append(("true", true, true_rows))
    records = []
    activation = captured.activation
    assert activation is not None
    for number, (kind, classes, rows) in enumerate(targets):
        score = logits.gather(1, classes[:, None]).sum()
        captured.gradient = None
        (returned,) = torch.autograd.grad(score, inputs=[captured.edge], retain_graph=number + 1 < len(targets))
        # The tensor hook saw the same gradient (of the layer's output as it left the layer).
        gradient = captured.gradient if captured.gradient is not None else returned
        if captured.layout is not None:
            gradient = captured.layout.maps(gradient)
        axes = tuple(range(2, activation.dim()))  # every non-channel axis: time, and/or space
        weights = gradient.float().mean(dim=axes, keepdim=True)
        cams = F.relu((weights * activation.float()).sum(dim=1))
        cams = torch.nan_to_num(cams, nan=0.0, posinf=0.0, neginf=0.0)  # NaN model: a cold map, not garbage
        peak = cams.flatten(1).amax(dim=1).reshape(-1, *[1] * (cams.dim() - 1))
        cams = torch.where(peak > 0, cams / peak.clamp(min=1e-12), torch.zeros_like(cams))
        host = cams.detach().cpu().numpy().astype(np.float32)
        for row in rows:
            records.append(CamRecord(input_index=start + row, kind=kind, target=int(classes[row]), cam=host[row]))
    return records


def has_map_axes(activation: torch.Tensor) -> bool:
    """(N, C, L), (N, C, H, W) or (N, C, T, H, W): a map Grad-CAM can weigh and lay over the input."""
    return activation.dim() in (3, 4, 5)


def pooled(cam: np.ndarray, side: int = MAX_CAM_SIDE) -> np.ndarray:
    """The map average-pooled so neither side exceeds `side` (for the JSON), as rows: a 1D map
    is one row; a 3D map (T, H, W) is averaged over T first."""
    if cam.ndim == 1:
        cam = cam[None]
    elif cam.ndim == 3:
        cam = cam.mean(axis=0)
    height, width = cam.shape
    if max(height, width) <= side:
        return cam
    target = (min(height, side), min(width, side))
    return F.adaptive_avg_pool2d(torch.from_numpy(cam)[None, None], target)[0, 0].numpy()


def upsampled(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling to (height, width): the map laid over the input."""
    tensor = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(thumbnail: np.ndarray, cam: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """The map on the thumbnail: the colour (dark red at low heat, red at half, yellow at the
    max) blended in with opacity `strength * heat`, so cold regions show the input unchanged.
    pixel = floor(thumb * (1 - a) + colour * a + 0.5), a = strength * heat, heat bilinear."""
    height, width = thumbnail.shape[:2]
    heat = np.clip(upsampled(cam, height, width), 0.0, 1.0)[..., None]
    gray = thumbnail.astype(np.float32) if thumbnail.ndim == 3 else np.repeat(thumbnail[..., None], 3, 2).astype(np.float32)
    colour = np.concatenate([np.clip(2 * heat, 0, 1), np.clip(2 * heat - 1, 0, 1), np.zeros_like(heat)], axis=2) * 255
    alpha = strength * heat
    blended = gray * (1 - alpha) + colour * alpha
    return np.floor(blended + 0.5).clip(0, 255).astype(np.uint8)


def peak_fraction(cam: np.ndarray) -> tuple[float, ...]:
    """The hottest cell's centre as fractions of each axis: (y, x); (x,) for 1D; (t, y, x) for 3D."""
    cell = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return tuple((int(i) + 0.5) / size for i, size in zip(cell, cam.shape))


def messages(exc: BaseException) -> str:
    """The messages of an exception and of its causes (a ReportError wraps the model's error)."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(parts)
