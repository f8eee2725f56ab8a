"""Classifiers from outside edgekd: ``torchvision:NAME``, ``timm:NAME`` (the ``timm`` extra) and ``torchscript:PATH``.

``build_external(cfg, spec) -> (net, weights_loaded)``. torchvision and timm models are built as
published (3 channels, 1000 classes), given their published weights when ``cfg.weights`` asks
(``torchvision:DEFAULT``, ``timm:DEFAULT``) or a local file in the published layout, and then fitted
to the data (``edgekd.models.stems``: input channels, head, stem). A local file in the adapted layout
(a file edgekd saved) is loaded afterwards by ``build_model``; ``weights_loaded`` says which happened.

A TorchScript file is used as it is: it must take the dataset's channels and return one logit per
class (its head cannot be replaced); it is fed ``(x - mean) / std`` with the dataset's statistics.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..arch_names import split_arch
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..registry import Registry
from .common import InputSpec
from .stems import adapt_in_channels, adapt_small_stem, replace_head, resolve_stem
from .weights import _align, _fetch, _torchvision_weights, read_weights_file

log = logging.getLogger(__name__)
SourceFn = Callable[[str, ModelConfig, InputSpec], "tuple[nn.Module, bool]"]
MODEL_SOURCES: Registry[SourceFn] = Registry("model source")
# torchvision models whose auxiliary classifiers would make training-mode forward return a tuple
_NO_AUX = {"googlenet", "inception_v3"}


def _published_fit(net: nn.Module, path: str) -> dict[str, torch.Tensor] | None:
    """The file's state aligned to ``net`` when it is in ``net``'s published layout (every tensor
    name and shape equal; auxiliary-head tensors ignored), else None."""
    state, _ = read_weights_file(path)
    state = _align(state, net)
    state = {k: v for k, v in state.items() if "aux" not in k.lower()}
    own = net.state_dict()
    if set(state) == set(own) and all(state[k].shape == own[k].shape for k in own):
        return state
    return None


def _fit_to_data(net: nn.Module, cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    adapt_in_channels(net, spec.in_channels)
    replace_head(net, spec.num_classes)
    if resolve_stem(cfg, spec) == "small":
        adapt_small_stem(net, cfg.stem_stride, cfg.maxpool)
    return net


def _check_width(cfg: ModelConfig) -> None:
    if cfg.width != 1.0:  # also checked at config load; kept for the Python API
        raise ConfigError(f"width {cfg.width} applies to built-in models only, not {cfg.arch}",
                          "set width: 1.0 and pick a smaller model name instead")


@MODEL_SOURCES.register("torchvision")
def torchvision_model(name: str, cfg: ModelConfig, spec: InputSpec) -> tuple[nn.Module, bool]:
    """Any torchvision classifier (``torchvision.models.list_models()``), fitted to the data."""
    from torchvision import models as tvm

    _check_width(cfg)
    if name not in tvm.list_models(module=tvm):
        raise ConfigError(f"unknown torchvision classifier '{name}'", "pick a name from torchvision.models.list_models()")
    net = tvm.get_model(name, weights=None, **({"aux_logits": False, "init_weights": True} if name in _NO_AUX else {}))
    loaded = False
    if cfg.weights and cfg.weights.startswith("torchvision:"):
        state = _fetch(_torchvision_weights(name, cfg.weights.split(":", 1)[1] or "DEFAULT"))
        state = {k: v for k, v in state.items() if "aux" not in k.lower()}
        net.load_state_dict(state, strict=True)
        loaded = True
    elif cfg.weights:
        state = _published_fit(net, cfg.weights)
        if state is not None:
            net.load_state_dict(state, strict=True)
            loaded = True
    return _fit_to_data(net, cfg, spec), loaded


def _timm() -> object:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm models need the timm package, which is not installed",
                          "install with pip install 'edgekd[timm]'") from None
    return timm


@MODEL_SOURCES.register("timm")
def timm_model(name: str, cfg: ModelConfig, spec: InputSpec) -> tuple[nn.Module, bool]:
    """Any timm model (``timm.list_models()``; ``name.tag`` picks a weights tag), fitted to the data."""
    timm = _timm()
    _check_width(cfg)
    pretrained = bool(cfg.weights and cfg.weights.startswith("timm:"))
    try:
        net = timm.create_model(name, pretrained=pretrained)  # type: ignore[attr-defined]
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"unknown timm model '{name}'", "pick a name from timm.list_models()") from None
        raise
    except OSError as e:  # no network: the Hugging Face hub download failed
        raise CheckpointError(f"could not fetch timm weights for {name} ({e}); no network access?",
                              "download them elsewhere into the Hugging Face cache ($HF_HOME), or save "
                              "timm.create_model(name, pretrained=True).state_dict() and give that file as weights") from None
    loaded = pretrained
    if cfg.weights and not pretrained:
        state = _published_fit(net, cfg.weights)
        if state is not None:
            net.load_state_dict(state, strict=True)
            loaded = True
    return plain_layers(_fit_to_data(net, cfg, spec)), loaded


_PLAIN = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def plain_layers(net: nn.Module) -> nn.Module:
    """Swap timm's subclasses of the plain layers for the plain ones, so QAT sees what they compute.

    timm's ``BatchNormAct2d`` is a BatchNorm2d with its activation inside: folding it into the conv
    as a plain BatchNorm would silently drop the activation, so it becomes ``Sequential(bn, act)``.
    timm's ``Linear`` is an ``nn.Linear``. Values are copied; nothing is re-initialized.
    """
    for name, m in list(net.named_modules()):
        if type(m) in _PLAIN or not isinstance(m, (nn.Linear, nn.BatchNorm2d)):
            continue
        if isinstance(m, nn.Linear):
            new: nn.Module = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
        else:
            extra = {n for n, _ in m.named_children()} - {"drop", "act"}
            if extra:
                continue  # left as is: check_quantizable names it
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict())
            tail = [c for c in (getattr(m, "drop", None), getattr(m, "act", None))
                    if c is not None and not isinstance(c, nn.Identity)]
            new = nn.Sequential(bn, *tail) if tail else bn
        new.train(m.training)
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, new)
    return net


class _Scripted(nn.Module):
    """Holds a TorchScript module as the ``net`` of ``Normalized``; ``build_model`` then scripts the whole
    model, because the ONNX exporter cannot trace a loaded ScriptModule inside a plain module."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@MODEL_SOURCES.register("torchscript")
def torchscript_model(path: str, cfg: ModelConfig, spec: InputSpec) -> tuple[nn.Module, bool]:
    """A TorchScript file (``torch.jit.save``): used as is; it must already output ``num_classes`` logits."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"TorchScript file {p} not found", "give the path of a file written by torch.jit.save")
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{p} is not a TorchScript file ({first})",
                              "save it with torch.jit.save(torch.jit.script(model), path)") from None
    net = _Scripted(module)
    x = torch.zeros(2, spec.in_channels, *spec.image_size)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = net(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"TorchScript model {p} cannot take a [2, {spec.in_channels}, {spec.image_size[0]}, "
                          f"{spec.image_size[1]}] batch ({first})", "script a model for the dataset's channels and size") from None
    module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"TorchScript model {p} returns {got} for a batch of 2, not [2, {spec.num_classes}] logits",
                          "a TorchScript head cannot be replaced: script the model with one output per class")
    return net, False


def build_external(cfg: ModelConfig, spec: InputSpec) -> tuple[nn.Module, bool]:
    """Build ``cfg.arch`` (``SOURCE:NAME``) for ``spec``'s data -> (raw network, published weights loaded?)."""
    source, name = split_arch(cfg.arch)
    assert source is not None, f"{cfg.arch} has no source prefix"
    net, loaded = MODEL_SOURCES.get(source)(name, cfg, spec)
    log.info("%s: fitted to %d channels, %d classes, stem %s; published weights %s", cfg.arch, spec.in_channels,
             spec.num_classes, resolve_stem(cfg, spec), cfg.weights if loaded else "none")
    return net, loaded


def check_quantizable(net: nn.Module, arch: str) -> None:
    """Fail early, with the reason, when the student cannot be prepared for QAT (edgekd.quant)."""
    from ..quant.prepare import quantize_graph

    odd = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in net.modules()
                  if isinstance(m, _PLAIN) and type(m) not in _PLAIN})
    if odd:  # a subclass may compute more than the plain layer QAT would replace it with (e.g. padding "same")
        raise ConfigError(f"student {arch} uses layer types edgekd's QAT cannot rewrite: {', '.join(odd)}",
                          "use a student listed as QAT-verified in docs/models-and-devices.md, or set qat.enabled: false")
    try:
        quantize_graph(copy.deepcopy(net).eval())
    except ConfigError as e:
        raise ConfigError(f"student {arch} cannot be quantized by edgekd's QAT: {e.problem}",
                          "use a student listed as QAT-verified in docs/models-and-devices.md (e.g. mobilenet_v2, "
                          "torchvision:mnasnet0_5, timm:mobilenetv4_conv_small) or set qat.enabled: false") from None
