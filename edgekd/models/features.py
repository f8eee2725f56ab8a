"""Named intermediate features of a model, read through forward hooks that exist only while read.

Feature-based KD losses (FitNets hints, attention transfer) need the output of named layers of the
student and the teacher, e.g. ``net.layer2`` of a ResNet-18 teacher and ``net.features.6`` of a
MobileNetV2 student (names as ``model.named_modules()`` spells them). :func:`tap_features` registers
one forward hook per layer for the duration of a ``with`` block and removes them on exit, so no hook
(and no extra output) is ever attached to the module that is trained, saved or exported::

    with tap_features(student, ["net.features.6"]) as feats:
        logits = student(x)
    feats["net.features.6"]  # [B, C, H, W]

Quantization-aware students are ``torch.fx`` graphs (``edgekd.quant``): their container modules
(``features.6``) still exist by name but their ``forward`` is never called, because the graph calls
the leaf layers directly. :func:`resolve_tap` maps such a name onto the graph: the block's output is
the last graph node traced inside it (fx records ``nn_module_stack``), moved past the activation
fake quant that follows it, so a QAT student is tapped at the same place as its float twin.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import fx, nn

from ..errors import ConfigError


def _called_module(root: nn.Module, name: str) -> nn.Module:
    """The module whose output is the feature ``name`` of ``root`` (see the module docstring)."""
    try:
        module = root.get_submodule(name)
    except AttributeError:
        layers = [n for n, _ in root.named_modules() if n and n.count(".") <= 3]
        raise ConfigError(f"the model has no layer named '{name}'; layers include: {', '.join(layers[:40])}",
                          "name a layer as model.named_modules() spells it, e.g. net.layer2 or net.features.6") from None
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):  # the innermost fx graph above the named layer
        owner = root.get_submodule(".".join(parts[:i])) if i else root
        if isinstance(owner, fx.GraphModule):
            return _graph_output_module(owner, ".".join(parts[i:]), name)
    return module


def _graph_output_module(gm: fx.GraphModule, local: str, name: str) -> nn.Module:
    """The module computing the last node traced inside ``local`` in ``gm`` (past a trailing fake quant)."""
    def within(qualname: str) -> bool:
        return qualname == local or qualname.startswith(local + ".")

    inside = [n for n in gm.graph.nodes
              if (n.op == "call_module" and within(str(n.target)))
              or (n.op == "call_function" and any(within(k) for k in n.meta.get("nn_module_stack", {})))]
    if not inside:
        raise ConfigError(f"layer '{name}' is not called in the traced (QAT) model",
                          "pick a layer that the model's forward runs, e.g. a block of net.features")
    node = inside[-1]
    while True:  # step onto the fake quant that quantizes the block's output, as the INT8 model computes it
        users = list(node.users)
        nxt = users[0] if len(users) == 1 else None
        if nxt is None or nxt.op != "call_module" or nxt.meta.get("nn_module_stack"):
            break
        if type(gm.get_submodule(str(nxt.target))).__name__ != "ActFakeQuant":
            break
        node = nxt
    if node.op != "call_module":
        raise ConfigError(f"layer '{name}' ends in a function ({node.target}) that has no module to hook",
                          "pick a layer that ends in a module, e.g. a block whose output is quantized")
    return gm.get_submodule(str(node.target))


def resolve_tap(model: nn.Module, name: str) -> nn.Module:
    """The module of ``model`` to hook for the feature ``name``; a wrong name raises ConfigError listing layers."""
    return _called_module(model, name)


@contextlib.contextmanager
def tap_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict filled with the output of each named layer during the forward passes inside the block.

    A layer called more than once per forward (a shared ReLU) keeps its last output. The hooks are
    removed when the block exits, also on an exception.
    """
    feats: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def keep(_m: nn.Module, _args: tuple, out: torch.Tensor, _name: str = name) -> None:
                feats[_name] = out
            handles.append(resolve_tap(model, name).register_forward_hook(keep))
        yield feats
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def feature_shapes(model: nn.Module, names: Sequence[str], sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Shape ``[C, H, W]`` of each named feature for input ``sample``, from one eval-mode forward.

    Eval mode: the probe must not move BatchNorm statistics or quantization observers; the model's
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with tap_features(model, names) as feats:
            model(sample)
    finally:
        model.train(was_training)
    missing = [n for n in names if n not in feats]
    if missing:
        raise ConfigError(f"layers {missing} did not run in the model's forward", "pick layers the forward calls")
    return {n: tuple(feats[n].shape[1:]) for n in names}


def hooks_on(model: nn.Module) -> int:
    """How many forward (pre-)hooks are registered anywhere in ``model`` (tests: taps never leak)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
