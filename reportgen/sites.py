"""Where a conv layer is observed: the output of the activation that acts on it.

A reviewer who reads "dead filter" means a filter whose activation never fires. In a
conv -> BN -> ReLU network that is not the raw conv output: BN shifts and scales each channel
first, so a channel that is never positive at the conv can be positive on a third of the
positions after BN. Each conv is therefore observed at its *activation site*: its output is
followed, op by op, through the operations that keep its channels where they are
(normalisations, residual adds, scaling, dropout) to the first activation function applied to
it, whether a module (`nn.ReLU`) or a function (`F.relu(x)`, `x.relu_()`), which forward hooks
cannot see. A torch-function mode sees every op of the forward; it is active only inside
`SiteTracker`, a context manager owned by the capture.

A path is learnt once, on one input (`learn_sites`), before the pass; during the pass each conv
is observed the moment its path reaches the learnt step, so no tensor is held past its op. When
no activation follows, the site is the output of the last normalisation on the path (or the raw
conv output when there is none), and its description says so: a norm output followed by an
in-place residual add is observed before the add. A path followed over more than one residual
add is not an activation of this conv any more (the stream of a whole stage): it stops there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from reportgen.hooks import HookSet

ACTIVATIONS = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "prelu", "rrelu", "threshold", "logsigmoid",
})
# Ops whose output keeps the input's channels in place (checked: same shape), so an activation
# after them still acts on the conv's channels one to one.
NORMS = frozenset({"batch_norm", "instance_norm", "group_norm", "layer_norm", "local_response_norm"})
JOINS = frozenset({"add", "sub"})
CHANNEL_PRESERVING = NORMS | JOINS | frozenset({
    "mul", "div", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clone", "contiguous",
})
MAX_JOINS = 1  # residual adds a path may cross (conv -> BN -> + identity -> ReLU has one)
# `x += y` arrives as `__iadd__` or `add_`, `2 * x` as `__rmul__`: one name per operation.
_ALIASES = {"iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul", "rmul": "mul",
            "truediv": "div", "itruediv": "div", "rtruediv": "div"}


def call_key(module_name: str, call_index: int) -> str:
    """`layer1.conv` for the first call of a module, `layer1.conv#2` for its second."""
    return module_name if call_index == 0 else f"{module_name}#{call_index + 1}"


def op_name(func: Any) -> str:
    """`add_`, `__iadd__` and `torch.add` are all `add`; `relu_` is `relu`."""
    name = str(getattr(func, "__name__", "")).strip("_")
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class Site:
    """What acted on a conv's output before it was observed, in order (`name (Type)` for ops
    inside a leaf module, `relu()` for a function called in a forward); or, with `raw`, why the
    raw output was observed instead."""

    steps: tuple[str, ...] = ()
    activated: bool = False
    raw: str | None = None
    zero_floor: bool = False  # the activation is ReLU-like: a channel never > 0 outputs exactly 0
    # the module call whose output the site is (`layer1.0.relu#2`), when the last step ran in a
    # leaf module: its receptive field is the site's (after a residual add, the block's)
    module_key: str | None = None
    # a transformer's output, in full (tokens.py): how its maps were made, what its channels are
    layout: str = ""
    grid: tuple[int, ...] = ()  # the token grid the maps were laid out on (tokens.py), when they were
    mixing: str = ""  # what mixed those tokens before: "global" or "window" attention, "" none

    def describe(self) -> str:
        if self.layout:
            return self.layout
        if self.raw is not None:
            return f"the raw conv output ({self.raw})"
        if not self.steps:
            return "the raw conv output (no normalisation or activation acts on it directly)"
        path = " → ".join(self.steps)
        if self.activated:
            return f"after {path}"
        return f"after {path} (no activation follows on this path)"


RAW_BY_REQUEST = "--tap conv: before any normalisation or activation"


OnSite = Callable[[Sequence[tuple[str, Site]], torch.Tensor], None]
Plan = dict[str, tuple[int, bool]]  # key -> (steps to its site, whether the last is an activation)


_Step = tuple[str, str, "str | None"]  # (label, op, call key of the leaf module it ran in)


@dataclass
class _Path:
    tensor: torch.Tensor
    steps: dict[str, tuple[_Step, ...]]  # key -> steps so far


class SiteTracker(TorchFunctionMode):
    """Follows watched conv outputs op by op. Learning (`plan=None`): records each key's path
    into `plan`, observes nothing. Observing: hands each site's tensor to
    `on_site([(key, site), ...], tensor)` once per key and forward, while the forward runs (an
    in-place op later in the forward cannot change what is observed); keys that arrive at one
    tensor together (two convs joined by a residual add) come in one call, so it is reduced once.
    A path that differs from the plan is observed where it ends, at the end of the forward.
    """

    def __init__(self, model: nn.Module, on_site: OnSite | None = None, plan: Plan | None = None) -> None:
        super().__init__()
        self.model = model
        self.on_site = on_site
        self.learning = plan is None
        self.plan: Plan = dict(plan or {})
        self._paths: dict[int, _Path] = {}  # id(tensor) -> path; each holds its tensor, so ids stay valid
        self._resolved: set[str] = set()
        self._stack: list[tuple[str, str]] = []  # (label, call key) of the leaf modules running
        self._calls: dict[str, int] = {}
        self._hooks = HookSet()
        self._entered = False

    # context: the mode plus the module-stack hooks that name each step
    def __enter__(self) -> SiteTracker:
        named = dict(self.model.named_modules())
        try:
            self._hooks.pre(self.model, self._start_forward)
            self._hooks.forward(self.model, self._end_forward)
            for name, module in named.items():
                if name and not any(True for _ in module.children()):
                    label = f"{name} ({type(module).__name__})"
                    self._hooks.pre(module, self._push(name, label))
                    self._hooks.forward(module, self._pop(label))
            super().__enter__()
            self._entered = True
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._entered:
                self._entered = False
                super().__exit__(*exc)
        finally:
            self._remove()

    def _remove(self) -> None:
        self._hooks.close()
        self._paths.clear()

    def _push(self, name: str, label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            self._stack.append((label, call_key(name, index)))
        return hook

    def _pop(self, label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._stack and self._stack[-1][0] == label:
                self._stack.pop()
        return hook

    def _start_forward(self, module: nn.Module, args: Any) -> None:
        self._paths.clear()
        self._resolved.clear()
        self._stack.clear()
        self._calls.clear()

    def _end_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        for path in list(self._paths.values()):
            self._end_paths(path)
        self._paths.clear()

    def _end_paths(self, path: _Path) -> None:
        """Paths that reached no activation. Learning: their site is the last norm on the path,
        or the conv itself. Observing (the path left the plan): observed where it ended."""
        if self.learning:
            for key, steps in path.steps.items():
                norms = [i + 1 for i, (_, op, _) in enumerate(steps) if op in NORMS]
                self.plan.setdefault(key, (norms[-1] if norms else 0, False))
            return
        with torch._C.DisableTorchFunction():
            self._resolve([(key, _site(steps, False)) for key, steps in path.steps.items()], path.tensor)

    def watch(self, tensor: torch.Tensor, key: str) -> None:
        """A conv's output, from its forward hook: follow it from here."""
        path = self._paths.get(id(tensor))
        if path is None or path.tensor is not tensor:
            path = _Path(tensor, {})
            self._paths[id(tensor)] = path
        path.steps[key] = ()
        if not self.learning and self.plan.get(key) == (0, False):  # nothing acts on it: observe it now
            with torch._C.DisableTorchFunction():
                self._finish(path, [key], activated=False)

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self._paths:
            return func(*args, **kwargs)
        followed = [path for tensor in _tensors(args, kwargs)
                    if (path := self._paths.get(id(tensor))) is not None and path.tensor is tensor]
        result = func(*args, **kwargs)
        if not followed or not isinstance(result, torch.Tensor):
            return result
        name = op_name(func)
        if name in ACTIVATIONS:
            first = args[0] if args else None
            path = next((p for p in followed if p.tensor is first), None)
            if path is not None and result.shape == path.tensor.shape:
                self._advance(path, name, result, activated=True)
        elif name in CHANNEL_PRESERVING:
            for path in followed:
                if result.shape == path.tensor.shape:
                    self._advance(path, name, result, activated=False)
        return result

    def _advance(self, path: _Path, op: str, result: torch.Tensor, *, activated: bool) -> None:
        """Move `path` one op on, to `result`; observe the keys that arrive at their site."""
        if self._paths.get(id(path.tensor)) is path:
            del self._paths[id(path.tensor)]
        label, module_key = self._stack[-1] if self._stack else (f"{op}()", None)
        step = (label, op, module_key)
        steps, stopped = {}, []
        for key, so_far in path.steps.items():
            if sum(o in JOINS for _, o, _ in so_far) + (op in JOINS) <= MAX_JOINS:
                steps[key] = (*so_far, step)
            else:
                stopped.append(key)
        if stopped:  # past a second residual add: the path ends before this op
            self._end_paths(_Path(path.tensor, {key: path.steps[key] for key in stopped}))
        moved = _Path(result, steps)
        joined = self._paths.get(id(result))
        if joined is not None and joined.tensor is result:  # two paths meet (a residual add of two convs)
            moved.steps = {**joined.steps, **moved.steps}
        if moved.steps:
            self._paths[id(result)] = moved
        if activated and self.learning:
            for key, so_far in moved.steps.items():
                self.plan.setdefault(key, (len(so_far), True))
            self._drop(moved, list(moved.steps))
            return
        done = [key for key, so_far in moved.steps.items()
                if activated or self.plan.get(key) == (len(so_far), False)]
        if done and not self.learning:
            self._finish(moved, done, activated=activated)

    def _drop(self, path: _Path, keys: Sequence[str]) -> list[tuple[str, tuple[_Step, ...]]]:
        taken = [(key, path.steps.pop(key)) for key in keys]
        if not path.steps and self._paths.get(id(path.tensor)) is path:
            del self._paths[id(path.tensor)]
        return taken

    def _finish(self, path: _Path, keys: Sequence[str], *, activated: bool) -> None:
        self._resolve([(key, _site(steps, activated)) for key, steps in self._drop(path, keys)], path.tensor)

    def _resolve(self, arrivals: Sequence[tuple[str, Site]], tensor: torch.Tensor) -> None:
        fresh = [(key, site) for key, site in arrivals if key not in self._resolved]
        if fresh and self.on_site is not None:
            self._resolved.update(key for key, _ in fresh)
            self.on_site(fresh, tensor)


def learn_sites(
    model: nn.Module, layer_names: Sequence[str], forward: Callable[[], Any], key: Callable[[str, int], str],
) -> Plan:
    """Each layer call's path to its activation site, learnt from one forward (`forward()`: the
    model on one input). `key(name, call_index)` names a call as the capture does. Calls whose
    hooks never fired are not in the plan."""
    modules = dict(model.named_modules())
    tracker = SiteTracker(model)
    calls: dict[str, int] = {}

    def watcher(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            index = calls.get(name, 0)
            calls[name] = index + 1
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                tracker.watch(output, key(name, index))
        return hook

    with HookSet() as hooks:
        for name in layer_names:
            hooks.forward(modules[name], watcher(name))
        with tracker, torch.inference_mode():
            forward()
    return tracker.plan


def _site(steps: tuple[_Step, ...], activated: bool) -> Site:
    label, op, module_key = steps[-1] if steps else ("", "", None)
    zero_floor = activated and (op == "relu" or label.endswith("(ReLU6)"))
    return Site(tuple(label for label, _, _ in steps), activated=activated, zero_floor=zero_floor,
                module_key=module_key)


def _tensors(args: Sequence[Any], kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
