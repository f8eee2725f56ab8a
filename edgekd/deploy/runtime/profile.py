"""Where the time goes: onnxruntime's profiler aggregated by operator type.

Conv rows also say how much of their time the depthwise convs took: onnxruntime's int8 depthwise
kernel can be slower than its float one on a CPU where the int8 pointwise convs are much faster,
so one total per op type hides why a MobileNet's INT8 file gains little at batch 1.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import onnx

from ..onnx_io import load_model
from .latency import fixed_feed
from .session import PathLike, check_provider, make_session


# conv kernels of the graph onnxruntime runs, and the input index of their weight
CONV_WEIGHT_INPUT = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "QLinearConv": 3, "NhwcQLinearConv": 3}


def depthwise_convs(model: onnx.ModelProto) -> set[str]:
    """Names of the conv nodes that are depthwise (group > 1, one input channel per group) in a runtime graph.

    The runtime graph (``optimized_model_filepath``) keeps each conv's ``group`` and its weight as an
    initializer ``[C_out, C_in / group, kH, kW]``; the profiler names its events after these nodes.
    """
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out = set()
    for n in model.graph.node:
        idx = CONV_WEIGHT_INPUT.get(n.op_type)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if idx is None or group <= 1 or len(n.input) <= idx:
            continue
        w = dims.get(n.input[idx])
        if w is not None and len(w) >= 2 and w[1] == 1:
            out.add(n.name)
    return out


def aggregate_node_events(events: list[dict[str, Any]], runs: int,
                          depthwise: set[str] | None = None) -> list[dict[str, Any]]:
    """Sum the kernel time of profiler "Node" events per ``args.op_name``.

    ``total_ms`` is per inference (summed over ``runs`` and divided by it), ``count`` the number
    of distinct graph nodes of that type, ``share`` the fraction of all kernel time. Sorted by time.
    With ``depthwise`` (the depthwise conv nodes of the runtime graph, possibly none) every conv op
    type's row also gets ``depthwise_ms`` and ``depthwise_count``, 0 where it has none, so the convs
    that are not depthwise are all the rest of the conv rows.
    """
    total_us: dict[str, float] = defaultdict(float)
    dw_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        # each node emits *_fence_before / *_kernel_time / *_fence_after; only the kernel time is compute
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = (ev.get("args") or {}).get("op_name")
        if not op:
            continue
        node = str(ev["name"])[: -len("_kernel_time")]
        total_us[op] += float(ev.get("dur", 0))
        nodes[op].add(node)
        if depthwise and node in depthwise:
            dw_us[op] += float(ev.get("dur", 0))
    grand = sum(total_us.values())
    rows = []
    for op, us in total_us.items():
        row = {"op_type": op, "total_ms": us / 1000.0 / runs, "share": (us / grand) if grand else 0.0,
               "count": len(nodes[op])}
        if depthwise is not None and op in CONV_WEIGHT_INPUT:
            row.update(depthwise_ms=dw_us[op] / 1000.0 / runs, depthwise_count=len(nodes[op] & depthwise))
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["total_ms"], r["op_type"]))


def keep_top(rows: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The first ``top`` of the sorted ``rows``, plus every conv row below them.

    The doctor sums the conv rows into depthwise and other convs; a conv op type outside the top
    (a float conv left in an INT8 file) would otherwise vanish from "other convs".
    """
    return rows[:top] + [r for r in rows[top:] if r["op_type"] in CONV_WEIGHT_INPUT]


def profile_top_ops(
    path: PathLike,
    batch: int = 1,
    input_shape: Sequence[int] | None = None,
    provider: str = "CPUExecutionProvider",
    top: int = 10,
    runs: int = 10,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """The ``top`` operator types by kernel time, and every conv op type: ``[{"op_type", "total_ms", "share", "count"}]``.

    Runs ``runs`` inferences (after one untimed warm-up) under onnxruntime's profiler and deletes
    the profile file after reading it. With the CPU provider, conv rows add ``depthwise_ms`` /
    ``depthwise_count``, read from the graph the session ran (saved by the same session, so node
    names match the events).
    """
    with tempfile.TemporaryDirectory(prefix="edgekd-profile-") as tmp:
        # onnxruntime cannot save a graph with nodes another provider compiled (XNNPACK, ...): the split
        # is read only for the CPU provider, whose graph names the nodes the events come from
        runtime_graph = Path(tmp) / "runtime.onnx" if check_provider(provider) == "CPUExecutionProvider" else None
        sess = make_session(path, provider=provider, threads=threads, profile=True,
                            profile_prefix=Path(tmp) / "ort_profile", optimized_model_path=runtime_graph)
        feed = fixed_feed(sess, batch, input_shape)
        for _ in range(runs + 1):
            sess.run(None, feed)
        events = _read_events(sess.end_profiling())
        depthwise = depthwise_convs(load_model(runtime_graph)) if runtime_graph is not None else None
    return keep_top(aggregate_node_events(_drop_first_run(events), runs, depthwise), top)


def _drop_first_run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Remove the events of the first ``model_run`` (buffer allocation makes it unrepresentative)."""
    run_spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                       for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if not run_spans:
        return events
    lo, hi = run_spans[0]
    return [e for e in events if not (e.get("cat") == "Node" and lo <= float(e.get("ts", -1)) <= hi)]


def _read_events(profile_file: str) -> list[dict[str, Any]]:
    """Load and delete one profiler JSON file."""
    p = Path(profile_file)
    try:
        data = json.loads(p.read_text())
    finally:
        p.unlink(missing_ok=True)
    return data if isinstance(data, list) else data.get("traceEvents", [])
