"""FP32 and INT8 (QDQ) ONNX export with metadata, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch

from ..errors import ArtifactError
from ..io import atomic_path
from .call_order import is_weight_layer, record_calls
from ..deploy.qdq_layers import shield_float_layers
from ..deploy.onnx_io import check_onnx_model, initializer_dtypes, op_counts, set_metadata, unique_node_names
from .qdq import (compact_names, inline_constant_identities, int8_weight_stats, name_weight_layers, postprocess_qdq,
                  verify_scales)
from .slim import slim_int8
from .torch_export import INPUT_NAME, OUTPUT_NAME, sample_input, to_onnx


def default_metadata(sample_shape: Sequence[int], labels: Sequence[str] | None = None) -> dict[str, str]:
    """The deployment contract written into every file: names, labels, preprocessing."""
    _, c, h, w = (int(s) for s in sample_shape)
    meta = {
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "preprocessing": json.dumps({"layout": "NCHW", "dtype": "float32", "range": [0, 1], "size": [h, w],
                                     "channels": c, "normalization": "inside the graph"}, sort_keys=True),
    }
    if labels is not None:
        meta["labels"] = json.dumps(list(labels))
    return meta


def _shape_of(sample: "Sequence[int] | torch.Tensor") -> tuple[int, ...]:
    return tuple(sample.shape) if isinstance(sample, torch.Tensor) else tuple(int(s) for s in sample)


def _save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write atomically, then re-read and check the written file (so a bad graph never stays)."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        check_onnx_model(tmp)
    return Path(path)


def export_fp32(model: torch.nn.Module, path: str | os.PathLike[str], sample_shape: "Sequence[int] | torch.Tensor",
                opset: int = 17, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export a float model (``Normalized``: [0, 1] pixels in, logits out) to ``path``.

    Input "pixels" float32 NCHW with a dynamic batch axis, output "logits"; the normalization is
    in the graph. ``metadata`` is merged over :func:`default_metadata` into ``metadata_props``.
    Returns ``{"path", "size_bytes", "ops"}``.
    """
    shape = _shape_of(sample_shape)
    onx = to_onnx(model, sample_shape, opset)
    inline_constant_identities(onx)
    set_metadata(onx, {**default_metadata(shape), "precision": "fp32", **dict(metadata or {})})
    out = _save(onx, path)
    return {"path": str(out), "size_bytes": out.stat().st_size, "ops": op_counts(onx)}


def qat_quantizers(qat_model: torch.nn.Module, sample: torch.Tensor) -> tuple[list, list]:
    """The QAT model's activation (name, scale, zero point) and weight (name, w_scale) in call order."""
    from ..quant import ActFakeQuant

    device = next(qat_model.parameters()).device
    calls = record_calls(qat_model, sample.to(device), lambda m: isinstance(m, ActFakeQuant) or is_weight_layer(m))
    act = [(n, m.scale.detach().cpu().numpy(), m.zero_point.detach().cpu().numpy())
           for n, m, _ in calls if isinstance(m, ActFakeQuant)]
    weights = [(n, m.w_scale.detach().cpu().numpy()) for n, m, _ in calls if is_weight_layer(m) and hasattr(m, "w_scale")]
    return act, weights


def weight_layer_calls(qat_model: torch.nn.Module, sample: torch.Tensor) -> list[tuple[str, bool]]:
    """(name, quantized) of every Conv/Linear call in order; unquantized = kept float (``qat.keep_float``)."""
    device = next(qat_model.parameters()).device
    return [(n, hasattr(m, "w_scale")) for n, m, _ in record_calls(qat_model, sample.to(device), is_weight_layer)]


def export_int8(qat_model: torch.nn.Module, path: str | os.PathLike[str],
                sample_shape: "Sequence[int] | torch.Tensor", opset: int = 17,
                metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export a frozen ``QATModel`` to a QDQ ONNX file with int8 weights and int32 biases.

    The activation scales/zero points are the QAT observers' (frozen) buffers and the weight
    scales the QAT per-channel ``max|w|/127``; the written file is checked to carry exactly
    them (``ArtifactError`` otherwise). Nothing is recalibrated. Returns a summary dict.
    """
    unfrozen = [n for n, m in qat_model.named_modules() if hasattr(m, "frozen") and not m.frozen]
    if unfrozen:
        raise ArtifactError(f"{len(unfrozen)} activation observers are not frozen (e.g. {unfrozen[0]})",
                            "call edgekd.quant.freeze_observers(model) after QAT, before export")
    if hasattr(qat_model, "sync_weight_scales"):
        qat_model.sync_weight_scales()
    shape = _shape_of(sample_shape)
    onx = to_onnx(qat_model, sample_shape, opset)
    act, weights = qat_quantizers(qat_model, sample_input(sample_shape))
    layers = weight_layer_calls(qat_model, sample_input(sample_shape))
    name_weight_layers(onx, [name for name, _ in layers])  # unique by construction (see its docstring)
    nodes = [n.name for n in onx.graph.node if n.op_type in ("Conv", "Gemm")]  # named as sensitivity.json names them
    kept_float = [node for node, (_, quantized) in zip(nodes, layers) if not quantized]
    post = postprocess_qdq(onx)
    n_scales = verify_scales(onx, act, weights)
    stats = int8_weight_stats(onx)
    if stats["float_weight_initializers"] != len(kept_float):
        raise ArtifactError(f"{stats['float_weight_initializers']} Conv/Gemm read float weights after quantization, "
                            f"but {len(kept_float)} layers are kept float (qat.keep_float)",
                            "every other Conv/Linear of the QAT model must be a QConv2d/QLinear; re-run prepare_qat")
    shield_float_layers(onx, kept_float)  # else onnxruntime re-quantizes their weights per tensor at load time
    slimmed = slim_int8(onx)  # exact rewrites (zero points, derived bias scales, redundant Clips, narrow storage): see .slim
    verify_scales(onx, act, weights)  # again: the narrow storage must give back exactly the scales QAT used
    set_metadata(onx, {**default_metadata(shape), "precision": "int8-qdq",
                       "quantization": json.dumps({"weights": "int8 per-channel symmetric",
                                                   "activations": "uint8 per-tensor affine (QAT, frozen)",
                                                   "float_layers": kept_float}),
                       **dict(metadata or {})})
    names_saved = compact_names(onx)
    post["nodes_renamed"] += unique_node_names(onx)  # again after every rewrite: whatever a pass emitted
    out = _save(onx, path)
    return {"path": str(out), "size_bytes": out.stat().st_size, "ops": op_counts(onx),
            "int8_weights": post["int8_weights"], "int32_biases": post["int32_biases"], "scales_verified": n_scales,
            # a saturated bias differs from the QAT model's float one: the parity check measures the effect
            "int32_bias_values_saturated": post["int32_bias_values_saturated"],
            "name_bytes_saved": names_saved, "nodes_renamed": post["nodes_renamed"], "slimmed": slimmed,
            "initializer_dtypes": initializer_dtypes(onx), **stats}


__all__ = ["default_metadata", "export_fp32", "export_int8", "qat_quantizers", "sample_input"]
