"""The docs name real modules: every ``edgekd/...`` path and every ``edgekd.x.y`` name in
docs/ARCHITECTURE.md and export/README.md exists (a module, a package, or an attribute of one)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("docs/ARCHITECTURE.md", "export/README.md")
PATH_RE = re.compile(r"(?<![\w./-])edgekd/[\w./*-]*")
DOTTED_RE = re.compile(r"(?<![\w./-])edgekd(?:\.[A-Za-z_]\w*)+")


def _is_module(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def missing_paths(text: str) -> list[str]:
    """``edgekd/...`` paths (files or folders; a trailing glob is dropped) that are not in the repository."""
    out = []
    for raw in PATH_RE.findall(text):
        path = raw.split("*")[0].rstrip("/.")
        if not (REPO / path).exists():
            out.append(raw)
    return out


def missing_names(text: str) -> list[str]:
    """``edgekd.x.y`` names whose longest module prefix is not followed by real attributes."""
    out = []
    for name in DOTTED_RE.findall(text):
        parts = name.split(".")
        k = max(i for i in range(1, len(parts) + 1) if _is_module(".".join(parts[:i])))
        obj = importlib.import_module(".".join(parts[:k]))
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                out.append(name)
                break
            obj = getattr(obj, attr)
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_path_named_in_the_docs_exists(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert not missing_paths(text), f"{doc} names paths that do not exist: {missing_paths(text)}"
    assert not missing_names(text), f"{doc} names modules that do not exist: {missing_names(text)}"


def test_architecture_names_the_two_sides_and_no_outside_files() -> None:
    text = (REPO / "docs/ARCHITECTURE.md").read_text()
    assert "edgekd/deploy/" in text and "edgekd/train/" in text
    assert "../" not in text  # nothing outside the repository


def test_the_check_catches_a_stale_name() -> None:
    stale = "See `edgekd/export_onnx.py`, `edgekd/runtime.py`, `edgekd.report`, `edgekd.deploy.gate.no_such_thing`."
    assert missing_paths(stale) == ["edgekd/export_onnx.py", "edgekd/runtime.py"]
    assert missing_names(stale) == ["edgekd.report", "edgekd.deploy.gate.no_such_thing"]
    assert not missing_paths("`edgekd/deploy/**` and `edgekd/train/engine.py`.")
    assert not missing_names("`python -m edgekd.deploy.gate`, `edgekd.run`, `edgekd.deploy.runtime.onnx_logits`")
