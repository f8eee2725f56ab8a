"""Find the first layer where an ONNX file stops computing what its torch model computes.

Torch side: forward hooks on Conv2d/Linear modules (a BatchNorm right after a conv is taken
with it, since the exporter folds it into the ONNX Conv). ONNX side: every Conv/Gemm output is
exposed as an extra graph output and run in onnxruntime without graph optimizations (the graph
as written). The k-th Conv/Linear call maps to the k-th Conv/Gemm node (the exporter writes
nodes in execution order); the first with relative L2 error above ``threshold`` is named.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ArtifactError
from ..deploy.runtime.session import make_session
from .call_order import run_with_hooks
from ..deploy.onnx_io import load_model, unique_node_names


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


def _onnx_layer_outputs(model: onnx.ModelProto, images: np.ndarray) -> list[tuple[str, np.ndarray]]:
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    unique_node_names(probe)  # a probe of a file with repeated node names must still load
    existing = {o.name for o in probe.graph.output}
    for n in nodes:
        if n.output[0] not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None))
    sess = make_session(probe.SerializeToString(), threads=1, graph_optimization="none")
    outs = sess.run([n.output[0] for n in nodes], {sess.get_inputs()[0].name: images})
    return [(n.name or n.output[0], o) for n, o in zip(nodes, outs)]


def find_divergence(torch_model: nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                    threshold: float = 0.05, max_images: int = 32) -> dict[str, Any]:
    """Compare Conv/Linear outputs layer by layer; name the first whose relative error > ``threshold``.

    Returns ``{"layer", "onnx_node", "index", "relative_error", "threshold", "layers": [...], "summary"}``;
    ``layer`` is None when every layer is within the threshold.
    """
    x = np.ascontiguousarray(images[:max_images], dtype=np.float32)
    device = next(torch_model.parameters()).device
    t_layers = _torch_layer_outputs(torch_model, torch.from_numpy(x).to(device))
    o_layers = _onnx_layer_outputs(load_model(onnx_path), x)
    if len(t_layers) != len(o_layers):
        raise ArtifactError(f"cannot map layers: torch ran {len(t_layers)} Conv/Linear calls, the ONNX file has "
                            f"{len(o_layers)} Conv/Gemm nodes", "compare a file exported from this same model")
    layers = []
    first = None
    for i, ((name, t), (node, o)) in enumerate(zip(t_layers, o_layers)):
        if t.shape != o.shape:
            raise ArtifactError(f"layer {i} ({name} vs {node}) has shape {t.shape} in torch, {o.shape} in ONNX",
                                "compare a file exported from this same model")
        rel = float(np.linalg.norm((o.astype(np.float64) - t).ravel()) / (np.linalg.norm(t.ravel()) + 1e-12))
        layers.append({"index": i, "layer": name, "onnx_node": node, "relative_error": rel})
        if first is None and rel > threshold:
            first = layers[-1]
    if first is None:
        summary = (f"all {len(layers)} Conv/Gemm layers agree within relative error {threshold:g}; the difference "
                   f"comes from elsewhere (int8 kernels after fusion, or ops between layers)")
        return {"layer": None, "onnx_node": None, "index": None, "relative_error": None, "threshold": threshold,
                "layers": layers, "summary": summary}
    summary = (f"first diverging layer #{first['index']} '{first['layer']}' (ONNX node {first['onnx_node']}): "
               f"relative error {first['relative_error']:.3g} > {threshold:g}")
    return {**first, "threshold": threshold, "layers": layers, "summary": summary}
