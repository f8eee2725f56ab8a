"""Reading, checking and inspecting ONNX files (no torch): readable errors instead of protobuf tracebacks.

``load_model`` is the one ONNX model loader: the exporter (``edgekd.exporting``), the doctor and the
report read files through it, so every damaged file gets the same ``ArtifactError``.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ArtifactError

# The node that ends a temperature-scaled file (export.temperature_scaling; edgekd.exporting.temperature).
TEMPERATURE_NODE = "temperature_scaling"
# Cast targets that :func:`constants` folds: the ONNX types numpy represents exactly.
NUMPY_CASTS = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
               onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT32: np.int32,
               onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
               onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_}


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file; a missing, empty, truncated or non-ONNX file raises ``ArtifactError``."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"ONNX file {p} does not exist",
                            "pass the path of an exported .onnx file or a run folder, "
                            "or run the export stage (edgekd run --stages export)")
    size = p.stat().st_size
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends: report them as a damaged file
        raise ArtifactError(f"ONNX file {p} ({size} bytes) is not a readable ONNX model (truncated, or not ONNX): {exc}",
                            "re-run the export stage to rewrite the file") from exc
    if len(model.graph.node) == 0:
        raise ArtifactError(f"ONNX file {p} ({size} bytes) holds no graph nodes (truncated or empty file)",
                            "re-run the export stage to rewrite the file")
    return model


def check_onnx_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """``onnx.checker`` (full check) plus strict shape inference; failures raise ``ArtifactError``."""
    model = load_model(path)
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # checker / inference raise several error types; all mean an invalid model
        raise ArtifactError(f"ONNX file {path} is not a valid model: {str(exc).strip()[:2000]}",
                            "re-export it; if it persists, the exporter produced an invalid graph (report a bug)") from exc
    return model


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (sorted by name)."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer and ``Constant`` node output, by tensor name, and every ``Mul``, ``Cast`` or ``Identity`` of them.

    The INT8 exporter stores an int32 bias's scale as ``Mul(input_scale, weight_scale)``, narrow biases
    as ``Cast(int16 -> int32)`` and weight scales as ``Mul(Cast(float16 -> float), factor)``
    (``edgekd.exporting.slim``); numpy's float32 results are the ones onnxruntime folds at load time.
    """
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Mul" and len(node.input) == 2 and all(i in out for i in node.input):
            out[node.output[0]] = np.multiply(out[node.input[0]], out[node.input[1]])
        elif node.op_type == "Cast" and node.input and node.input[0] in out:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in NUMPY_CASTS:  # bfloat16 / float8 have no exact numpy twin: not folded, so not a constant here
                out[node.output[0]] = out[node.input[0]].astype(NUMPY_CASTS[to])
        elif node.op_type == "Identity" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def logits_tensors(model: onnx.ModelProto) -> set[str]:
    """The graph outputs, plus the unscaled logits a temperature-scaled file multiplies into them.

    In such a file the last int8 kernel's DequantizeLinear feeds the ``temperature_scaling`` Mul, not
    the output; for the doctor it is still where the logits leave the int8 graph.
    """
    outputs = {o.name for o in model.graph.output}
    return outputs | {i for n in model.graph.node if n.name == TEMPERATURE_NODE for i in n.input[:1]}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> node that produces it."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes that read it, in graph order (a name nobody reads gives [])."""
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of the graph: initializers, graph inputs and node outputs."""
    return ({t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
            | {o for n in model.graph.node for o in n.output})


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, else ``base_1``, ``base_2`` ... whichever is not in ``taken``; the result is added to it.

    Rewrites name new tensors after the one they derive from, but exporters de-duplicate equal
    constants, so one initializer can be the source of several new tensors.
    """
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def unique_node_names(model: onnx.ModelProto) -> int:
    """Give every named node a name no other node has (``name``, ``name_1``, ...); returns how many were renamed.

    ONNX requires unique node names and onnxruntime refuses a graph with two equal ones
    ("two nodes with same node name"). Exporters and graph rewrites can repeat a scope-derived name,
    so every export passes through here. Empty names are left empty (ORT accepts those).
    """
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    renamed = 0
    for node in model.graph.node:
        if not node.name:
            continue
        if node.name in seen:
            node.name = fresh_name(node.name, taken)  # taken holds node.name: the first free name_k
            renamed += 1
        seen.add(node.name)
    return renamed


def initializer_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializers of each numpy dtype name."""
    return dict(Counter(str(numpy_helper.to_array(t).dtype) for t in model.graph.initializer))


def set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into ``metadata_props`` (non-strings are JSON-encoded); replaces existing keys."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=str(key), value=text)


def get_metadata(model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, str]:
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else load_model(model_or_path)
    return {p.key: p.value for p in model.metadata_props}


def input_shape(model: onnx.ModelProto, batch: int) -> list[int]:
    """The first input's shape with the (dynamic) batch dimension set to ``batch``."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    if any(s <= 0 for s in shape[1:]):
        raise ArtifactError(f"input '{model.graph.input[0].name}' has a non-batch dynamic dimension {shape}",
                            "export with fixed channel/height/width dimensions")
    return [batch] + shape[1:]
