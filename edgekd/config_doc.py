"""The config reference (docs/config-reference.md), generated from the typed config in edgekd/config.py.

Every key's type and default come from the dataclasses (defaults from a default ``Config()``, so a
section such as ``distill.train`` shows its own defaults, not ``TrainConfig``'s); its description is
the comment that documents the field in config.py: the comment lines right above it and the
comment at the end of its line. The source is parsed with ``ast`` and ``tokenize``, so the comments
stay where a developer reads them and the reference cannot drift (tests/test_config_doc.py).

``python -m edgekd.config_doc`` prints the page; ``--write PATH`` writes it; ``--check PATH`` exits 1
when PATH is not what would be generated.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import yaml

from . import config as config_module
from .config import Config
from .io import atomic_write_text

REFERENCE = Path("docs") / "config-reference.md"  # relative to the repository root
HEADER = """\
# Config reference

Every key of an edgekd config, generated from the typed config (`edgekd/config.py`) by
`python -m edgekd.config_doc --write docs/config-reference.md`; do not edit by hand
(`tests/test_config_doc.py` fails when this page and the code disagree).

A config is YAML; a key left out keeps its default. Any key can be set on the command line too:
`edgekd run --set distill.temperature=2`. An unknown key or a wrong type fails at load, naming the key.
`null` means "not set". Defaults below are those of a config file that sets nothing; the built-in
configs (`edgekd run --config smoke`, ...) set some of them.
"""


def _comment_lines(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line (without '#')."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def field_docs(source: str | None = None) -> dict[tuple[str, str], str]:
    """``(class name, field name) -> description`` from the comments of the config source.

    A field's description is the block of comment-only lines directly above it followed by the
    comments on its own lines (a default spread over several lines may carry one on each).
    """
    source = Path(config_module.__file__).read_text() if source is None else source
    comments = _comment_lines(source)
    lines = source.splitlines()
    docs: dict[tuple[str, str], str] = {}
    for cls in (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above: list[str] = []
            i = stmt.lineno - 1  # 1-based line above the field
            while i >= 1 and lines[i - 1].strip().startswith("#"):
                above.insert(0, comments[i])
                i -= 1
            inline = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if n in comments]
            docs[(cls.name, stmt.target.id)] = " ".join(t for t in above + inline if t)
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A type as a config writer reads it: ``int``, ``float or null``, ``list of int``, ``section``."""
    inner, optional = _unwrap_optional(tp)
    if dataclasses.is_dataclass(inner):
        name = "section"
    elif typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        name = f"list of {type_name(item)}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def _default(value: Any) -> str:
    """A default in YAML flow style; floats to 6 significant digits (8/255 reads better than 17 digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


@dataclasses.dataclass
class Key:
    path: str  # e.g. data.augment.crop_padding
    type: str
    default: str
    doc: str


@dataclasses.dataclass
class SectionDoc:
    path: str  # "" for the top level
    cls: type
    doc: str  # the dataclass docstring
    keys: list[Key]
    when_set: bool = False  # an optional section: absent (null) unless the config sets it


def sections(cfg: Any = None, path: str = "", when_set: bool = False,
             docs: dict[tuple[str, str], str] | None = None) -> Iterator[SectionDoc]:
    """Every section of ``cfg`` (default: ``Config()``), depth first in field order, with its keys."""
    cfg = Config() if cfg is None else cfg
    docs = field_docs() if docs is None else docs
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    own = class_doc(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        full = f"{path}.{f.name}" if path else f.name
        value = getattr(cfg, f.name)
        inner, optional = _unwrap_optional(hints[f.name])
        doc = docs.get((cls.__name__, f.name), "")
        if dataclasses.is_dataclass(inner):
            doc = doc or class_doc(inner).split(". ")[0].rstrip(".") + "."
            doc = doc if not doc or doc.endswith(".") else doc + "."
            keys.append(Key(full, type_name(hints[f.name]), "null" if value is None else "see below",
                            f"{doc} See [{full}](#{_anchor(full)}).".strip()))
            nested.append((inner() if value is None else value, full, value is None))
        else:
            keys.append(Key(full, type_name(hints[f.name]), _default(value), doc))
    yield SectionDoc(path, cls, own, keys, when_set)
    for value, full, unset in nested:
        yield from sections(value, full, unset, docs)


def class_doc(cls: type) -> str:
    """A dataclass's docstring on one line; "" for the signature that @dataclass writes when there is none."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def _anchor(path: str) -> str:
    """GitHub's heading anchor of ``## `path` ``: lower case, dots and backticks dropped."""
    return path.replace(".", "").lower()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """The whole reference page."""
    out = [HEADER]
    for sec in sections():
        title = f"`{sec.path}`" if sec.path else "Top level"
        out += [f"## {title}", ""]
        if sec.when_set:
            out += [f"Not set by default (`{sec.path}: null`); when set, these keys apply.", ""]
        if sec.doc:
            out += [sec.doc, ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{k.path}` | {k.type} | `{_cell(k.default)}` | {_cell(k.doc)} |" for k in sec.keys]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def undocumented_keys() -> list[str]:
    """Keys whose field in config.py carries no comment (every key should say what it does)."""
    return [k.path for sec in sections() for k in sec.keys if not k.doc.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference; ``--write PATH`` writes it; ``--check PATH`` exits 1 when PATH differs."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = reference_markdown()
    if len(args) == 2 and args[0] == "--write":
        atomic_write_text(args[1], text)
        print(f"wrote {args[1]}")
        return 0
    if len(args) == 2 and args[0] == "--check":
        same = Path(args[1]).is_file() and Path(args[1]).read_text() == text
        if not same:
            print(f"{args[1]} is out of date: run python -m edgekd.config_doc --write {args[1]}", file=sys.stderr)
        return 0 if same else 1
    if args:
        print("usage: python -m edgekd.config_doc [--write PATH | --check PATH]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
