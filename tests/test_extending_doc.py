"""docs/extending.md cannot rot: its python blocks run, in order, as one script (a fresh process, so the
names it registers do not leak into the registries other tests see)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the page's fenced ```python blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_page_covers_every_kind_of_extension() -> None:
    text = PAGE.read_text()
    for heading in ("## A dataset", "## A teacher", "## A student", "## A KD loss", "## A corruption", "## An attack"):
        assert heading in text
    assert len(python_blocks(text)) == 7


@pytest.mark.slow
def test_every_snippet_runs(tmp_path: Path) -> None:
    script = tmp_path / "extending.py"
    script.write_text("\n\n".join(python_blocks(PAGE.read_text())))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "EDGEKD_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "gate PASS" in proc.stdout
    assert (tmp_path / "runs" / "stripes" / "model.int8.onnx").is_file()
