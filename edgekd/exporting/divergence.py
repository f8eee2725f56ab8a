"""Find the first layer where an ONNX file stops computing what its torch model computes.

The ONNX file runs in onnxruntime at the optimization level the check stage measures with ("all"
by default), so an INT8 file runs as the fused int8 kernels (QLinearConv, QGemm, ...) a deployment
runs, not as the graph as written. Observing a tensor must not change what onnxruntime fuses:

- INT8 (QDQ) files: each Conv/Gemm layer is observed at its *output quantizer* (the QuantizeLinear
  after it, through a Relu/Clip). A new ``DequantizeLinear`` reads that int8 tensor and becomes a graph
  output; the fused kernel that writes the int8 tensor is untouched (its QuantizeLinear output still
  feeds the same nodes and is no graph output). The torch reference is the QAT model's activation
  fake quant at that point (the k-th activation quantizer is the k-th activation QuantizeLinear, as
  the exporter writes them). A layer with no output quantizer (the classifier) is observed at its output.
- FP32 files: every Conv/Gemm output is exposed; onnxruntime then skips the fusions that would hide
  it, which for float kernels changes rounding only. Torch: Conv/Linear outputs, a BatchNorm right
  after a conv taken with it (the exporter folds it into the Conv).

The k-th Conv/Linear call maps to the k-th Conv/Gemm node; the first with relative L2 error above
``threshold`` is named. The probe graph's logits are checked to equal the plain file's.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from ..errors import ArtifactError
from ..deploy.runtime.session import make_session
from .call_order import record_calls, run_with_hooks
from ..deploy.onnx_io import constants, load_model, unique_node_names

PASS_THROUGH = ("Relu", "Clip")  # fused into the int8 kernel before the output quantizer


def _torch_layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """(module name, output) per Conv/Linear call; a directly following BatchNorm's output replaces it."""
    records: list[list[Any]] = []  # [name, output as returned, copy]: a later in-place op may change the former
    hooks: list[tuple[nn.Module, Any]] = []

    def layer_hook(name: str):
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            records.append([name, out, out.detach().clone()])
        return hook

    def bn_hook(_m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        if records and inp[0] is records[-1][1]:
            records[-1][1:] = [out, out.detach().clone()]  # the ONNX Conv has this BN folded in

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append((mod, layer_hook(name)))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            hooks.append((mod, bn_hook))
    run_with_hooks(model, x, hooks)
    return [(name, copy.float().cpu().numpy()) for name, _, copy in records]


def _torch_quantizer_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Outputs of the QAT model's activation fake quants, in call order."""
    from ..quant import ActFakeQuant

    calls = record_calls(model, x, lambda m: isinstance(m, ActFakeQuant), keep_outputs=True)
    return [out.numpy() for _, _, out in calls]


def _activation_quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    consts = constants(model)
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts]


def _output_quantizer(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto | None:
    """The QuantizeLinear that quantizes ``node``'s output (directly or through one Relu/Clip chain)."""
    tensor = node.output[0]
    while len(consumers[tensor]) == 1 and consumers[tensor][0].op_type in PASS_THROUGH:
        tensor = consumers[tensor][0].output[0]
    return next((c for c in consumers[tensor] if c.op_type == "QuantizeLinear"), None)


def _probe(model: onnx.ModelProto, quantized: bool) -> tuple[onnx.ModelProto, list[tuple[str, str, int | None]]]:
    """A copy of ``model`` with one extra graph output per Conv/Gemm: (node name, probe tensor, quantizer index)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    unique_node_names(probe)  # a probe of a file with repeated node names must still load
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in probe.graph.node:
        for name in n.input:
            consumers[name].append(n)
    # keyed by output tensor name: protobuf wrappers are no stable identities
    q_by_out = {q.output[0]: j for j, q in enumerate(_activation_quantizers(probe))} if quantized else {}
    existing = {o.name for o in probe.graph.output}
    probes: list[tuple[str, str, int | None]] = []
    for k, n in enumerate([n for n in probe.graph.node if n.op_type in ("Conv", "Gemm")]):
        q = _output_quantizer(n, consumers) if quantized else None
        if q is not None:
            out = f"edgekd_probe_{k}"
            dq = helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:]], [out], name=f"edgekd_probe_dq_{k}")
            dq.attribute.extend(q.attribute)  # the same axis (per-tensor activations have none)
            probe.graph.node.append(dq)
            probes.append((n.name or n.output[0], out, q_by_out[q.output[0]]))
        else:
            out = n.output[0]
            probes.append((n.name or n.output[0], out, None))
        if out not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            existing.add(out)
    return probe, probes


def _onnx_probe_outputs(model: onnx.ModelProto, images: np.ndarray, optimization: str, quantized: bool
                        ) -> tuple[list[tuple[str, np.ndarray, int | None]], bool]:
    """Probed tensors per Conv/Gemm at ``optimization``, and whether the logits equal the unprobed file's."""
    probe, probes = _probe(model, quantized)
    feed_name = model.graph.input[0].name
    plain = make_session(model.SerializeToString(), threads=1, graph_optimization=optimization)
    sess = make_session(probe.SerializeToString(), threads=1, graph_optimization=optimization)
    logits_name = model.graph.output[0].name
    names = [logits_name] + [p[1] for p in probes]
    outs = sess.run(names, {feed_name: images})
    ref_logits = plain.run([logits_name], {feed_name: images})[0]
    same = bool(np.array_equal(outs[0], ref_logits))
    return [(name, o, j) for (name, _, j), o in zip(probes, outs[1:])], same


def find_divergence(torch_model: nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                    threshold: float = 0.05, max_images: int = 32, optimization: str = "all") -> dict[str, Any]:
    """Compare Conv/Linear layers one by one at onnxruntime level ``optimization``; name the first whose
    relative L2 error exceeds ``threshold``.

    Returns ``{"layer", "onnx_node", "index", "relative_error", "threshold", "optimization", "observed",
    "probe_kept_logits", "layers": [...], "summary"}``; ``layer`` is None when every layer agrees.
    ``observed`` is "output quantizers" (INT8 file) or "layer outputs" (FP32 file).
    """
    x = np.ascontiguousarray(images[:max_images], dtype=np.float32)
    device = next(torch_model.parameters()).device
    xt = torch.from_numpy(x).to(device)
    model = load_model(onnx_path)
    quantized = bool(_activation_quantizers(model))
    t_layers = _torch_layer_outputs(torch_model, xt)
    o_layers, same_logits = _onnx_probe_outputs(model, x, optimization, quantized)
    if len(t_layers) != len(o_layers):
        raise ArtifactError(f"cannot map layers: torch ran {len(t_layers)} Conv/Linear calls, the ONNX file has "
                            f"{len(o_layers)} Conv/Gemm nodes", "compare a file exported from this same model")
    t_quant = _torch_quantizer_outputs(torch_model, xt) if quantized else []
    n_q = len(_activation_quantizers(model))
    if quantized and len(t_quant) != n_q:
        raise ArtifactError(f"cannot map quantizers: torch ran {len(t_quant)} activation fake quants, the ONNX file "
                            f"has {n_q} activation QuantizeLinear nodes", "compare the QAT model the file was exported from")
    layers = []
    first = None
    for i, ((name, t), (node, o, j)) in enumerate(zip(t_layers, o_layers)):
        ref = t if j is None else t_quant[j]
        if ref.shape != o.shape:
            raise ArtifactError(f"layer {i} ({name} vs {node}) has shape {ref.shape} in torch, {o.shape} in ONNX",
                                "compare a file exported from this same model")
        rel = float(np.linalg.norm((o.astype(np.float64) - ref).ravel()) / (np.linalg.norm(ref.ravel()) + 1e-12))
        layers.append({"index": i, "layer": name, "onnx_node": node, "relative_error": rel,
                       "observed_at": "layer output" if j is None else "output quantizer"})
        if first is None and rel > threshold:
            first = layers[-1]
    common = {"threshold": threshold, "optimization": optimization, "probe_kept_logits": same_logits,
              "observed": "output quantizers" if quantized else "layer outputs", "layers": layers}
    where = f"onnxruntime optimization '{optimization}'" + (", int8 kernels as fused" if quantized else "")
    if first is None:
        summary = (f"all {len(layers)} Conv/Gemm layers agree within relative error {threshold:g} ({where}); the "
                   f"difference comes from elsewhere (ops between layers, or the inputs)")
        return {"layer": None, "onnx_node": None, "index": None, "relative_error": None, **common, "summary": summary}
    summary = (f"first diverging layer #{first['index']} '{first['layer']}' (ONNX node {first['onnx_node']}): "
               f"relative error {first['relative_error']:.3g} > {threshold:g} ({where})")
    return {**first, **common, "summary": summary}
