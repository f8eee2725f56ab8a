"""One registry helper for everything users extend (datasets, models, losses, corruptions, attacks)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from string to constructor.

    >>> MODELS = Registry("student")
    >>> @MODELS.register("tiny")
    ... def tiny(): ...
    >>> MODELS.names()
    ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; a duplicate name is an error."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Look ``name`` up; a miss raises ConfigError listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}",
                f"set the {self.kind} to one of the valid names, or register a new one",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
