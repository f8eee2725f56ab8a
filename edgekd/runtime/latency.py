"""Latency of an ONNX model in onnxruntime: fixed input, warm-up, then timed sequential runs."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .session import PathLike, make_session


def input_shape_of(session: Any) -> tuple[int, ...]:
    """The (C, H, W) the session's first input expects; symbolic dims are not allowed there."""
    dims = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ConfigError(f"the model's input has symbolic non-batch dims {dims}", "pass input_shape=(C, H, W)")
    return tuple(dims)


def fixed_input(batch: int, input_shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """Seeded uniform [0, 1] float32 images: the same tensor for every model and every run."""
    return np.random.default_rng(seed).random((batch, *input_shape), dtype=np.float32)


def summarize_ms(times_ms: Sequence[float]) -> dict[str, float]:
    """median / p90 / p99 / mean / min of a list of run times in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
    }


def measure_latency(
    path: PathLike,
    batch: int = 1,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    provider: str = "CPUExecutionProvider",
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Time ``runs`` inferences of a fixed random batch after ``warmup`` untimed ones.

    Returns ``{"batch", "threads", "median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "runs"}``.
    ``threads=0`` means all cores. Each run is timed with ``time.perf_counter`` around
    ``session.run`` alone, so input preparation is not counted.
    """
    if batch < 1 or runs < 1 or warmup < 0:
        raise ConfigError(f"latency needs batch >= 1, runs >= 1, warmup >= 0; got {batch}, {runs}, {warmup}",
                          "fix check.latency in the config")
    sess = make_session(path, provider=provider, threads=threads)
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(sess)
    feed = {sess.get_inputs()[0].name: fixed_input(batch, shape)}
    out_names = [sess.get_outputs()[0].name]
    for _ in range(warmup):
        sess.run(out_names, feed)
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(out_names, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"batch": batch, "threads": threads, **summarize_ms(times), "runs": runs}
