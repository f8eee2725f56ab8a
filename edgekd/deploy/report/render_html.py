"""Lay a report Document out as one self-contained HTML file: inline CSS, PNGs embedded as base64."""
from __future__ import annotations

import base64
from html import escape

from .doc import Code, Document, Image, Paragraph, Table

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f0f0f0; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { font-style: italic; color: #555; }
"""


def _table(t: Table) -> str:
    cap = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(b: Image) -> str:
    data = base64.b64encode(b.path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{escape(b.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(b.caption)}</figcaption></figure>")


def render_html(doc: Document) -> str:
    """The whole report as one HTML page; every text from the manifest is escaped."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body>", f"<h1>{escape(doc.title)}</h1>"]
    for sec in doc.sections:
        parts.append(f"<section><h2>{escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Paragraph):
                parts.append(f"<p>{escape(b.text)}</p>")
            elif isinstance(b, Table):
                parts.append(_table(b))
            elif isinstance(b, Image):
                parts.append(_image(b))
            elif isinstance(b, Code):
                parts.append(f"<pre>{escape(b.text)}</pre>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
