"""The report as data: sections of paragraphs, tables, images and preformatted text.

Section builders fill this model once; ``render_md`` and ``render_html`` only lay it out, so
both files always say the same thing. Number formatting lives here so every table agrees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

MISSING = "—"
MODEL_ORDER = ("teacher", "student_fp32", "student_int8")


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    path: Path  # absolute path of a PNG inside the run folder
    caption: str


@dataclass
class Code:
    text: str


Block = Union[Paragraph, Table, Image, Code]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section]
    run_dir: Path


# ----------------------------------------------------------------------------- formatting

def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def pct(x: Any) -> str:
    """A 0..1 fraction as '91.23 %'."""
    return f"{100.0 * x:.2f} %" if _is_num(x) else MISSING


def num(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _is_num(x) else MISSING


def mb(x: Any) -> str:
    return f"{x:.2f} MB" if _is_num(x) else MISSING


def ratio(a: Any, b: Any) -> str:
    """a / b as '×0.29'; missing or zero denominators give '—'."""
    return f"×{a / b:.2f}" if _is_num(a) and _is_num(b) and b else MISSING


def pp_delta(a: Any, b: Any) -> str:
    """Accuracy difference a - b in percentage points, signed."""
    return f"{100.0 * (a - b):+.2f} pp" if _is_num(a) and _is_num(b) else MISSING


def value(x: Any) -> str:
    """A generic manifest value: floats to 4 significant digits, ints with separators, the rest as text."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    if x is None:
        return MISSING
    return str(x)


def ordered_models(models: dict[str, Any]) -> list[str]:
    """Teacher, student fp32, student int8 first; any other measured model after, by name."""
    return [m for m in MODEL_ORDER if m in models] + sorted(m for m in models if m not in MODEL_ORDER)


def latency_entry(model: dict[str, Any], batch: int = 1, threads: int = 1) -> dict[str, Any] | None:
    """The latency record at (batch, threads), else None."""
    for rec in model.get("latency") or []:
        if rec.get("batch") == batch and rec.get("threads") == threads:
            return rec
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a nested dict as ('a.b', value); lists are summarized by length."""
    out: list[tuple[str, Any]] = []
    for k in sorted(d):
        v, key = d[k], f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        elif isinstance(v, list):
            scalars = all(_is_num(x) or isinstance(x, str) for x in v)
            out.append((key, ", ".join(value(x) for x in v) if scalars and len(v) <= 8 else f"[{len(v)} items]"))
        else:
            out.append((key, v))
    return out
