"""Model names from outside edgekd (``torchvision:NAME``, ``timm:NAME``, ``torchscript:PATH``), torch-free.

``teacher.arch`` / ``student.arch`` is either a built-in name (``edgekd.models`` registries) or
``SOURCE:NAME``. The config checks such a name at load, before any training starts, so a typo in a
student's name fails in a second instead of after the teacher has trained. The catalogues are read
the way ``registry.declared_names`` reads the built-ins: when the library is already imported its
own list answers (``torchvision.models.list_models``, ``timm.list_models``); otherwise the
``@register_model`` functions of its installed source are read with ``ast`` (0.1 s for torchvision,
about 1.5 s for timm's ~1 400 names) instead of importing torch. tests/test_arch_names.py checks
both give the same names.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import sys
from pathlib import Path

from .errors import ConfigError

# source prefix -> (python package, folder of its model definitions, the pip install hint)
SOURCES: dict[str, tuple[str, str, str]] = {
    "torchvision": ("torchvision", "models", "pip install 'edgekd[train]'"),
    "timm": ("timm", "models", "pip install 'edgekd[timm]'"),
    "torchscript": ("", "", ""),  # a local file: torchscript:PATH
}


def split_arch(arch: str) -> tuple[str | None, str]:
    """``"timm:mobilenetv4_conv_small"`` -> ``("timm", "mobilenetv4_conv_small")``; a built-in name -> ``(None, arch)``."""
    source, sep, name = arch.partition(":")
    return (source, name) if sep else (None, arch)


def _registered_in_source(root: Path) -> frozenset[str]:
    """Names of the functions decorated with ``@register_model`` (torchvision and timm) under ``root``."""
    names: set[str] = set()
    for path in sorted(root.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                func = deco.func if isinstance(deco, ast.Call) else deco
                if getattr(func, "id", None) != "register_model" and getattr(func, "attr", None) != "register_model":
                    continue
                name = node.name
                for kw in deco.keywords if isinstance(deco, ast.Call) else []:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = kw.value.value
                names.add(name)
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def _source_catalog(package: str, folder: str) -> frozenset[str] | None:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return _registered_in_source(Path(list(spec.submodule_search_locations)[0]) / folder)


def catalog(source: str) -> list[str] | None:
    """The model names ``source`` offers (sorted); None when its package is not installed."""
    package, folder, _ = SOURCES[source]
    if source == "torchvision" and "torchvision.models" in sys.modules:
        tvm = sys.modules["torchvision.models"]
        return sorted(tvm.list_models(module=tvm))
    if source == "timm" and "timm" in sys.modules:
        return sorted(sys.modules["timm"].list_models())
    names = _source_catalog(package, folder)
    return None if names is None else sorted(names)


def _close(name: str, names: list[str], n: int = 8) -> list[str]:
    """The names most like ``name`` (difflib), else those of its family prefix, else the first few."""
    near = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    return near or [x for x in names if x.startswith(name.split("_")[0])][:n] or names[:n]


def check_arch(key: str, arch: str) -> None:
    """Raise ConfigError unless a ``SOURCE:NAME`` arch names a known source and an existing model/file.

    Built-in names (no prefix) are checked against the registries by ``validation``.
    """
    source, name = split_arch(arch)
    if source is None:
        return
    if source not in SOURCES:
        raise ConfigError(f"config key '{key}' has unknown model source '{source}:' in {arch!r}; "
                          f"valid: {', '.join(f'{s}:' for s in SOURCES)} or a built-in name",
                          f"write {key} as torchvision:NAME, timm:NAME, torchscript:PATH or a built-in name")
    if not name:
        raise ConfigError(f"config key '{key}' is {arch!r} with no name after '{source}:'",
                          f"write {key}: {source}:{'PATH' if source == 'torchscript' else 'NAME'}")
    if source == "torchscript":
        if not Path(name).is_file():
            raise ConfigError(f"config key '{key}': TorchScript file {name} not found",
                              "save the model with torch.jit.save(torch.jit.script(model), path) and give that path")
        return
    names = catalog(source)
    if names is None:
        raise ConfigError(f"config key '{key}' is {arch!r} but {SOURCES[source][0]} is not installed",
                          f"install it with {SOURCES[source][2]}")
    base = name.split(".", 1)[0] if source == "timm" else name  # timm names may carry a ".tag" of weights
    if base not in names:
        raise ConfigError(f"config key '{key}' has unknown {source} model '{name}'; "
                          f"valid ({len(names)} names) include: {', '.join(_close(base, names))}",
                          f"set {key} to {source}:NAME with a name from "
                          + ("torchvision.models.list_models()" if source == "torchvision" else "timm.list_models()"))


__all__ = ["SOURCES", "catalog", "check_arch", "split_arch"]
