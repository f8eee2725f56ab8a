"""Post-processing of the exported QDQ graph, and the check that it carries the QAT scales.

The exporter writes weights as ``DequantizeLinear(QuantizeLinear(float_weight))`` with float
biases. We store int8 weights (``DequantizeLinear(int8_initializer)``, ~4x smaller) and int32
biases with scale ``input_scale * weight_scale`` (what onnxruntime's QDQ Conv/Gemm selectors
need to fuse into QLinearConv / QGemm). Rounding follows torch's fake quant (``x * (1/scale)``,
round half to even), so the int8 values are exactly the ones the QAT model computed with.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ArtifactError
from ..deploy.onnx_io import constants, consumers as _consumers, fresh_name, producers, tensor_names, unique_node_names


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _broadcast(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if scale.ndim == 0:
        return scale
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Drop ``Identity`` nodes that alias a constant (the exporter dedupes equal initializers so)."""
    consts = constants(model)
    graph_outputs = {o.name for o in model.graph.output}
    alias = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type == "Identity" and n.input[0] in consts and n.output[0] not in graph_outputs}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(alias)


def store_int8_weights(model: onnx.ModelProto) -> int:
    """Replace ``QuantizeLinear(float initializer)`` by a quantized initializer; returns how many."""
    inits = {t.name: t for t in model.graph.initializer}
    consts = constants(model)
    consumers = _consumers(model)
    removed: set[int] = set()
    taken = tensor_names(model)
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in inits:
            continue
        w = consts[q.input[0]].astype(np.float32)
        scale = consts[q.input[1]].astype(np.float32)
        zp = consts[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        axis = _attr(q, "axis", 1)
        info = np.iinfo(zp.dtype)
        inv = _broadcast(np.float32(1.0) / scale, w.ndim, axis)
        qw = np.clip(np.rint(w * inv) + _broadcast(zp.astype(np.int64), w.ndim, axis), info.min, info.max)
        # The exporter de-duplicates equal constants (e.g. two all-zero folded weights of zero-init
        # residual blocks), so one float initializer can feed several QuantizeLinear: one name each.
        qname = fresh_name(f"{q.input[0]}_quantized", taken)
        model.graph.initializer.append(numpy_helper.from_array(qw.astype(zp.dtype), qname))
        for dq in consumers[q.output[0]]:
            if dq.op_type != "DequantizeLinear":
                raise ArtifactError(f"quantized weight {q.output[0]} feeds a {dq.op_type}, not a DequantizeLinear",
                                    "the QDQ export is malformed; re-export the QAT model")
            dq.input[0] = qname
        removed.add(id(q))
    keep = [n for n in model.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _remove_unused_initializers(model)
    return len(removed)


INT32 = np.iinfo(np.int32)


def int32_bias(bias: np.ndarray, b_scale: np.ndarray) -> tuple[np.ndarray, int]:
    """``round(bias / b_scale)`` saturated to int32, and how many values saturated.

    In float64: the float32 bound ``2**31 - 1`` rounds up to ``2**31``, which wraps to ``-2**31`` in the
    cast, so a saturating positive bias would flip sign. A bias saturates when its channel's weights are
    (nearly) all zero, their scale at its floor (a zero-initialised residual branch barely trained).
    """
    q = np.rint(bias.astype(np.float64) / b_scale.astype(np.float64))
    saturated = int(np.count_nonzero((q > INT32.max) | (q < INT32.min)))
    return np.clip(q, INT32.min, INT32.max).astype(np.int32), saturated


def quantize_biases(model: onnx.ModelProto) -> tuple[int, int]:
    """Conv/Gemm float bias initializers -> int32 + ``DequantizeLinear`` (scale = x_scale * w_scale).

    Returns (biases quantized, values saturated at the int32 range).
    """
    consts = constants(model)
    prod = producers(model)
    new_nodes: list[onnx.NodeProto] = []
    count = saturated = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in consts:
            dq_x, dq_w = prod.get(node.input[0]), prod.get(node.input[1])
            if dq_x is not None and dq_w is not None and dq_x.op_type == dq_w.op_type == "DequantizeLinear":
                x_scale = consts[dq_x.input[1]].astype(np.float32)
                w_scale = consts[dq_w.input[1]].astype(np.float32)
                b_scale = (x_scale * w_scale).astype(np.float32).reshape(-1)
                bias = consts[node.input[2]].astype(np.float32).reshape(-1)
                qb, n_sat = int32_bias(bias, b_scale)
                saturated += n_sat
                base = node.name.strip("/").replace("/", "_") or node.output[0]
                qname, sname, out = f"{base}_bias_quantized", f"{base}_bias_scale", f"{base}_bias_dq"
                model.graph.initializer.extend([numpy_helper.from_array(qb, qname),
                                                numpy_helper.from_array(b_scale, sname)])
                new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname], [out],
                                                  name=f"{base}_bias_DequantizeLinear", axis=0))
                node.input[2] = out
                count += 1
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _remove_unused_initializers(model)
    return count, saturated


def name_weight_layers(model: onnx.ModelProto, layer_names: Sequence[str]) -> int:
    """Name the k-th Conv/Gemm node after the k-th Conv/Linear call of the torch model (its module name).

    The TorchScript exporter derives a node's scope from the module's *unqualified* name
    (``features.2.conv.0.0`` -> ``conv.0.0``) under its calling module. An fx-rewritten QAT model calls
    every layer straight from its GraphModule, so dozens of layers share a handful of scopes and the
    names are only as unique as the exporter's de-duplication makes them (torch 2.11 on a GPU
    machine emitted two "/net/features.0.0/Conv"). The module's qualified name is unique by
    construction and says which layer it is. Nothing is renamed when the counts differ.
    """
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    if len(nodes) != len(layer_names):
        return 0
    for node, name in zip(nodes, _without_common_prefix(layer_names)):
        node.name = name  # the op type is the node's op_type; a short name keeps the int8 file small
    return len(nodes)


def _without_common_prefix(names: Sequence[str]) -> list[str]:
    """Drop the first atom when every name shares it ("net." of a QATModel): it names no layer and costs bytes."""
    parts = [n.split(".") for n in names]
    shared = len(parts) > 1 and all(len(p) > 1 and p[0] == parts[0][0] for p in parts)
    return [".".join(p[1:] if shared else p) for p in parts]


def postprocess_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """The exporter's QDQ graph -> int8 weights and int32 biases, every node uniquely named (in place).

    Names are made unique first: the int32 bias tensors are named after their Conv/Gemm node, so two
    nodes sharing a name would otherwise also share (and overwrite) bias initializers.
    """
    renamed = unique_node_names(model)
    identities = inline_constant_identities(model)
    weights = store_int8_weights(model)
    biases, saturated = quantize_biases(model)
    return {"nodes_renamed": renamed, "identities_inlined": identities, "int8_weights": weights, "int32_biases": biases,
            "int32_bias_values_saturated": saturated}


def activation_qparams(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(node name, scale, zero point) of each activation QuantizeLinear, in graph (= execution) order."""
    consts = constants(model)
    return [(n.name, consts[n.input[1]], consts[n.input[2]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in consts]


def weight_scales(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """(node name, weight scale) of each Conv/Gemm fed by a DequantizeLinear, in graph order."""
    consts = constants(model)
    prod = producers(model)
    out = []
    for n in model.graph.node:
        dq = prod.get(n.input[1]) if n.op_type in ("Conv", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            out.append((n.name, consts[dq.input[1]]))
    return out


def verify_scales(model: onnx.ModelProto, act: Sequence[tuple[str, np.ndarray, np.ndarray]],
                  weights: Sequence[tuple[str, np.ndarray]]) -> int:
    """The file's activation (scale, zero point) and weight scales equal the QAT model's, in order.

    ``act`` / ``weights`` list the QAT quantizers in execution order (name, scale[, zero point]);
    the exporter writes nodes in that same order. Any mismatch raises ``ArtifactError``.
    """
    file_act, file_w = activation_qparams(model), weight_scales(model)
    problems = []
    if len(file_act) != len(act) or len(file_w) != len(weights):
        problems.append(f"the file has {len(file_act)} activation and {len(file_w)} weight quantizers, "
                        f"the QAT model {len(act)} and {len(weights)}")
    for (node, f_scale, f_zp), (name, scale, zp) in zip(file_act, act):
        if not (np.array_equal(np.float32(f_scale), np.float32(scale)) and int(f_zp) == int(zp)):
            problems.append(f"{name} ({node}): file scale {float(f_scale):.8g} zp {int(f_zp)} != QAT {float(scale):.8g} zp {int(zp)}")
    for (node, f_scale), (name, scale) in zip(file_w, weights):
        if not np.array_equal(np.asarray(f_scale, np.float32).reshape(-1), np.asarray(scale, np.float32).reshape(-1)):
            problems.append(f"{name} ({node}): weight scales differ")
    if problems:
        raise ArtifactError("the INT8 file does not carry the QAT scales: " + "; ".join(problems[:5]),
                            "re-export from the frozen QAT model; do not re-quantize the file")
    return len(act) + len(weights)


def int8_weight_stats(model: onnx.ModelProto) -> dict[str, int]:
    """Counts that prove the weights are stored quantized: int8 initializers, float weights feeding Conv/Gemm."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    int8 = sum(1 for a in inits.values() if a.dtype in (np.int8, np.uint8) and a.size > 1)
    float_weights = sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm")
                        and n.input[1] in inits and inits[n.input[1]].dtype == np.float32)
    return {"int8_initializers": int8, "float_weight_initializers": float_weights}


def compact_names(model: onnx.ModelProto) -> int:
    """Shorten internal tensor names and drop Q/DQ node names; returns bytes saved.

    A QDQ graph has ~4x the nodes of its float twin, and the exporter's scope names
    ("/net/features.3/conv/conv.0/conv.0.0/QuantizeLinear_output_0") cost ~8 % of an INT8 file
    — weight bytes a device does not need. Graph inputs/outputs keep their names (the device
    contract), and compute nodes and int8 weights keep theirs so a layer can still be named.
    """
    before = model.ByteSize()
    keep = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    # int8 weight tensors keep their layer names: what a reader (or a test) looks a layer up by
    keep |= {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1}
    rename: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return rename.setdefault(name, f"t{len(rename)}")

    for init in model.graph.initializer:
        init.name = short(init.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
        node.doc_string = ""
    del model.graph.value_info[:]  # stale after renaming; shape inference re-derives it
    return before - model.ByteSize()
