"""Lay a report Document out as GitHub-flavoured Markdown (images as relative links into plots/)."""
from __future__ import annotations

import os

from .doc import Code, Document, Image, Paragraph, Table


def _cell(text: str) -> str:
    # a pipe or newline would break the table row
    return text.replace("|", "\\|").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines.append("| " + " | ".join(_cell(h) for h in t.header) + " |")
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return lines


def render_md(doc: Document) -> str:
    """The whole report as Markdown text."""
    out = [f"# {doc.title}", ""]
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Paragraph):
                out.append(b.text)
            elif isinstance(b, Table):
                out += _table(b)
            elif isinstance(b, Image):
                rel = os.path.relpath(b.path, doc.run_dir).replace(os.sep, "/")
                out.append(f"![{b.caption}]({rel})")
            elif isinstance(b, Code):
                out += ["```", b.text, "```"]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
