"""The quantized layers of a QDQ ONNX file, and variants of it with chosen layers in float or int8.

A *layer* is a Conv/Gemm node (the k-th of the graph; the exporter writes them in execution order,
so the k-th Conv/Gemm of ``model.int8.onnx`` and of ``model.fp32.onnx`` are the same layer). A layer
is *quantized* when its weight comes from a ``DequantizeLinear``; its quantizers are that weight
DequantizeLinear, its int32 bias DequantizeLinear and the QuantizeLinear -> DequantizeLinear pair on
its input. Activation quantizers on other ops (Add, pooling) belong to no layer and stay as they are.

- :func:`with_layers_float` edits the INT8 graph: the named layers compute in float with the FP32
  file's weights and bias (reading the dequantized input, as ``qat.keep_float`` exports a layer);
  everything else stays exactly as in the INT8 file.
- :func:`with_layers_quantized` edits the FP32 graph: the named layers get the INT8 file's input
  quantizer, int8 weights and int32 bias; everything else stays exactly as in the FP32 file.

With no layer named, each returns its source graph unchanged, so the variants' accuracies lie
between the two files' own. Imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ArtifactError, ConfigError
from .onnx_io import constants, producers

LAYER_OPS = ("Conv", "Gemm")
FILE_FIX = "pass the model.fp32.onnx and model.int8.onnx files of one run (edgekd export writes both)"


@dataclass(frozen=True)
class Layer:
    """One Conv/Gemm layer: its position among the graph's Conv/Gemm nodes, name and op type."""

    index: int
    name: str
    op_type: str


def layer_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv/Gemm nodes of ``model`` in graph (= execution) order."""
    return [n for n in model.graph.node if n.op_type in LAYER_OPS]


def _dq(prod: dict[str, onnx.NodeProto], tensor: str) -> onnx.NodeProto | None:
    node = prod.get(tensor)
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def quantized_layers(model: onnx.ModelProto) -> list[Layer]:
    """Every Conv/Gemm whose weight is dequantized from an integer tensor, in graph order."""
    prod = producers(model)
    return [Layer(i, n.name or n.output[0], n.op_type) for i, n in enumerate(layer_nodes(model))
            if len(n.input) > 1 and _dq(prod, n.input[1]) is not None]


def layer_names(model: onnx.ModelProto) -> list[str]:
    """Names of the quantized layers (what ``keep_float`` and ``edgekd sensitivity`` call them)."""
    return [layer.name for layer in quantized_layers(model)]


def _pairs(int8: onnx.ModelProto, fp32: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """The k-th Conv/Gemm of each file, checked to be the same op with the same weight shape."""
    a, b = layer_nodes(int8), layer_nodes(fp32)
    if len(a) != len(b):
        raise ArtifactError(f"the INT8 file has {len(a)} Conv/Gemm layers, the FP32 file {len(b)}: they are not "
                            "the same model", FILE_FIX)
    c8, c32 = constants(int8), constants(fp32)
    prod8 = producers(int8)
    for k, (n8, n32) in enumerate(zip(a, b)):
        dq = _dq(prod8, n8.input[1])
        w8 = c8.get(dq.input[0]) if dq is not None else c8.get(n8.input[1])
        w32 = c32.get(n32.input[1])
        if n8.op_type != n32.op_type or w8 is None or w32 is None or w8.shape != w32.shape:
            raise ArtifactError(f"layer #{k} is {n8.op_type} '{n8.name}' {getattr(w8, 'shape', None)} in the INT8 "
                                f"file but {n32.op_type} '{n32.name}' {getattr(w32, 'shape', None)} in the FP32 file",
                                FILE_FIX)
    return list(zip(a, b))


def resolve_names(model: onnx.ModelProto, names: Iterable[str]) -> set[str]:
    """``names`` checked against the quantized layers of ``model``; an unknown one raises ConfigError."""
    valid = layer_names(model)
    wanted = set(names)
    unknown = sorted(wanted - set(valid))
    if unknown:
        raise ConfigError(f"unknown layer name(s) {', '.join(repr(u) for u in unknown)}; valid: {', '.join(valid)}",
                          "use layer names as 'edgekd sensitivity RUN' lists them")
    return wanted


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (repeatedly), then initializers nothing reads (in place)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for n in model.graph.node for name in n.input} | outputs
        keep = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {name for n in model.graph.node for name in n.input} | outputs
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def with_layers_float(int8: onnx.ModelProto, fp32: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the INT8 graph where each named layer computes in float with the FP32 file's weights.

    Its weight and bias become the FP32 file's float initializers; it still reads the dequantized output
    of the quantizer before it, which stays (the layer before keeps its int8 kernel). That is how
    ``qat.keep_float`` exports a layer. The unused weight/bias DequantizeLinear nodes are pruned.
    """
    wanted = resolve_names(int8, names)
    out = _copy(int8)
    c32 = constants(fp32)
    pairs = _pairs(out, fp32)
    prod = producers(out)
    for n8, n32 in pairs:
        if (n8.name or n8.output[0]) not in wanted:
            continue
        tag = f"{n8.name or n8.output[0]}.float"
        out.graph.initializer.append(numpy_helper.from_array(c32[n32.input[1]], f"{tag}.weight"))
        n8.input[1] = f"{tag}.weight"
        if len(n32.input) > 2 and n32.input[2]:
            out.graph.initializer.append(numpy_helper.from_array(c32[n32.input[2]], f"{tag}.bias"))
            if len(n8.input) > 2:
                n8.input[2] = f"{tag}.bias"
            else:
                n8.input.append(f"{tag}.bias")
        elif len(n8.input) > 2:
            del n8.input[2:]
    shield_float_layers(out, wanted)  # else onnxruntime re-quantizes the float weights at load time
    prune(out)
    return out


def shield_float_layers(model: onnx.ModelProto, names: Iterable[str]) -> int:
    """Keep the named float Conv/Gemm layers float in onnxruntime (in place); returns how many were shielded.

    onnxruntime's ``WeightBiasQuantization`` pass (at session load) quantizes the float weights of a Conv/Gemm
    whose input comes straight from a per-tensor DequantizeLinear to *per-tensor* int8, so a layer kept in
    float would silently run as a worse int8 layer. Each named layer reads its input through a ``Clip`` to
    the range its quantizer can represent: the dequantized values already lie in it (an exact no-op), but
    the layer's input no longer comes from a DequantizeLinear. The layer before keeps its fused int8 kernel.
    """
    wanted = set(names)
    consts = constants(model)
    prod = producers(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        dq = _dq(prod, node.input[0]) if node.op_type in LAYER_OPS and (node.name or node.output[0]) in wanted else None
        scale = consts.get(dq.input[1]) if dq is not None else None
        if scale is not None and scale.size == 1:
            zp = consts[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.uint8)
            info = np.iinfo(zp.dtype)
            lo, hi = (np.float32(scale.reshape(())) * (np.float32(v) - np.float32(zp.reshape(()))) for v in (info.min, info.max))
            tag = f"{node.name or node.output[0]}.float_input"
            model.graph.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), f"{tag}.min"),
                                            numpy_helper.from_array(np.array(hi, np.float32), f"{tag}.max")])
            nodes.append(helper.make_node("Clip", [node.input[0], f"{tag}.min", f"{tag}.max"], [f"{tag}.out"],
                                          name=f"{tag}.Clip"))
            node.input[0] = f"{tag}.out"
            count += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _const_init(c: dict, name: str, new: str, out: onnx.ModelProto) -> str:
    out.graph.initializer.append(numpy_helper.from_array(c[name], new))
    return new


def with_layers_quantized(fp32: onnx.ModelProto, int8: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the FP32 graph where each named layer is quantized exactly as in the INT8 file.

    The layer's input gets the INT8 file's QuantizeLinear -> DequantizeLinear (same scales and zero
    points), its weight the file's int8 tensor and DequantizeLinear, its bias the file's int32 one.
    """
    wanted = resolve_names(int8, names)
    out = _copy(fp32)
    c8 = constants(int8)
    prod8 = producers(int8)
    int8_layers = [n8 for n8, _ in _pairs(int8, out)]
    nodes: list[onnx.NodeProto] = []
    k = 0
    for node in out.graph.node:
        if node.op_type in LAYER_OPS:
            n8 = int8_layers[k]
            k += 1
            if (n8.name or n8.output[0]) in wanted:
                nodes.extend(_quantizers_for(node, n8, c8, prod8, out))
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    prune(out)
    return out


def _clone_dq(src: onnx.NodeProto, data: str, c8: dict, tag: str, out: onnx.ModelProto) -> onnx.NodeProto:
    """A DequantizeLinear like ``src`` (same attributes, copied constants) reading ``data``."""
    ins = [data] + [_const_init(c8, name, f"{tag}.{i}", out) if name else "" for i, name in enumerate(src.input[1:], 1)]
    node = helper.make_node("DequantizeLinear", ins, [f"{tag}.out"], name=f"{tag}.DequantizeLinear")
    node.attribute.extend(src.attribute)
    return node


def _quantizers_for(node: onnx.NodeProto, n8: onnx.NodeProto, c8: dict, prod8: dict[str, onnx.NodeProto],
                    out: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The INT8 file's quantizers of layer ``n8``, rebuilt in ``out`` around its FP32 twin ``node`` (rewired)."""
    tag = n8.name or n8.output[0]
    new: list[onnx.NodeProto] = []
    dq_x = _dq(prod8, n8.input[0])
    q_x = prod8.get(dq_x.input[0]) if dq_x is not None else None
    if q_x is not None and q_x.op_type == "QuantizeLinear":
        q_ins = [node.input[0]] + [_const_init(c8, n, f"{tag}.xq.{i}", out) if n else ""
                                   for i, n in enumerate(q_x.input[1:], 1)]
        q = helper.make_node("QuantizeLinear", q_ins, [f"{tag}.xq.out"], name=f"{tag}.xq.QuantizeLinear")
        q.attribute.extend(q_x.attribute)
        dq = _clone_dq(dq_x, q.output[0], c8, f"{tag}.xdq", out)
        new += [q, dq]
        node.input[0] = dq.output[0]
    dq_w = _dq(prod8, n8.input[1])
    if dq_w is None or dq_w.input[0] not in c8:
        raise ArtifactError(f"layer '{tag}' has no int8 weight initializer in the INT8 file", FILE_FIX)
    wq = _const_init(c8, dq_w.input[0], f"{tag}.wq", out)
    new.append(_clone_dq(dq_w, wq, c8, f"{tag}.wdq", out))
    node.input[1] = new[-1].output[0]
    dq_b = _dq(prod8, n8.input[2]) if len(n8.input) > 2 and n8.input[2] else None
    if dq_b is not None and dq_b.input[0] in c8:
        bq = _const_init(c8, dq_b.input[0], f"{tag}.bq", out)
        new.append(_clone_dq(dq_b, bq, c8, f"{tag}.bdq", out))
        if len(node.input) > 2:
            node.input[2] = new[-1].output[0]
        else:
            node.input.append(new[-1].output[0])
    return new


def check_names_unique(layers: Sequence[Layer]) -> None:
    """Layer names must be unique to be named in a config (the exporter makes them so)."""
    seen: set[str] = set()
    for layer in layers:
        if layer.name in seen:
            raise ArtifactError(f"two quantized layers share the name '{layer.name}'", "re-export the run (edgekd export)")
        seen.add(layer.name)
