"""The one registry helper: a name -> entry mapping that refuses a second entry under a name
and names what is known when a lookup misses.

Every registry of the toolkit (the models of each task, scores, selection methods, schedules,
tasks, data sources) is a ``Registry``; it is a ``dict``, so ``name in REG``, ``REG[name]``
and ``sorted(REG)`` read it as before.

    MODELS = Registry("model")

    @MODELS.register("resnet20")
    def resnet20(num_classes, in_channels=3): ...

    MODELS.get("resnet20")       # the function; an unknown name is a ValueError
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict):
    """A ``dict`` of named entries with a decorator to add them.

    Args:
        kind: what an entry is, for messages ("model", "selection method").
        wrap: turns the registered object and the decorator's keyword arguments into the
            stored entry (default: the object itself); the decorator returns the object.
        unknown: the message for a missing name, formatted with ``kind``, ``name`` and
            ``known`` (the sorted names joined by ", ").
    """

    def __init__(self, kind: str, wrap: Callable[..., Any] | None = None,
                 unknown: str = "unknown {kind} {name!r}; registered: {known}") -> None:
        super().__init__()
        self.kind = kind
        self._wrap = wrap
        self._unknown = unknown

    def register(self, name: str, **info) -> Callable[[T], T]:
        """A decorator that adds ``name``.

        Args:
            name: the entry's name.
            **info: passed to ``wrap`` with the object.

        Returns:
            The decorator; it returns the object unchanged.

        Raises:
            ValueError: (when the decorator is applied) ``name`` is already registered.
        """
        def add(obj: T) -> T:
            self.add(name, obj, **info)
            return obj

        return add

    def add(self, name: str, obj: Any, **info) -> None:
        """Add ``obj`` under ``name`` (what ``register`` does, without a decorator).

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = self._wrap(obj, **info) if self._wrap is not None else obj

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def lookup(self, name: str) -> Any:
        """The entry of ``name``.

        Raises:
            ValueError: ``name`` is not registered (the message lists what is).
        """
        if name not in self:
            raise ValueError(self._unknown.format(kind=self.kind, name=name,
                                                  known=", ".join(self.names())))
        return self[name]
