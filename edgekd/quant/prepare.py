"""Turn a ``Normalized`` float classifier into its QAT twin (``QATModel``) with torch.fx.

The rewrite, on a deep copy (the input model is never touched):
1. fold every BatchNorm into the conv that feeds it;
2. swap Conv2d / Linear for their per-channel int8 fake-quant-weight versions;
3. insert uint8 activation fake quant where onnxruntime's QDQ fusion wants it: after each
   activation (Conv+ReLU/ReLU6 fuse, and the Relu/Clip before Q is dropped), after convs/adds/
   pools/flatten/linear that feed anything but an activation, and before any compute op whose
   input is not quantized yet. The model input is quantized after normalization.
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Collection, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .modules import QConv2d, QLinear, fold_bn
from .observers import ActFakeQuant

RELU_MODULES = (nn.ReLU,)
RELU6_MODULES = (nn.ReLU6,)
RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
RELU6_FUNCS = {F.relu6}
# ops whose output gets its own quantization point (unless an activation consumes it)
QUANT_OUT_MODULES = (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d,
                     nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.Flatten)
QUANT_OUT_FUNCS = {operator.add, torch.add, operator.iadd, operator.mul, torch.mul, torch.cat,
                   F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, torch.flatten, F.hardswish,
                   F.hardsigmoid, torch.sigmoid}
QUANT_OUT_METHODS = {"flatten", "view", "reshape", "add", "mul", "mean"}
# identity at inference: they neither need nor break a quantization point
PASSTHROUGH_MODULES = (nn.Dropout, nn.Identity)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _act_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """'relu' / 'relu6' when ``node`` is such an activation, else None."""
    mod = _module(gm, node)
    if isinstance(mod, RELU6_MODULES) or (node.op == "call_function" and node.target in RELU6_FUNCS):
        return "relu6"
    if isinstance(mod, nn.Hardtanh) and mod.min_val == 0.0 and mod.max_val == 6.0:
        return "relu6"
    if isinstance(mod, RELU_MODULES) or (node.op == "call_function" and node.target in RELU_FUNCS):
        return "relu"
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _wants_out_quant(gm: fx.GraphModule, node: fx.Node) -> bool:
    mod = _module(gm, node)
    if mod is not None:
        return isinstance(mod, QUANT_OUT_MODULES)
    if node.op == "call_function":
        return node.target in QUANT_OUT_FUNCS
    return node.op == "call_method" and node.target in QUANT_OUT_METHODS


def _is_compute(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that must read quantized inputs for onnxruntime to run them in int8."""
    return _wants_out_quant(gm, node) and not isinstance(_module(gm, node), (nn.Flatten,)) \
        and node.target not in (torch.flatten, "flatten", "view", "reshape")


def _fold_batchnorms(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if type(conv) is not nn.Conv2d or len(src.users) != 1:
            raise ConfigError(
                f"BatchNorm '{node.target}' does not directly follow a conv, so it cannot be folded for QAT",
                "use a student whose BatchNorms each follow a Conv2d (MobileNetV2/V3, ResNet)")
        _set_module(gm, str(src.target), fold_bn(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _set_module(gm: fx.GraphModule, qualname: str, module: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, module)


def float_layer_names(gm: fx.GraphModule) -> list[str]:
    """Qualified names of the Conv2d/Linear modules of a BN-folded graph (what ``keep_float`` may name)."""
    return [name for name, mod in gm.named_modules() if type(mod) in (nn.Conv2d, nn.Linear)]


def _check_keep_float(gm: fx.GraphModule, keep_float: Collection[str]) -> None:
    valid = float_layer_names(gm)
    unknown = sorted(set(keep_float) - set(valid))
    if unknown:
        raise ConfigError(f"qat.keep_float names unknown layer(s) {', '.join(repr(u) for u in unknown)}; valid: "
                          f"{', '.join(valid)}", "use layer names as 'edgekd sensitivity RUN' prints them")


def _swap_weight_modules(gm: fx.GraphModule, keep_float: Collection[str] = ()) -> None:
    for name, mod in list(gm.named_modules()):
        if name in keep_float:
            continue  # mixed precision: trained and exported in float
        if type(mod) is nn.Conv2d:
            _set_module(gm, name, QConv2d.from_float(mod))
        elif type(mod) is nn.Linear:
            _set_module(gm, name, QLinear.from_float(mod))


class _Inserter:
    """Adds ``ActFakeQuant`` submodules after graph nodes, with deterministic names."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.count = 0
        self.quantized: set[fx.Node] = set()

    def after(self, node: fx.Node, kind: str) -> fx.Node:
        name = f"act_fq_{self.count}"
        self.count += 1
        self.gm.add_submodule(name, ActFakeQuant(kind))
        with self.gm.graph.inserting_after(node):
            fq = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(fq, delete_user_cb=lambda user: user is not fq)
        self.quantized.add(fq)
        return fq


def _insert_fake_quant(gm: fx.GraphModule, keep_float: Collection[str] = ()) -> int:
    ins = _Inserter(gm)
    for node in list(gm.graph.nodes):
        if node.op == "placeholder":
            ins.quantized.add(node)  # QATModel quantizes the normalized input (linked in QATModel)
            continue
        kind = _act_kind(gm, node)
        if kind is not None:
            ins.after(node, kind)
        elif _wants_out_quant(gm, node):
            users = list(node.users)
            if users and all(_act_kind(gm, u) is not None for u in users):
                continue  # the activation's quantization point covers it (fusion)
            ins.after(node, "any")
    # compute ops fed by a float tensor (through dropout/identity) get a quantization point
    for node in list(gm.graph.nodes):
        if node.op != "call_module" and node.op != "call_function" and node.op != "call_method":
            continue
        if not _is_compute(gm, node) or node in ins.quantized or _kept_float(node, keep_float):
            continue
        for arg in node.all_input_nodes:
            origin = arg
            while isinstance(_module(gm, origin), PASSTHROUGH_MODULES):
                origin = origin.args[0]
            if origin not in ins.quantized and origin.op != "get_attr":
                ins.after(origin, "any")
    _link_input_quantizers(gm)
    gm.graph.lint()
    gm.recompile()
    return ins.count


def _kept_float(node: fx.Node, keep_float: Collection[str]) -> bool:
    return node.op == "call_module" and str(node.target) in keep_float


def _link_input_quantizers(gm: fx.GraphModule) -> None:
    """Tell each QConv2d/QLinear which quantizer feeds it (its bias is rounded to that scale)."""
    for node in gm.graph.nodes:
        layer = _module(gm, node)
        if not isinstance(layer, (QConv2d, QLinear)):
            continue
        origin = node.args[0]
        while isinstance(_module(gm, origin), PASSTHROUGH_MODULES):
            origin = origin.args[0]
        fq = _module(gm, origin)
        if isinstance(fq, ActFakeQuant):
            layer.link_input_quant(fq)


def quantize_graph(net: nn.Module, keep_float: Collection[str] = ()) -> fx.GraphModule:
    """Trace ``net`` and apply BN folding, weight fake quant and activation fake quant.

    Layers named in ``keep_float`` (qualified Conv2d/Linear names of ``net``) stay float modules (float
    weights and bias); they read the dequantized output of the quantizer before them, which stays, so the
    layer before keeps its int8 kernel. An unknown name raises ConfigError listing the valid ones.
    """
    try:
        gm = fx.symbolic_trace(net)
    except Exception as exc:  # tracing errors are many types; report them as a config problem
        raise ConfigError(
            f"the student '{type(net).__name__}' cannot be traced by torch.fx for QAT: {exc}",
            "use a traceable student (mobilenet_v2, mobilenet_v3, resnet) or disable qat") from exc
    _fold_batchnorms(gm)
    gm.delete_all_unused_submodules()  # the folded BatchNorms must not linger in state_dict
    _check_keep_float(gm, keep_float)
    _swap_weight_modules(gm, keep_float)
    _insert_fake_quant(gm, keep_float)
    return gm


def iter_act_quant(model: nn.Module) -> Iterable[tuple[str, ActFakeQuant]]:
    """(qualified name, module) of every activation fake quant in ``model``."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, ActFakeQuant))


def deepcopy_model(model: nn.Module) -> Any:
    return copy.deepcopy(model)
