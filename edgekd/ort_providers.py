"""onnxruntime execution providers by name: ``XnnpackExecutionProvider`` or short ``xnnpack``, any case.

``resolve_provider`` turns a user's name into onnxruntime's, and fails with a ConfigError that names
the installed providers (and how to get the wanted one) when this onnxruntime build lacks it. A name
no onnxruntime build knows is a typo, caught at config load (``check_provider_name``); whether this
machine's build has it is checked where a session opens (``edgekd.deploy.runtime.session``).
On the ground floor: imports onnxruntime (not torch), so config validation imports it lazily.
"""
from __future__ import annotations

import onnxruntime as ort

from .errors import ConfigError

SUFFIX = "ExecutionProvider"
# How to get a provider that this onnxruntime build lacks (pip packages and build flags of onnxruntime).
INSTALL_HINTS = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (instead of onnxruntime) on a machine with CUDA",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu with TensorRT installed",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino (instead of onnxruntime) on an Intel CPU/GPU",
    "XnnpackExecutionProvider": "use an onnxruntime build with XNNPACK (the Android/iOS ORT Mobile packages, or "
                                "build onnxruntime with --use_xnnpack)",
    "DnnlExecutionProvider": "build onnxruntime with --use_dnnl",
    "CoreMLExecutionProvider": "run on macOS/iOS with the standard onnxruntime package",
    "NnapiExecutionProvider": "run on Android with the ORT Mobile package",
    "QNNExecutionProvider": "pip install onnxruntime-qnn on a Qualcomm device",
}


def _short(name: str) -> str:
    return name.removesuffix(SUFFIX).lower()


def known_provider(name: str) -> str | None:
    """onnxruntime's name for ``name`` (full or short, any case) if any onnxruntime build has it, else None."""
    wanted = _short(name)
    for full in ort.get_all_providers():
        if _short(full) == wanted:
            return full
    return None


def resolve_provider(name: str, key: str = "check.latency.provider") -> str:
    """onnxruntime's name for ``name``; a ConfigError names the installed providers when it is unknown or missing."""
    available = ort.get_available_providers()
    installed = ", ".join(f"{p} ({_short(p)})" for p in available)
    full = known_provider(name)
    if full is None:
        raise ConfigError(f"{key} '{name}' is not an onnxruntime execution provider; available here: {installed}",
                          f"set {key} to an installed provider, e.g. CPUExecutionProvider (or: "
                          + ", ".join(_short(p) for p in ort.get_all_providers()) + ")")
    if full not in available:
        hint = INSTALL_HINTS.get(full, "install an onnxruntime build that includes it")
        raise ConfigError(f"{key}: onnxruntime execution provider '{full}' is not available in this onnxruntime build; "
                          f"available here: {installed}", f"set {key} to an installed provider, or {hint}")
    return full


def check_provider_name(name: str, key: str = "check.latency.provider") -> None:
    """Config-load check: ``name`` is a provider some onnxruntime build has (a typo is a ConfigError)."""
    if known_provider(name) is None:
        resolve_provider(name, key)  # raises, naming the installed providers


__all__ = ["INSTALL_HINTS", "check_provider_name", "known_provider", "resolve_provider"]
