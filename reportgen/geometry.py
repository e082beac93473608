"""Where each layer's output cells look in the input: stride, receptive field and first pixel.

`FlowRecorder` follows one forward pass (the summary's): module hooks and a torch function mode
record which call produced each tensor, so the data flow is known through branches, residual
adds, concatenations and functional ops. `geometries` then walks those calls in order and
applies, per spatial axis and in integers only, the usual recurrences

    jump_out  = jump_in * stride
    field_out = field_in + (kernel - 1) * dilation * jump_in
    first_out = first_in - padding * jump_in

with the hyperparameters of each conv and pooling module (or F.conv/F.*pool call). `first` is the
input index of the first pixel that output cell 0 sees (negative: it starts in the padding); cell
c sees pixels first + c * jump .. first + c * jump + field - 1, its centre (the offset) is
first + c * jump + (field - 1) / 2. Elementwise layers and ops keep the geometry; where branches
meet (+, *, cat over channels) it is the union of the windows. Where it cannot be known
(adaptive pooling with unequal cells, interpolation, transposed convs, an op we do not model),
the layer's geometry says why instead of guessing. Statistics of instance, group and layer norm,
which span the whole map, are not counted, as in the usual receptive field.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.sites import call_key
from reportgen.hooks import HookOwner

WINDOW_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._LPPoolNd,
)
ADAPTIVE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
POINTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Softmax2d, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.LocalResponseNorm, nn.ChannelShuffle,
)
# torch functions (by name) that keep every position where it is: elementwise maths, activations,
# copies; where several inputs meet, the union of their windows
POINTWISE_FUNCTIONS = frozenset("""
    relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish hardswish hardsigmoid hardtanh
    hardtanh_ sigmoid sigmoid_ tanh tanh_ softplus threshold prelu logsigmoid
    add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__ mul mul_ __mul__ __imul__ __rmul__
    div div_ __truediv__ __itruediv__ __rtruediv__ __neg__ neg abs clamp clamp_ clip pow __pow__ exp sqrt
    maximum minimum where dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    batch_norm instance_norm group_norm layer_norm local_response_norm
    clone contiguous detach to float double half bfloat16 type_as _native_batch_norm_legit_no_training
""".split())
CONV_FUNCTIONS = frozenset({"conv1d", "conv2d", "conv3d"})
RESHAPING_FUNCTIONS = frozenset({"pad", "__getitem__"})  # their arguments are kept: they move cells
POOL_FUNCTIONS = frozenset(name for dims in (1, 2, 3) for name in (
    f"max_pool{dims}d", f"avg_pool{dims}d", f"max_pool{dims}d_with_indices", f"_max_pool{dims}d"))

INPUT = -1  # the producer index of the model's input


@dataclass(frozen=True)
class Geometry:
    """How one layer's output cells map onto the input, per spatial axis, in input pixels.

    Known: `receptive_field`, `stride` and `first` are filled and `unknown` is "". Unknown: the
    tuples are empty and `unknown` says why."""

    receptive_field: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    first: tuple[int, ...] = ()  # first input pixel cell 0 sees (before clipping; < 0: padding)
    unknown: str = ""
    # every cell sees every input pixel because attention over all tokens ran before (tokens.py);
    # the window above is then a formal one, as wide as needed to cover the input from any cell
    whole_input: bool = False

    @property
    def known(self) -> bool:
        return not self.unknown

    def offset(self) -> tuple[float, ...]:
        """The centre of output cell 0 in input pixel indices (cell c: offset + c * stride)."""
        return tuple(f + (r - 1) / 2 for f, r in zip(self.first, self.receptive_field))


# what a tensor made without the input (a parameter, torch.zeros) contributes where branches meet
CONSTANT = Geometry(unknown="it does not depend on the input")


def identity(dims: int) -> Geometry:
    return Geometry((1,) * dims, (1,) * dims, (0,) * dims)


def unknown(reason: str) -> Geometry:
    return Geometry(unknown=reason)


@dataclass
class _Node:
    """One recorded call: a module's (`key` set) or a torch function's."""

    key: str | None
    name: str  # the module's class name or the function's name
    module: nn.Module | None
    sources: tuple[int, ...]  # producer indices of its tensor inputs (INPUT: the model's input)
    in_spatial: tuple[int, ...] | None
    out_spatial: tuple[int, ...] | None = None
    inner: int | None = None  # a module's output made by a call inside it: that call's index
    args: tuple[Any, ...] = ()  # a conv's, pool's or cat's arguments, tensors as their shapes
    kwargs: dict[str, Any] | None = None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _plain(value: Any) -> Any:
    """`value` with every tensor replaced by its shape (a recorded call keeps no tensor alive)."""
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _spatial(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return tuple(int(d) for d in tensor.shape[2:]) if tensor is not None and tensor.dim() >= 2 else None


class _FunctionMode(TorchFunctionMode):
    def __init__(self, owner: FlowRecorder) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self.owner._function(func, args, kwargs, result)
        return result


def _compiled(model: nn.Module) -> bool:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing is compiled
    optimized = getattr(eval_frame, "OptimizedModule", None)
    return any(getattr(module, "_compiled_call_impl", None) is not None
               or (optimized is not None and isinstance(module, optimized)) for module in model.modules())


class _Exit:
    """A handle whose `remove()` leaves a torch function mode."""

    def __init__(self, mode: TorchFunctionMode) -> None:
        self.mode = mode

    def remove(self) -> None:
        self.mode.__exit__(None, None, None)


class FlowRecorder(HookOwner):
    """Records who produced which tensor during one forward pass of `model` (see the module doc);
    `geometries()` afterwards gives every module call's `Geometry`, keyed like the summary rows."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.nodes: list[_Node] = []
        self.failed = ""
        self._producers: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self._calls: dict[int, int] = {}
        self._open: dict[int, list[int]] = {}  # module id -> its calls not yet returned
        self._done: list[int] = []  # node indices in the order their calls returned
        self._dims: int | None = None
        self._mode = _FunctionMode(self)

    def _register(self) -> None:
        if _compiled(self.model):  # dynamo would trace these hooks (and fail): follow nothing
            self.failed = "the model is compiled with torch.compile"
            return
        self._mode.__enter__()
        self.hooks.on_close(_Exit(self._mode))  # `remove()` leaves the mode, with the hooks
        for name, module in self.model.named_modules():
            self.hooks.pre(module, self._pre_hook(name))
            self.hooks.forward(module, self._post_hook)

    # -- recording (never lets a failure of its own reach the forward pass) --

    def _producer(self, tensor: torch.Tensor) -> int | None:
        entry = self._producers.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def _produced(self, tensor: torch.Tensor, index: int) -> None:
        self._producers[id(tensor)] = (weakref.ref(tensor), index)

    def _sources(self, values: Any) -> tuple[int, ...]:
        found = (self._producer(t) for t in _tensors(values))
        return tuple(dict.fromkeys(i for i in found if i is not None))

    def _pre_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.failed:
                return
            try:
                first = next(iter(_tensors(args)), None)
                if module is self.model and self._dims is None and first is not None:
                    self._dims = max(first.dim() - 2, 0)
                    self._produced(first, INPUT)
                calls = self._calls.get(id(module), 0)
                self._calls[id(module)] = calls + 1
                source = self._producer(first) if first is not None else None
                self.nodes.append(_Node(call_key(name, calls), type(module).__name__, module,
                                        (source,) if source is not None else (), _spatial(first)))
                self._open.setdefault(id(module), []).append(len(self.nodes) - 1)
            except Exception as exc:  # noqa: BLE001 - recording must never break the forward
                self.failed = f"{type(exc).__name__}: {exc}"
        return hook

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.failed or not self._open.get(id(module)):
            return
        try:
            index = self._open[id(module)].pop()
            self._done.append(index)
            node = self.nodes[index]
            first = next(iter(_tensors(output)), None)
            if first is None:
                return
            node.out_spatial = _spatial(first)
            made = self._producer(first)
            if made is not None and made > index:
                node.inner = made
            for tensor in _tensors(output):
                self._produced(tensor, index)
        except Exception as exc:  # noqa: BLE001
            self.failed = f"{type(exc).__name__}: {exc}"

    def _function(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if self.failed:
            return
        try:
            outputs = _tensors(result)
            if not outputs:
                return
            # an aten op (an exported program's) is named like `conv2d.default`: its F.* name
            name = str(getattr(func, "__name__", func)).split(".")[0]
            keep = name in CONV_FUNCTIONS or name in POOL_FUNCTIONS or name in RESHAPING_FUNCTIONS or name == "cat"
            # a conv's or pool's window reads only its input (a computed weight is no branch)
            sources = self._sources(args[:1] or kwargs.get("input")) if keep and name != "cat" \
                else self._sources((args, kwargs))
            self.nodes.append(_Node(None, name, None, sources, None, _spatial(outputs[0]),
                                    args=_plain(args) if keep else (), kwargs=_plain(kwargs) if keep else None))
            self._done.append(len(self.nodes) - 1)
            for tensor in outputs:
                self._produced(tensor, len(self.nodes) - 1)
        except Exception as exc:  # noqa: BLE001
            self.failed = f"{type(exc).__name__}: {exc}"

    # -- geometry --

    def missing(self) -> Geometry:
        """The geometry of a call `geometries()` does not list."""
        if self.failed:
            return unknown(f"the forward pass could not be followed ({self.failed})")
        return unknown("it did not run as a module call")

    def geometries(self) -> dict[str, Geometry]:
        """Every module call's geometry, keyed `name` / `name#2` as the summary rows are."""
        if self.failed:
            return {node.key: self.missing() for node in self.nodes if node.key is not None}
        dims = self._dims or 0
        if dims == 0:
            return {node.key: unknown("the input has no spatial axes") for node in self.nodes if node.key is not None}
        # in the order calls returned: a container's output is made by calls inside it
        found: dict[int, Geometry] = {}
        for index in self._done:
            found[index] = _node_geometry(self.nodes[index], found, dims)
        return {node.key: found[index] for index, node in enumerate(self.nodes)
                if node.key is not None and index in found}


def _source(node: _Node, found: Mapping[int, Geometry], dims: int) -> Geometry:
    return _union([identity(dims) if i == INPUT else found[i] for i in node.sources])


def _union(parts: Sequence[Geometry]) -> Geometry:
    """The window that covers every part's (same stride), or why not; constants add nothing."""
    parts = [part for part in parts if part is not CONSTANT]
    if not parts:
        return CONSTANT
    for part in parts:
        if not part.known:
            return part
    if len({part.stride for part in parts}) > 1:
        return unknown("branches with different strides meet")
    first = tuple(min(p.first[a] for p in parts) for a in range(len(parts[0].first)))
    last = tuple(max(p.first[a] + p.receptive_field[a] for p in parts) for a in range(len(first)))
    return Geometry(tuple(b - a for a, b in zip(first, last)), parts[0].stride, first)


def _label(node: _Node) -> str:
    return f"{node.key} ({node.name})" if node.key is not None else f"torch.{node.name}"


def _node_geometry(node: _Node, found: Mapping[int, Geometry], dims: int) -> Geometry:
    module = node.module
    if module is None:
        return _function_geometry(node, found, dims)
    modelled = isinstance(module, (*WINDOW_TYPES, *ADAPTIVE_TYPES, *POINTWISE_TYPES))
    if modelled and (node.in_spatial is None or len(node.in_spatial) != dims):
        return unknown(f"{_label(node)} does not work on a {dims}D map like the input")
    if isinstance(module, WINDOW_TYPES) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _window(_source(node, found, dims), *_hyper(module, dims, node.in_spatial))
    if isinstance(module, ADAPTIVE_TYPES):
        return _adaptive(node, _source(node, found, dims))
    if isinstance(module, POINTWISE_TYPES):
        return _source(node, found, dims)
    if node.inner is not None:  # a container, or a module whose output came from calls inside it
        return found[node.inner]
    return unknown(f"{_label(node)} is a layer whose geometry is not modelled")


def _adaptive(node: _Node, source: Geometry) -> Geometry:
    before, after = node.in_spatial, node.out_spatial
    if before is None or after is None or len(before) != len(after) or any(b % a for b, a in zip(before, after)):
        return unknown(f"{_label(node)} pools {_shape(before)} cells into {_shape(after)} cells of unequal size")
    kernel = tuple(b // a for b, a in zip(before, after))
    return _window(source, kernel, kernel, (0,) * len(kernel), (1,) * len(kernel))


def _shape(spatial: tuple[int, ...] | None) -> str:
    return "x".join(str(d) for d in spatial) if spatial else "?"


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        items = tuple(int(v) for v in value)
        return items if len(items) == dims else (items + (items[-1],) * dims)[:dims]
    return (int(value),) * dims


def _hyper(module: nn.Module, dims: int, spatial: tuple[int, ...] | None) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, padding, dilation) of a conv or pooling module; padding before the first cell."""
    kernel = _tuple(module.kernel_size, dims)  # type: ignore[arg-type]
    stride = _tuple(getattr(module, "stride", None) or kernel, dims)
    dilation = _tuple(getattr(module, "dilation", 1), dims)
    padding = getattr(module, "padding", 0)
    if padding == "valid":
        padding = 0
    elif padding == "same":  # PyTorch puts the odd pixel on the far side
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return kernel, stride, _tuple(padding, dims), dilation


def _window(source: Geometry, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
            dilation: tuple[int, ...]) -> Geometry:
    if not source.known:
        return source
    if not len(kernel) == len(source.stride):
        return unknown("a window with another number of axes than the input")
    return Geometry(
        receptive_field=tuple(r + (k - 1) * d * j for r, k, d, j in zip(source.receptive_field, kernel, dilation,
                                                                         source.stride)),
        stride=tuple(j * s for j, s in zip(source.stride, stride)),
        first=tuple(f - p * j for f, p, j in zip(source.first, padding, source.stride)),
    )


def _function_geometry(node: _Node, found: Mapping[int, Geometry], dims: int) -> Geometry:
    name = node.name
    if node.out_spatial is not None and len(node.out_spatial) != dims:
        return unknown(f"torch.{name} leaves no {dims}D map")
    if name in POINTWISE_FUNCTIONS:
        return _source(node, found, dims)
    if name == "cat":
        axis = (node.kwargs or {}).get("dim", node.args[1] if len(node.args) > 1 else 0)
        return _source(node, found, dims) if axis in (1, -dims - 1) else unknown("torch.cat along a spatial axis")
    if name in CONV_FUNCTIONS or name in POOL_FUNCTIONS:
        return _function_window(node, _source(node, found, dims), dims)
    if name == "pad":
        return _padded(node, _source(node, found, dims), dims)
    if name == "__getitem__":
        return _sliced(node, _source(node, found, dims), dims)
    return unknown(f"torch.{name} is an operation whose geometry is not modelled")


def _padded(node: _Node, source: Geometry, dims: int) -> Geometry:
    """F.pad: (before, after) pairs from the last axis backwards; padding before an axis moves
    cell 0 back by that many pixels (a negative pad crops). Pairs beyond the spatial axes pad
    channels, which moves nothing. Reflect and replicate modes are counted as constant ones."""
    pads = node.args[1] if len(node.args) > 1 else (node.kwargs or {}).get("pad", ())
    pads = tuple(int(p) for p in pads)
    before = [0] * dims
    for pair in range(min(len(pads) // 2, dims)):
        before[dims - 1 - pair] = pads[2 * pair]
    return _window(source, (1,) * dims, (1,) * dims, tuple(before), (1,) * dims)


def _sliced(node: _Node, source: Geometry, dims: int) -> Geometry:
    """`x[:, :, ::2, 1:]`: a slice of a spatial axis starting at s with step k makes cell 0 the
    input's cell s and multiplies the stride by k. Integer indices or new axes there: unknown."""
    if not source.known:
        return source
    index = node.args[1] if len(node.args) > 1 else ()
    index = index if isinstance(index, tuple) else (index,)
    rank = dims + 2
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (rank - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (rank - len(index))
    first, stride = list(source.first), list(source.stride)
    for axis, item in enumerate(index[2:rank]):
        if not isinstance(item, slice) or len(index) != rank:
            return unknown("an indexing of a spatial axis whose geometry is not modelled")
        start, step = item.start or 0, item.step or 1
        if not isinstance(start, int) or start < 0 or not isinstance(step, int) or step < 1:
            return unknown("a slice of a spatial axis from its end or with a computed start")
        first[axis] += start * source.stride[axis]
        stride[axis] *= step
    return Geometry(source.receptive_field, tuple(stride), tuple(first))


def _function_window(node: _Node, source: Geometry, dims: int) -> Geometry:
    args, kwargs = node.args, node.kwargs or {}
    if node.name in CONV_FUNCTIONS:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    elif node.name.startswith("avg"):
        names = ("input", "kernel_size", "stride", "padding")
    else:
        names = ("input", "kernel_size", "stride", "padding", "dilation")
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    if node.name in CONV_FUNCTIONS:
        kernel = tuple(bound["weight"][2:])  # its shape
    else:
        kernel = _tuple(bound["kernel_size"], dims)
    stride = _tuple(bound.get("stride") or (1 if node.name in CONV_FUNCTIONS else kernel), dims)
    dilation = _tuple(bound.get("dilation", 1), dims)
    padding = bound.get("padding", 0)
    if isinstance(padding, str):
        padding = 0 if padding == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return _window(source, kernel, stride, _tuple(padding, dims), dilation)
