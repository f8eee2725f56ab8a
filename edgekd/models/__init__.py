"""Models: teacher and student registries, the in-model normalization, and weight loading.

``build_teacher(cfg, bundle)`` / ``build_student(cfg, bundle)`` build the registered network for
the dataset (input channels, classes, image size), load ``cfg.weights`` if set, and wrap it in
``Normalized`` so the model takes [0, 1] pixels.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from ..arch_names import split_arch
from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import Registry
from .common import InputSpec, scaled_channels
from .external import MODEL_SOURCES, build_external, check_quantizable
from .normalize import Normalized
from .students import STUDENTS
from .teachers import TEACHERS
from .weights import load_torchvision_weights, load_weights, read_weights_file

__all__ = [
    "TEACHERS", "STUDENTS", "MODEL_SOURCES", "Normalized", "InputSpec", "build_teacher", "build_student", "build_model",
    "input_spec", "load_weights", "load_torchvision_weights", "read_weights_file", "scaled_channels",
]

log = logging.getLogger(__name__)
TORCHVISION_PREFIX = "torchvision:"


def input_spec(bundle: Any) -> InputSpec:
    """The InputSpec of a DatasetBundle-like object (``.channels``, ``.classes``, ``.image_size``).

    ``classes`` may be the list of class names or their number; ``image_size`` (H, W) or one int.
    """
    classes = bundle.classes
    num_classes = classes if isinstance(classes, int) else len(classes)
    size = bundle.image_size
    image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if num_classes < 2 or bundle.channels < 1:
        raise ConfigError(f"dataset has {num_classes} classes and {bundle.channels} channels", "a classifier needs >= 2 classes")
    return InputSpec(in_channels=int(bundle.channels), num_classes=int(num_classes), image_size=image_size)


def build_model(registry: Registry, cfg: ModelConfig, bundle: Any) -> Normalized:
    """Build ``cfg.arch`` for ``bundle``'s data, load ``cfg.weights``, wrap in Normalized.

    ``cfg.arch`` is a name in ``registry`` or ``SOURCE:NAME`` (``MODEL_SOURCES``: torchvision, timm,
    torchscript; see ``edgekd.models.external``); an external student must pass QAT preparation.
    """
    spec = input_spec(bundle)
    if len(bundle.mean) != spec.in_channels or len(bundle.std) != spec.in_channels:
        raise ConfigError(f"dataset mean/std have {len(bundle.mean)}/{len(bundle.std)} values for {spec.in_channels} channels",
                          "give one mean and one std per input channel")
    if split_arch(cfg.arch)[0] is not None:  # torchvision:NAME, timm:NAME, torchscript:PATH
        net, published = build_external(cfg, spec)
        if registry is STUDENTS:
            check_quantizable(net, cfg.arch)
        model = Normalized(net, _floats(bundle.mean), _floats(bundle.std))
        if cfg.weights and not published and ":" not in cfg.weights:
            load_weights(model, cfg.weights)  # a file edgekd saved for this adapted model
        elif cfg.weights and not published:
            raise ConfigError(f"weights {cfg.weights!r} do not apply to {cfg.arch}",
                              f"use weights: {split_arch(cfg.arch)[0]}:DEFAULT, a local file, or null")
        if split_arch(cfg.arch)[0] == "torchscript":
            # one TorchScript module end to end: the ONNX exporter takes it whole, not nested in nn.Module
            return torch.jit.script(model)  # type: ignore[return-value]  (same .net/.mean/.std, state_dict)
        return model
    net = registry.get(cfg.arch)(cfg, spec)
    model = Normalized(net, _floats(bundle.mean), _floats(bundle.std))
    if cfg.weights and cfg.weights.startswith(TORCHVISION_PREFIX):
        if cfg.width != 1.0:
            raise ConfigError(f"torchvision weights exist only for width 1.0, but {cfg.arch} has width {cfg.width}",
                              "set width: 1.0 or drop the weights")
        fresh = load_torchvision_weights(net, cfg.arch, cfg.weights[len(TORCHVISION_PREFIX):] or "DEFAULT")
        log.info("%s: torchvision %s loaded; freshly initialized: %s", cfg.arch, cfg.weights, ", ".join(fresh) or "none")
    elif cfg.weights:
        load_weights(model, cfg.weights)
    return model


def build_teacher(cfg: ModelConfig, bundle: Any) -> Normalized:
    """A registered teacher (``TEACHERS``) for ``bundle``'s data, with ``cfg.weights`` loaded if set."""
    return build_model(TEACHERS, cfg, bundle)


def build_student(cfg: ModelConfig, bundle: Any) -> Normalized:
    """A registered student (``STUDENTS``) for ``bundle``'s data, with ``cfg.weights`` loaded if set."""
    return build_model(STUDENTS, cfg, bundle)


def _floats(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]
