"""The one way reportgen attaches hooks to a model: `HookSet`, a context manager.

Every forward hook and pre-hook of every pass goes through a `HookSet` (the main pass's engine,
the site tracker, the geometry recorder, ablation's masks, the probes' comparisons, the Grad-CAM
fallback), and `__exit__` removes every handle, also when the forward raised; a failure half-way
through registering removes the ones already added. `tests/test_engine.py` checks that no other
module calls `register_forward_hook` itself.

`HookOwner` is the shape of a hook owner with state of its own: it registers in `_register` into
`self.hooks` and is itself the context manager.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from torch import nn

_Owner = TypeVar("_Owner", bound="HookOwner")
_Set = TypeVar("_Set", bound="HookSet")


class HookSet:
    """Handles of hooks registered through it; all removed on `close()` / `__exit__`."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def forward(self, module: nn.Module, hook: Callable[..., Any], *, always_call: bool = False,
                with_kwargs: bool = False) -> None:
        """`hook(module, args, output)` after each call of `module` (`always_call`: also when
        its forward raised, with output None)."""
        self._handles.append(module.register_forward_hook(hook, always_call=always_call, with_kwargs=with_kwargs))

    def pre(self, module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """`hook(module, args)` before each call of `module`."""
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def on_close(self, handle: Any) -> None:
        """Something else to undo on close: an object with `remove()`, removed in order."""
        self._handles.append(handle)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __bool__(self) -> bool:
        return bool(self._handles)

    def __enter__(self: _Set) -> _Set:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class HookOwner(ABC):
    """A context manager that registers its hooks into `self.hooks` on entry and removes them
    all on exit (also when the forward raised, or registering failed half-way)."""

    def __init__(self) -> None:
        self.hooks = HookSet()

    @abstractmethod
    def _register(self) -> None:
        """Register this owner's hooks through `self.hooks`."""

    def __enter__(self: _Owner) -> _Owner:
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove()

    def _remove(self) -> None:
        self.hooks.close()
