"""Hardware and software facts for the manifest and report.

Imports no torch at module level (the deploy side reads manifests without it); only
``environment(cfg)`` imports it, to record the precision each training stage will use.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

from .hardware import detect_cpu_features, thread_settings
from .stage_specs import training_configs

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "fma")


def cpu_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = detect_cpu_features().flags  # the one flag reader (/proc/cpuinfo, else torch's probes)
    return {
        "model": model,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "isa": {f: (f in flags) for f in ISA_FLAGS},
    }


def package_versions(names: tuple[str, ...] = ("torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "numpy")) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def training_precision(cfg: Any) -> dict[str, Any]:
    """Per training stage: its ``amp`` setting, the device and the precision ``resolve_amp`` picks there, and why.

    Needs torch (imported here, not at module level). The same function the engine calls decides,
    so the record cannot drift from what training does, with one exception the engine alone can see:
    bf16 on a CPU falls back to fp32 for a model with a conv oneDNN's bf16 backward gets wrong
    (edgekd.train.bf16_guard); each training stage's metrics record ``precision`` as it ran.
    """
    try:
        import torch  # noqa: F401  (a deploy-only install has no torch and no training to describe)

        from .train.distributed import resolve_amp, resolve_compile, resolve_device
    except ImportError as e:
        return {"error": f"torch is not importable ({e}): no training precision to record"}
    from .errors import EdgekdError

    try:
        device = resolve_device(cfg.device)
    except EdgekdError as e:  # the training stage itself reports this; the record just says so
        return {"error": str(e)}
    out: dict[str, Any] = {}
    for spec, train in training_configs(cfg):
        mode = train.amp
        out[spec.name] = {"amp": mode, "device": str(device), **resolve_amp(mode, device).to_dict(),
                          "compile": resolve_compile(train.compile, device)}
    return out


def training_determinism(cfg: Any) -> dict[str, Any]:
    """The config's ``deterministic`` switch, what it resolves to on the run's device, and why (needs torch)."""
    try:
        from .train.distributed import resolve_deterministic, resolve_device
    except ImportError as e:
        return {"error": f"torch is not importable ({e}): no determinism to record"}
    from .errors import EdgekdError

    try:
        device = resolve_device(cfg.device)
    except EdgekdError as e:
        return {"error": str(e)}
    return {"mode": cfg.deterministic, "device": str(device), **resolve_deterministic(cfg.deterministic, device).to_dict()}


def environment(cfg: Any = None) -> dict[str, Any]:
    """Python, platform, CPU, versions, the CPU features and thread settings that drive speed and precision.

    With ``cfg`` (a Config) it also records the precision of each training stage (``precision``).
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "versions": package_versions(),
    }
    if cfg is not None:
        env["precision"] = training_precision(cfg)  # imports torch first, so the records below see it
        env["determinism"] = training_determinism(cfg)
    env["cpu_features"] = detect_cpu_features().to_dict()
    env["threads"] = thread_settings()
    return env
