"""`HookOwner`: the context-manager shape every hook owner of the impact passes shares.

Subclasses register their hooks in `_register` (appending each handle to `self._handles`);
`__exit__` removes every handle, also when the forward raised, and a failure half-way through
`_register` removes the ones already added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, TypeVar

_Owner = TypeVar("_Owner", bound="HookOwner")


class HookOwner(ABC):
    def __init__(self) -> None:
        self._handles: list[Any] = []

    @abstractmethod
    def _register(self) -> None:
        """Register this owner's hooks, appending every handle to `self._handles`."""

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
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
