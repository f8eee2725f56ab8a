"""Loading weights into models: local state_dict files and torchvision's pretrained weights.

Local files are read with ``torch.load(..., weights_only=True)`` (never unpickling arbitrary
objects) and may hold a raw state_dict, or a dict with the state under ``state_dict`` or ``model``
(plus e.g. ``meta``), saved from a ``Normalized`` model or from its raw ``.net``. A file that does
not fit the model raises ``CheckpointError`` naming the missing, unexpected and mis-shaped keys.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..train.checkpoint import LOAD_ERRORS, check_fits, describe_load_error, load_tensors_only
from ..errors import CheckpointError, ConfigError

_SHOW = 5  # keys listed in an error message
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file -> ``(state_dict, meta)``; ``meta`` is ``{}`` when the file has none.

    (An epoch checkpoint, written for ``--resume``, is read with ``train.checkpoint.load_training_checkpoint``.)
    """
    p = Path(path).expanduser()  # as the stage fingerprint (edgekd.config_files) reads it
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}", "check the path, or run the stage that writes it")
    try:
        obj = load_tensors_only(p)
    except LOAD_ERRORS as e:
        # from None: the chained torch error would print its advice to load unsafely (see describe_load_error)
        raise CheckpointError(
            f"weights file {p} is unreadable or corrupt ({describe_load_error(e)})",
            "re-create it (re-run the stage that wrote it) or point to an intact copy; edgekd reads only plain "
            "tensor files: save them with torch.save(model.state_dict(), path)",
        ) from None
    meta: dict[str, Any] = {}
    state: Any = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"weights file {p} holds no state_dict (got {type(obj).__name__}"
            + (f" with keys {', '.join(map(str, list(obj)[:_SHOW]))}" if isinstance(obj, Mapping) else "") + ")",
            "save weights with torch.save(model.state_dict(), path) or torch.save({'state_dict': ..., 'meta': ...}, path)",
        )
    return dict(state), meta


def _align(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys to the model's: drop wrapper prefixes; map raw-net <-> Normalized keys."""
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = model.state_dict()
    model_wrapped = any(k.startswith("net.") for k in own) and "mean" in own
    file_wrapped = any(k.startswith("net.") for k in state) and "mean" in state
    if model_wrapped and not file_wrapped:
        # A raw network's weights into a Normalized model: keep the model's own mean/std.
        state = {f"net.{k}": v for k, v in state.items()}
        state.update(mean=own["mean"], std=own["std"])
    elif file_wrapped and not model_wrapped:
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    return state


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the weights file ``path`` into ``model`` (a ``Normalized`` model or a raw network).

    Returns the file's metadata (``{}`` if none). Raises ``CheckpointError`` when the file is
    missing, unreadable, or does not fit: the message lists (a few of) the missing, unexpected and
    mis-shaped keys.
    """
    state, meta = read_weights_file(path)
    state = _align(state, model)
    check_fits(model, state, f"weights file {path}",
               "build the model with the same config (arch, width, stem_stride, maxpool) and dataset (channels, "
               "classes) as the run that saved the file, or retrain")
    model.load_state_dict(state, strict=True)
    return meta


def _torchvision_weights(arch: str, name: str) -> Any:
    """The torchvision weights enum member for ``arch`` named ``name`` (member, full name or DEFAULT)."""
    from torchvision import models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise ConfigError(f"'{arch}' has no torchvision pretrained weights", "set weights to a local file or null")
    enum = tvm.get_model_weights(arch)
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    if member == "DEFAULT":
        return enum.DEFAULT
    valid = [w.name for w in enum]
    if member not in valid:
        raise ConfigError(f"unknown torchvision weights '{name}' for {arch}; valid: DEFAULT, {', '.join(valid)}",
                          f"write weights: torchvision:DEFAULT or torchvision:{valid[0]}")
    return enum[member]


def _fetch(weights: Any) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:  # URLError is an OSError
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise CheckpointError(
            f"could not load torchvision weights {weights} ({describe_load_error(e)}); no network access?",
            f"download {weights.url} elsewhere and put it at {target} (the torch hub cache; set $TORCH_HOME to move it), "
            "or set weights to a local file or null",
        ) from None  # the chained torch error would advise loading unsafely


def load_torchvision_weights(net: nn.Module, arch: str, name: str) -> list[str]:
    """Load torchvision's pretrained ``name`` weights for ``arch`` into the adapted raw ``net``.

    Tensors whose shapes match are copied. A stem conv with 1 input channel gets the pretrained RGB
    filters summed over the channel axis (a grey image is R = G = B, so the response is unchanged).
    What still does not fit -- the classifier (other class count) and a stem whose kernel differs
    (ResNet's 7x7 vs our 3x3) -- keeps its fresh initialization. Returns those keys.
    """
    pretrained = _fetch(_torchvision_weights(arch, name))
    own = net.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        src = pretrained.get(key)
        if src is None:
            continue
        if src.shape == target.shape:
            new[key] = src
        elif src.ndim == 4 and src.shape[1] == 3 and target.shape[1] == 1 and src.shape[2:] == target.shape[2:] \
                and src.shape[0] == target.shape[0]:
            new[key] = src.sum(dim=1, keepdim=True)
    fresh = [k for k in own if k not in new]
    if len(fresh) > len(own) // 4:
        raise CheckpointError(
            f"torchvision weights {name} for {arch} fit only {len(new)} of {len(own)} tensors (e.g. {', '.join(fresh[:_SHOW])})",
            "pretrained weights need width 1.0; set the model's width to 1.0 or drop the weights",
        )
    net.load_state_dict(new, strict=False)
    return fresh
