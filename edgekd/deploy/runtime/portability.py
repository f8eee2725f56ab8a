"""Portability check: the exported ONNX files run in a second runtime (OpenCV DNN, OpenVINO) and agree with onnxruntime.

A deployment target may not run onnxruntime. For each second runtime that is installed, every
file is loaded and run on the same images, and its top-1 is compared with onnxruntime's. A runtime
that is not installed is reported as skipped, with the reason and the install command; a runtime
that cannot load or run a file (e.g. an op it lacks) is reported with its error for that file: both
are findings about the file's portability, recorded, never hidden. Imports no torch.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...batching import map_batches
from ...registry import Registry
from .session import PathLike, make_session, onnx_logits

LogitsFn = Callable[[Path, np.ndarray], np.ndarray]
SECOND_RUNTIMES: Registry["tuple[str, str, LogitsFn]"] = Registry("second runtime")


def _opencv_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import cv2

    # OpenCV 5's new default engine fails on edgekd's QDQ INT8 files ("bufidx >= 0 in argTensor", measured
    # with 5.0.0); its classic engine runs them. ENGINE_ORT is avoided: it would be onnxruntime again.
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    net = cv2.dnn.readNetFromONNX(str(path)) if engine is None else cv2.dnn.readNetFromONNX(str(path), engine=engine)

    def run(batch: np.ndarray) -> np.ndarray:
        net.setInput(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(net.forward()).reshape(len(batch), -1)

    return map_batches(run, images, 32)


def _openvino_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    return map_batches(lambda b: np.asarray(compiled(np.ascontiguousarray(b, dtype=np.float32))[0]).reshape(len(b), -1),
                       images, 32)


# name -> (python module that must be importable, install command, logits function)
SECOND_RUNTIMES.register("opencv")(("cv2", "pip install 'edgekd[portability]' (opencv-python-headless)", _opencv_logits))
SECOND_RUNTIMES.register("openvino")(("openvino", "pip install openvino", _openvino_logits))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"[:300]


def portability_check(models: Mapping[str, PathLike], images: np.ndarray, labels: np.ndarray | None = None,
                      runtimes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Top-1 agreement of each second runtime with onnxruntime, per model, on ``images`` (float32 [0, 1] NCHW).

    Returns ``{runtime: {"skipped": reason}}`` or ``{runtime: {"models": {name: {"top1_agreement",
    "max_abs_logit_diff", "accuracy" (with labels)} | {"error": msg}}}}``.
    """
    names = list(runtimes) if runtimes is not None else SECOND_RUNTIMES.names()
    reference = {name: onnx_logits(make_session(path, threads=1), images) for name, path in models.items()}
    out: dict[str, Any] = {}
    for runtime in names:
        module, install, logits_fn = SECOND_RUNTIMES.get(runtime)
        if importlib.util.find_spec(module) is None:
            out[runtime] = {"skipped": f"{runtime} is not installed (python module '{module}'); {install}"}
            continue
        per_model: dict[str, Any] = {}
        for name, path in models.items():
            try:
                got = logits_fn(Path(path), images)
            except Exception as e:  # the runtime's own error types; the failure is the result for this file
                per_model[name] = {"error": _first_line(e)}
                continue
            ref = reference[name]
            if got.shape != ref.shape:
                per_model[name] = {"error": f"output shape {got.shape} differs from onnxruntime's {ref.shape}"}
                continue
            row = {"images": int(len(images)), "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                   "max_abs_logit_diff": float(np.abs(got - ref).max())}
            if labels is not None:
                row["accuracy"] = float((got.argmax(1) == np.asarray(labels)).mean())
                row["accuracy_onnxruntime"] = float((ref.argmax(1) == np.asarray(labels)).mean())
            per_model[name] = row
        out[runtime] = {"models": per_model}
    return out


def format_portability(result: Mapping[str, Any]) -> list[str]:
    """One log line per runtime and model."""
    lines = []
    for runtime, r in result.items():
        if "skipped" in r:
            lines.append(f"portability: {runtime}: skipped ({r['skipped']})")
            continue
        for name, m in r["models"].items():
            lines.append(f"portability: {runtime}: {name}: " + (f"error {m['error']}" if "error" in m else
                         f"top-1 agreement with onnxruntime {m['top1_agreement']:.2%} on {m['images']} images"))
    return lines


__all__ = ["SECOND_RUNTIMES", "format_portability", "portability_check"]
