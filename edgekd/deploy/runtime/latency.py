"""Latency of an ONNX model in onnxruntime: fixed input, warm-up, then timed sequential runs."""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import ArtifactError, ConfigError
from .session import _ORT_LOAD_ERRORS, PathLike, make_session

# onnxruntime's input type names -> numpy dtypes a timing input can be made of
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                 "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def input_shape_of(session: Any) -> tuple[int, ...]:
    """The (C, H, W) the session's first input expects; symbolic dims are not allowed there."""
    dims = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ConfigError(f"the model's input has symbolic non-batch dims {dims}", "pass input_shape=(C, H, W)")
    return tuple(dims)


def fixed_input(batch: int, input_shape: Sequence[int], seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    """Seeded images, the same tensor for every model and every run: uniform [0, 1] floats, or the
    full range of an 8-bit integer type (a model that takes raw uint8 pixels)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.random((batch, *input_shape), dtype=np.float32).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(batch, *input_shape), endpoint=True, dtype=dtype)


def fixed_feed(session: Any, batch: int, input_shape: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The session's first input fed with :func:`fixed_input` of the type the model declares.

    A model whose input is neither float nor 8-bit integer cannot be timed on images: ArtifactError.
    """
    first = session.get_inputs()[0]
    dtype = _INPUT_DTYPES.get(first.type)
    if dtype is None:
        raise ArtifactError(f"the model's input '{first.name}' is {first.type}; edgekd times models whose image "
                            f"input is one of {', '.join(_INPUT_DTYPES)}",
                            "export the model with a float32 (or uint8) image input")
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(session)
    return {first.name: fixed_input(batch, shape, dtype=dtype)}


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


def _timed_runs(sess: Any, out_names: list[str], feed: dict[str, np.ndarray], warmup: int, runs: int) -> list[float]:
    """Wall times (ms) of ``runs`` calls after ``warmup`` untimed ones; only ``session.run`` is timed."""
    for _ in range(warmup):
        sess.run(out_names, feed)
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(out_names, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


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
    feed = fixed_feed(sess, batch, input_shape)
    out_names = [sess.get_outputs()[0].name]
    try:
        times = _timed_runs(sess, out_names, feed, warmup, runs)
    except _ORT_LOAD_ERRORS as e:  # the model loads but cannot run: name it instead of an onnxruntime traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"onnxruntime cannot run {path} on a batch of {batch}: {first}",
                            "check that the model takes one NCHW image batch, or re-export it") from e
    return {"batch": batch, "threads": threads, **summarize_ms(times), "runs": runs}


# Interleaved timing: the check stage compares files (INT8 vs FP32) measured one after the other. On a
# shared CPU a background load that comes and goes then lands on one file and not the other (this
# machine's load average went from 2 to 17 within minutes while timing), so a ratio can move by x1.5
# without any file changing. Timing the files in alternating blocks spreads such load over all of
# them. Blocks, not single runs: a run right after another model's starts with that model's weights in
# the cache, so each block begins with one untimed run.
#
# Only files of similar cost share the alternation. A file many times slower leaves the CPU's caches
# and memory state to the next file's block for longer than one untimed run: measured on an AMD EPYC
# (default run, batch 1, 1 thread, 3 sittings each), the FP32 student timed right after the ResNet-18
# teacher (~18x slower) had a median of 0.29-0.32 ms, against 0.23 ms interleaved with the INT8 file
# only, which moved INT8/FP32 from x0.81 to x0.62-0.64; three untimed runs per block still gave
# x0.68-0.71. Files whose warm-up medians lie within COST_GROUP_FACTOR of the group's fastest are timed
# together; groups are timed one after another.
INTERLEAVE_BLOCK = 10
COST_GROUP_FACTOR = 4.0


def cost_groups(warm_ms: Mapping[str, float], factor: float = COST_GROUP_FACTOR) -> list[list[str]]:
    """Names grouped by cost: sorted by ``warm_ms``, a new group starts where a file is over ``factor``
    times the current group's fastest. Each group keeps the callers' order of its names."""
    order = list(warm_ms)
    groups: list[list[str]] = []
    base = 0.0
    for name in sorted(order, key=lambda n: warm_ms[n]):
        if not groups or warm_ms[name] > factor * base:
            groups.append([])
            base = warm_ms[name]
        groups[-1].append(name)
    return [sorted(g, key=order.index) for g in groups]


def measure_latency_interleaved(
    paths: Mapping[str, PathLike],
    batch: int = 1,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    provider: str = "CPUExecutionProvider",
    input_shape: Sequence[int] | None = None,
    block: int = INTERLEAVE_BLOCK,
) -> dict[str, dict[str, Any]]:
    """:func:`measure_latency` of several files at one setting, timed in alternating blocks of ``block`` runs.

    Each file gets exactly ``runs`` timed runs and ``warmup`` untimed ones first;
    each block starts with one untimed run. Files alternate only with files of similar cost
    (:func:`cost_groups` of the warm-up medians; see the note above). Returns name -> the same row as
    :func:`measure_latency`, plus ``interleaved_with``: the other files of its group.
    """
    if batch < 1 or runs < 1 or warmup < 0 or block < 1:
        raise ConfigError(f"latency needs batch >= 1, runs >= 1, warmup >= 0; got {batch}, {runs}, {warmup}",
                          "fix check.latency in the config")
    sessions = {name: make_session(p, provider=provider, threads=threads) for name, p in paths.items()}
    feeds = {name: fixed_feed(s, batch, input_shape) for name, s in sessions.items()}
    outs = {name: [s.get_outputs()[0].name] for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        warm_ms = {name: _warm_median(s, outs[name], feeds[name], warmup) for name, s in sessions.items()}
        groups = cost_groups(warm_ms)
        for group in groups:
            while min(len(times[name]) for name in group) < runs:
                for name in group:
                    times[name] += _timed_runs(sessions[name], outs[name], feeds[name], 1,
                                               min(block, runs - len(times[name])))
    except _ORT_LOAD_ERRORS as e:  # the model loads but cannot run: name it instead of an onnxruntime traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"onnxruntime cannot run one of {', '.join(map(str, paths.values()))} on a batch of "
                            f"{batch}: {first}", "check that the model takes one NCHW image batch, or re-export it") from e
    peers = {name: [n for n in g if n != name] for g in groups for name in g}
    return {name: {"batch": batch, "threads": threads, **summarize_ms(t), "runs": len(t), "interleaved_with": peers[name]}
            for name, t in times.items()}


def _warm_median(sess: Any, out_names: list[str], feed: dict[str, np.ndarray], warmup: int) -> float:
    """The ``warmup`` untimed runs, timed after all to rank the files by cost (at least one run)."""
    times = _timed_runs(sess, out_names, feed, 0, max(warmup, 1))
    return float(np.median(times))
