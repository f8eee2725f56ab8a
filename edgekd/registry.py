"""One registry helper for everything users extend (datasets, models, losses, corruptions, attacks)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, TypeVar

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

    def check(self, name: str, key: str) -> None:
        """Raise ConfigError unless ``name`` is registered, naming the config ``key`` and the valid names."""
        if name not in self._items:
            raise unknown_name(self.kind, name, key, self.names())

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def unknown_name(kind: str, name: object, key: str, valid: Iterable[str]) -> ConfigError:
    """The error for a config value that names no registered ``kind``: the key, the value, the valid names."""
    names = ", ".join(sorted(valid))
    return ConfigError(f"config key '{key}' has unknown {kind} {name!r}; valid: {names}",
                       f"set {key} to one of the valid names, or register a new {kind}")


def declared_names(files: Iterable[Path], registrars: Iterable[str]) -> set[str]:
    """Names registered in ``files`` by a call with a literal name, ``TEACHERS.register("n")`` or
    ``register_kd_loss("n")`` (``registrars`` lists those callables as written).

    Reads the source (ast) instead of importing it, so the names of registries that live in torch
    modules are known in milliseconds; the validation uses the live registry instead once its
    module is imported (plugins registered at run time are then included).
    """
    wanted = set(registrars)
    names: set[str] = set()
    for path in files:
        text = path.read_text()
        if not any(r.rpartition(".")[2] in text for r in wanted):
            continue  # no registrar named in the file: skip the parse
        for node in _outside_bodies(ast.parse(text, str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                called = f"{func.value.id}.{func.attr}"  # TEACHERS.register
            else:
                called = getattr(func, "id", None)  # register_kd_loss
            first = node.args[0]
            if called in wanted and isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def _outside_bodies(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those inside function and class bodies (their decorators included).

    Registrations are module-level statements or decorators; skipping the bodies, where most of a
    file's nodes are, keeps a registry-name check fast as the number of registered files grows.
    """
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack.extend(node.decorator_list)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))
