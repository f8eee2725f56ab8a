"""onnxruntime sessions on CPU (imported lazily where only onnx is needed)."""
from __future__ import annotations

import os

import numpy as np


def session(model: "str | os.PathLike[str] | bytes", threads: int = 1, level: str = "all",
            optimized_path: str | None = None):
    """A CPU ``InferenceSession``; ``level`` is none|basic|extended|all graph optimization."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_batched(sess, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Run every output of ``sess`` over ``images`` in chunks; outputs concatenated along axis 0."""
    name = sess.get_inputs()[0].name
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunks.append(sess.run(None, {name: np.ascontiguousarray(images[start:start + batch_size], np.float32)}))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
