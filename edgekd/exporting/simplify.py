"""onnxsim with guards: refuse a failed check, keep INT8 files int8, prove outputs unchanged."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ArtifactError
from ..io import atomic_path
from ..deploy.runtime.session import make_session
from ..deploy.onnx_io import input_shape, load_model, unique_node_names
from .qdq import int8_weight_stats


def _output_diff(a: onnx.ModelProto, b: onnx.ModelProto, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """(max |Δ|, max |output| of ``a``) over all outputs of the two models on the same random [0, 1] input."""
    x = np.random.default_rng(seed).random(input_shape(a, batch), dtype=np.float32)
    sa, sb = make_session(a.SerializeToString(), threads=1), make_session(b.SerializeToString(), threads=1)
    ya = sa.run(None, {sa.get_inputs()[0].name: x})
    yb = sb.run(None, {sb.get_inputs()[0].name: x})
    diff = max(float(np.max(np.abs(u.astype(np.float64) - v))) for u, v in zip(ya, yb))
    return diff, max(float(np.max(np.abs(u))) for u in ya)


def _is_int8(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def simplify(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], tol: float = 1e-5,
             rtol: float = 1e-5) -> dict[str, Any]:
    """Simplify ``in_path`` into ``out_path`` with onnxsim; returns what happened.

    onnxsim's ``check_ok`` False raises ``ArtifactError`` and writes nothing. Outputs of the
    simplified model must match the original on random inputs within ``tol + rtol * max|output|``
    (both run in onnxruntime, so only re-rounded folded constants differ: ~1e-7 of the outputs' scale;
    1e-5 leaves room, and any real rewrite error is orders larger). For QDQ files the
    simplified model must still store int8 weights and not be larger; otherwise the original is
    written to ``out_path`` and ``reason`` says so (``kept``: "original").
    """
    import onnxsim

    original = load_model(in_path)
    unique_node_names(original)  # a file from elsewhere may repeat names; onnxruntime would refuse it
    simplified, check_ok = onnxsim.simplify(original)
    unique_node_names(simplified)
    if not check_ok:
        raise ArtifactError(f"onnxsim could not validate the simplified {in_path} (check_ok=False)",
                            "set export.simplify: false, or report the model to onnxsim")
    diff, scale = _output_diff(original, simplified)
    allowed = tol + rtol * scale
    if not diff <= allowed:
        raise ArtifactError(f"onnxsim changed the outputs of {in_path}: max |Δ| {diff:.3g} > {allowed:.3g} "
                            f"(= {tol:g} + {rtol:g} x max|output| {scale:.4g})",
                            "set export.simplify: false for this model")
    before, after = original.ByteSize(), simplified.ByteSize()
    result: dict[str, Any] = {"nodes_before": len(original.graph.node), "nodes_after": len(simplified.graph.node),
                              "bytes_before": before, "bytes_after": after, "max_abs_diff": diff,
                              "kept": "simplified", "reason": "onnxsim check_ok, outputs equal"}
    keep = simplified
    if _is_int8(original):
        stats_in, stats_out = int8_weight_stats(original), int8_weight_stats(simplified)
        if stats_out["int8_initializers"] < stats_in["int8_initializers"] or stats_out["float_weight_initializers"] > 0:
            keep, result["reason"] = original, (
                f"kept the unsimplified file: onnxsim folded int8 weights to float "
                f"({stats_in['int8_initializers']} -> {stats_out['int8_initializers']} int8 initializers)")
        elif after > before:
            keep, result["reason"] = original, f"kept the unsimplified file: simplified is larger ({after} > {before} bytes)"
        result.update(int8_weight_stats(keep))
    if keep is original:
        result["kept"] = "original"
        with atomic_path(out_path) as tmp:
            shutil.copyfile(in_path, tmp)
    else:
        with atomic_path(out_path) as tmp:
            onnx.save(keep, str(tmp))
    result["nodes_after"] = len(keep.graph.node) if keep is original else result["nodes_after"]
    result["size_bytes"] = Path(out_path).stat().st_size
    return result
