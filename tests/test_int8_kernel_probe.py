"""benchmarks/int8_kernel_probe.py times what it claims: the quantized chain runs as fused QLinearConv
kernels and computes the float chain's function (up to its quantization error); a short real probe run
writes one row per layer shape."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("int8_kernel_probe", ROOT / "benchmarks" / "int8_kernel_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


@pytest.mark.parametrize("kind, c, hw", [("pointwise", 16, 7), ("depthwise", 48, 4)])
def test_the_quantized_chain_is_fused_and_computes_the_float_chain(tmp_path, kind, c, hw):
    assert probe.fused_ops(kind, c, hw, tmp_path)["QLinearConv"] == 3
    x = np.random.default_rng(0).random((1, c, hw, hw), dtype=np.float32)
    ref = probe.session(probe.chain(3, kind, c, hw, False)).run(None, {"x": x})[0]
    q = probe.session(probe.chain(3, kind, c, hw, True)).run(None, {"x": x})[0]
    # one activation step (ACT_SCALE) per layer bounds the rounding of three requantizations plus the input's,
    # and the weights' rounding adds at most a few more; relative to the output's own scale it stays small
    assert np.abs(q - ref).max() <= 6 * probe.ACT_SCALE
    assert np.abs(q - ref).mean() <= 0.1 * np.abs(ref).mean() + probe.ACT_SCALE
    assert np.abs(ref).max() > 10 * probe.ACT_SCALE  # the chain did not collapse to zeros


def test_a_short_probe_writes_a_row_per_shape(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "int8_kernel_probe.py"), "--layers", "2",
                           "--runs", "20", "--out", str(tmp_path), "--name", "p"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [(r["kind"], r["channels"], r["size"]) for r in rows] == probe.SHAPES
    assert all(np.isfinite(r["ratio"]) for r in rows)
    assert "| depthwise | 480 | 2×2 |" in (tmp_path / "p.md").read_text()
