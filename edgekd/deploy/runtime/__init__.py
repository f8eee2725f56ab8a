"""Torch-free deployment runtime: onnxruntime sessions, accuracy, latency, profiling, the check metrics.

Imports numpy, onnxruntime and the ground floor only, so a CI job without torch can use it.
"""
from __future__ import annotations

from .accuracy import accuracy_report, confusion_matrix
from .check import check_model, check_models, compute_ratios
from .latency import measure_latency
from .profile import profile_top_ops
from .session import check_provider, make_session, onnx_logits

__all__ = [
    "accuracy_report",
    "check_model",
    "check_models",
    "check_provider",
    "compute_ratios",
    "confusion_matrix",
    "make_session",
    "measure_latency",
    "onnx_logits",
    "profile_top_ops",
]
