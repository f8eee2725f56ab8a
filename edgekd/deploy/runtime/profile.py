"""Where the time goes: onnxruntime's profiler aggregated by operator type."""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .latency import fixed_feed
from .session import PathLike, make_session


def aggregate_node_events(events: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Sum the kernel time of profiler "Node" events per ``args.op_name``.

    ``total_ms`` is per inference (summed over ``runs`` and divided by it), ``count`` the number
    of distinct graph nodes of that type, ``share`` the fraction of all kernel time. Sorted by time.
    """
    total_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        # each node emits *_fence_before / *_kernel_time / *_fence_after; only the kernel time is compute
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = (ev.get("args") or {}).get("op_name")
        if not op:
            continue
        total_us[op] += float(ev.get("dur", 0))
        nodes[op].add(str(ev["name"])[: -len("_kernel_time")])
    grand = sum(total_us.values())
    rows = [
        {"op_type": op, "total_ms": us / 1000.0 / runs, "share": (us / grand) if grand else 0.0, "count": len(nodes[op])}
        for op, us in total_us.items()
    ]
    return sorted(rows, key=lambda r: (-r["total_ms"], r["op_type"]))


def profile_top_ops(
    path: PathLike,
    batch: int = 1,
    input_shape: Sequence[int] | None = None,
    provider: str = "CPUExecutionProvider",
    top: int = 10,
    runs: int = 10,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """The ``top`` operator types by kernel time: ``[{"op_type", "total_ms", "share", "count"}]``.

    Runs ``runs`` inferences (after one untimed warm-up) under onnxruntime's profiler and deletes
    the profile file after reading it.
    """
    with tempfile.TemporaryDirectory(prefix="edgekd-profile-") as tmp:
        sess = make_session(path, provider=provider, threads=threads, profile=True,
                            profile_prefix=Path(tmp) / "ort_profile")
        feed = fixed_feed(sess, batch, input_shape)
        for _ in range(runs + 1):
            sess.run(None, feed)
        events = _read_events(sess.end_profiling())
    return aggregate_node_events(_drop_first_run(events), runs)[:top]


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
