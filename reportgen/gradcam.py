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
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reportgen.capture import first_tensor
from reportgen.outputs import find_logits
from reportgen.errors import ReportError, one_line
from reportgen.faults import is_out_of_memory
from reportgen.hook_owner import HookOwner
from reportgen.inputs import InputSet

# Words of the errors autograd raises in a forward (in-place on a leaf or a needed tensor,
# inference tensors, views modified in place, ...): only those make a batch run again without it.
_AUTOGRAD_ERROR = re.compile(r"grad|in-?place|leaf|inference tensor|backward|version", re.IGNORECASE)
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
class _Captured:
    activation: torch.Tensor | None = None
    edge: Any = None
    gradient: torch.Tensor | None = None
    edges: dict[str, list[Any]] = field(default_factory=dict)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the (non-transposed) convolutions, in definition order."""
    return [name for name, module in model.named_modules()
            if name and isinstance(module, nn.modules.conv._ConvNd)
            and not isinstance(module, nn.modules.conv._ConvTransposeNd)]


def default_cam_layer(model: nn.Module) -> str | None:
    """The last convolution, in definition order."""
    names = conv_layers(model)
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
        self.captured = _Captured()

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        self._handles.append(modules[self.target].register_forward_hook(self._target_hook))
        for name in self.watched:
            if name in modules:
                self._handles.append(modules[name].register_forward_hook(self._watch_hook(name)))

    def _remove(self) -> None:
        super()._remove()
        self.captured = _Captured()  # drop the graph's tensors with the hooks

    def reset(self) -> None:
        self.captured = _Captured()

    def _edge(self, tensor: torch.Tensor) -> Any:
        return torch.autograd.graph.get_gradient_edge(tensor) if tensor.requires_grad else None

    def _target_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None or not tensor.is_floating_point():
            return
        captured = self.captured
        captured.activation = tensor.detach().clone()  # before any in-place op after the layer
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


def _saved_grads(model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
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
    saved = list(_saved_grads(model))
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
    with CamHooks(model, layer, watched) as hooks:
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            batch = inputs.batch(start, stop)
            if not batch.is_floating_point():
                return [], reaches, "Grad-CAM needs floating-point inputs."
            batch = batch.to(device=device, dtype=dtype).clone().requires_grad_(True)
            hooks.reset()
            output = call(model, batch) if call is not None else model(batch)
            logits = find_logits(output, stop - start)
            if start == 0:  # reaching any output counts, logits or not
                reaches = _reachability(logits if logits is not None else first_tensor(output),
                                        hooks.captured.edges)
                if reaches.get(layer) is False:
                    return [], reaches, ""
            captured = hooks.captured
            if logits is None or logits.dim() != 2 or logits.shape[1] < 2 or logits.grad_fn is None:
                return [], reaches, "Grad-CAM needs a classifier: a (batch, classes) output with a gradient."
            if captured.activation is None or captured.edge is None or not has_map_axes(captured.activation):
                return [], reaches, (f"Grad-CAM needs a feature map with a temporal or spatial axis (1D, 2D or 3D) "
                                     f"from {layer}, which did not produce one.")
            records.extend(_maps(logits, captured, inputs, start, stop))
            del output, logits, captured
            hooks.reset()
    return records, reaches, ""


def _reachability(logits: torch.Tensor | None, edges: dict[str, list[Any]]) -> dict[str, bool]:
    if logits is None or logits.grad_fn is None:
        return {}
    nodes = graph_nodes(logits.grad_fn)
    result = {}
    for name, found in edges.items():
        usable = [edge for edge in found if edge is not None]
        if usable:
            result[name] = any(edge.node in nodes for edge in usable)
    return result


def _maps(logits: torch.Tensor, captured: _Captured, inputs: InputSet, start: int, stop: int) -> list[CamRecord]:
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


class FusedCam(HookOwner):
    """Grad-CAM and reachability computed inside the main pass, for its first `count` inputs.

    The batches holding those inputs run outside inference mode (`armed`), and the forward of
    each runs with autograd on: a root pre-hook turns it on (torchinfo runs its pass under
    `no_grad`) and an `always_call` root forward hook turns it off, also when the forward raises.
    Autograd keeps no tensor from before the target layer (`saved_tensors_hooks` drops them),
    so memory stays that of an inference pass; the backward (`autograd.grad` to the target's
    gradient edge) runs only the layers after it. Running a model with autograd on is how most
    models are used: nothing here mixes inference tensors into autograd, which could fail.

    When anything goes wrong (a frozen model without a graph, a failing backward, an in-place op
    that invalidated a saved tensor), `result()` is None and the caller runs `grad_cam` instead.
    Every `p.grad` is checked and put back on exit.
    """

    def __init__(self, model: nn.Module, inputs: InputSet, *, count: int, layer: str,
                 watched: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.count = count
        self.layer = layer
        self.watched = [name for name in watched if name != layer]
        self.records: dict[tuple[int, str], CamRecord] = {}
        self.reaches: dict[str, bool] | None = None
        self.failure = ""
        self.aborted = False  # a forward failed with autograd on: this batch is to be run again
        self._disabled = False
        self._armed = False
        self._offset = 0
        self._stack: Any = None
        self._after = False
        self._captured = _Captured()
        self._saved: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        self._saved = list(_saved_grads(self.model))
        self._handles.append(self.model.register_forward_pre_hook(self._start))
        self._handles.append(self.model.register_forward_hook(self._finish, always_call=True))
        self._handles.append(modules[self.layer].register_forward_hook(self._target))
        for name in self.watched:
            if name in modules:
                self._handles.append(modules[name].register_forward_hook(self._watch(name)))

    def _remove(self) -> None:
        super()._remove()
        self._close()
        for parameter, grad in self._saved:
            if parameter.grad is not grad:
                parameter.grad = grad
        self._saved = []

    def armed(self, start: int) -> Any:
        """Context for the batch starting at input `start`: outside inference mode when it holds
        inputs that get a Grad-CAM map, a no-op otherwise."""
        if start >= self.count or not self._handles or self._disabled:
            return nullcontext()

        @contextmanager
        def context() -> Iterator[None]:
            self._armed, self._offset = True, start
            try:
                # normal tensors (no inference tensors), no autograd unless `_start` turns it on
                with torch.inference_mode(False), torch.no_grad():
                    yield
            finally:
                self._armed = False
                self._close()

        return context()

    def abandon(self, exc: BaseException) -> bool:
        """After a batch failed with `exc`: True (once) when it failed with autograd on and the
        error names autograd (grad, in-place, leaf, inference tensors, backward, version), so
        the pass is switched off and the caller can undo the batch and run it again as usual.
        Anything else (out of memory, a model error) takes the caller's usual way."""
        aborted, self.aborted = self.aborted, False
        if not aborted or is_out_of_memory(exc) or not _AUTOGRAD_ERROR.search(_messages(exc)):
            return False
        self._disabled = True
        self.records.clear()
        return True

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor | None:
        return tensor if self._after else None  # before the target: never needed by the backward

    @staticmethod
    def _unpack(packed: torch.Tensor | None) -> torch.Tensor:
        if packed is None:
            raise RuntimeError("a tensor from before the Grad-CAM layer was needed")
        return packed

    def _start(self, module: nn.Module, args: Any) -> None:
        if not self._armed or self._stack is not None:
            return
        stack = ExitStack()
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        self._stack, self._after, self._captured = stack, False, _Captured()

    def _close(self) -> None:
        self._captured = _Captured()  # drop the graph with its references
        self._after = False
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _target(self, module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if self._stack is None or tensor is None or not tensor.is_floating_point():
            return
        self._captured.activation = tensor.detach().clone()  # before any in-place op after it
        self._captured.edge = torch.autograd.graph.get_gradient_edge(tensor) if tensor.requires_grad else None
        self._captured.edges.setdefault(self.layer, []).append(self._captured.edge)
        self._after = True

    def _watch(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if self._stack is not None and tensor is not None and tensor.is_floating_point():
                edge = torch.autograd.graph.get_gradient_edge(tensor) if tensor.requires_grad else None
                self._captured.edges.setdefault(name, []).append(edge)

        return hook

    def _finish(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack is None:
            return
        try:
            if output is None:  # the forward raised (always_call): maybe because autograd was on
                self.aborted = True
                self.failure = "the model's forward failed with autograd on"
                return
            anchor = first_tensor(output)
            if anchor is None:
                return
            activation = self._captured.activation
            logits = find_logits(output, activation.shape[0] if activation is not None else None)
            if self.reaches is None:  # reaching any output counts, logits or not
                self.reaches = _reachability(logits if logits is not None else anchor, self._captured.edges)
            if logits is None:
                self.failure = self.failure or "the model's output holds no (batch, classes) logits"
                return
            captured = self._captured
            usable = (logits.dim() == 2 and logits.shape[1] >= 2 and logits.grad_fn is not None
                      and captured.activation is not None and captured.edge is not None
                      and has_map_axes(captured.activation) and self.reaches.get(self.layer) is not False)
            if not usable:
                self.failure = self.failure or "no gradient path from the Grad-CAM layer to a (batch, classes) output"
                return
            stop = self._offset + logits.shape[0]
            for record in _maps(logits, captured, self.inputs, self._offset, stop):
                if record.input_index < self.count:
                    self.records[(record.input_index, record.kind)] = record
        except Exception as exc:  # the main pass must go on: the caller falls back to grad_cam
            self.failure = one_line(exc)
        finally:
            self._close()

    def result(self, total: int) -> CamResult | None:
        """The maps of inputs 0..min(count, total)-1, or None when they are not all there."""
        wanted = min(self.count, total)
        if self.failure or self.reaches is None or any((i, "predicted") not in self.records for i in range(wanted)):
            return None
        ordered = tuple(self.records[key] for key in sorted(self.records))
        return CamResult(self.layer, ordered, dict(self.reaches))


def _messages(exc: BaseException) -> str:
    """The messages of an exception and of its causes (a ReportError wraps the model's error)."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(parts)
