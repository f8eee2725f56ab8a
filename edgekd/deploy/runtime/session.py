"""onnxruntime sessions and batched inference. Imports no torch.

Every deployment-side measurement (accuracy, latency, profile, gate) opens its session here,
so a missing or corrupt file and an unavailable provider fail the same way everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ...batching import map_batches
from ...errors import ArtifactError, ConfigError
from ...ort_providers import resolve_provider

PathLike = Union[str, "os.PathLike[str]"]

GRAPH_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# What onnxruntime raises for an unreadable model (they derive from Exception, not RuntimeError).
_ORT_LOAD_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidProtobuf,
    _ort_state.InvalidGraph,
    _ort_state.NoSuchFile,
    _ort_state.InvalidArgument,
    RuntimeError,
)

REEXPORT_FIX = "re-run the export stage (edgekd export, or 'edgekd run --force --stages export,check')"


def check_provider(provider: str) -> str:
    """onnxruntime's name for ``provider`` (full or short, e.g. ``xnnpack``); ConfigError naming the
    installed providers when this onnxruntime build lacks it (``edgekd.ort_providers``)."""
    return resolve_provider(provider)


def session_options(
    threads: int = 0,
    profile: bool = False,
    optimized_model_path: PathLike | None = None,
    graph_optimization: str = "all",
    profile_prefix: PathLike | None = None,
) -> ort.SessionOptions:
    """SessionOptions for reproducible CPU measurements: sequential execution, one inter-op thread."""
    if graph_optimization not in GRAPH_LEVELS:
        raise ConfigError(
            f"unknown graph optimization level '{graph_optimization}'; valid: {', '.join(GRAPH_LEVELS)}",
            "pass one of the valid levels",
        )
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = all cores), got {threads}", "pass 0 or a positive count")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0 lets onnxruntime use every physical core
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_LEVELS[graph_optimization]
    opts.log_severity_level = 3  # warnings about unused initializers etc. would drown the CI log
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    if profile:
        opts.enable_profiling = True
        if profile_prefix is not None:
            opts.profile_file_prefix = str(profile_prefix)
    return opts


def make_session(
    path: PathLike | bytes,
    provider: str = "CPUExecutionProvider",
    threads: int = 0,
    profile: bool = False,
    optimized_model_path: PathLike | None = None,
    graph_optimization: str = "all",
    profile_prefix: PathLike | None = None,
) -> ort.InferenceSession:
    """Open ``path`` (a file, or a serialized model as ``bytes``) in onnxruntime.

    ``threads=0`` uses all cores. An unavailable provider raises ConfigError listing the
    available ones; a missing, truncated or corrupt model raises ArtifactError naming it.
    """
    provider = check_provider(provider)
    if isinstance(path, bytes):  # an in-memory model (export checks build probe graphs without a file)
        src, what = path, f"the in-memory model ({len(path)} bytes)"
    else:
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"ONNX model {p} does not exist", REEXPORT_FIX)
        src, what = str(p), f"{p} ({p.stat().st_size} bytes)"
    opts = session_options(threads, profile, optimized_model_path, graph_optimization, profile_prefix)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=[provider])
    except _ORT_LOAD_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(
            f"onnxruntime cannot load {what}: it is truncated or corrupt ({first})",
            REEXPORT_FIX,
        ) from e


def onnx_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``images`` (float32 [N, C, H, W] in [0, 1]) from the session's first output, in batches."""
    if images.ndim != 4:
        raise ConfigError(f"images must be [N, C, H, W], got shape {images.shape}", "pass a 4-D NCHW array")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch size")
    if len(images) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    in_name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name
    return map_batches(
        lambda batch: session.run([out_name], {in_name: np.ascontiguousarray(batch, dtype=np.float32)})[0],
        images, batch_size,
    )
