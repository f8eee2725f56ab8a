"""The doctor reads the measurement: where INT8 lost to FP32, the likely causes it can see, what to do.

``latency_table`` pairs the check stage's INT8 and FP32 latency rows (``stages.check.metrics``)
by (batch, threads); ``slower_settings`` keeps those where INT8 took longer. ``causes_and_actions``
names, for those settings, the causes visible in the measurement and in the graph onnxruntime runs:
thread-pool overhead on a tiny graph, fixed per-inference costs at a small batch, float ops
between the int8 kernels (the in-graph normalization, layout transposes) with their profiled share,
int8 depthwise convs slower than the float ones (``conv_split`` of both files' profiles), and says
what to do. ``float_ops`` states what stays float in the INT8 graph and why.

Imports no torch: it runs in the torch-free CI job.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import onnx

# op types of the runtime graph that are float or format conversions, with the reason they are there
BOUNDARY_OPS = ("QuantizeLinear", "DequantizeLinear")
LAYOUT_OPS = ("Transpose", "ReorderInput", "ReorderOutput")
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
NORMALIZATION_OPS = ("Sub", "Div")
# ops whose time the int8 profile attributes to work that is not an int8 kernel
OVERHEAD_OPS = NORMALIZATION_OPS + BOUNDARY_OPS + LAYOUT_OPS
TINY_PARAMS = 1_000_000  # as the doctor's rule_tiny: below this, per-call overheads weigh at batch 1
TINY_MS = 1.0


def threads_text(threads: int) -> str:
    """``threads`` as the check stage means it (0 = all cores)."""
    return "all cores" if threads == 0 else f"{threads} thread{'s' if threads != 1 else ''}"


def setting_text(row: Mapping[str, Any]) -> str:
    return f"batch {row['batch']} with {threads_text(row['threads'])}"


def latency_table(check: Mapping[str, Any], int8: str = "student_int8", fp32: str = "student_fp32") -> list[dict[str, Any]]:
    """INT8 vs FP32 median latency per (batch, threads) the check stage measured both at; [] when it did not."""
    models = check.get("models") or {}
    a = {(r["batch"], r["threads"]): r["median_ms"] for r in (models.get(int8) or {}).get("latency", [])}
    b = {(r["batch"], r["threads"]): r["median_ms"] for r in (models.get(fp32) or {}).get("latency", [])}
    return [{"batch": k[0], "threads": k[1], "int8_ms": a[k], "fp32_ms": b[k], "ratio": a[k] / b[k]}
            for k in sorted(a) if k in b and b[k] > 0]


def slower_settings(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows where INT8 was slower than FP32 (ratio > 1)."""
    return [r for r in table if r["ratio"] > 1.0]


def profile_overhead(check: Mapping[str, Any], int8: str = "student_int8") -> dict[str, float]:
    """Share of the INT8 file's profiled kernel time per non-int8-kernel op type (normalization, Q/DQ, layout)."""
    rows = ((check.get("models") or {}).get(int8) or {}).get("profile_top_ops") or []
    return {r["op_type"]: float(r.get("share", 0.0)) for r in rows if r.get("op_type") in OVERHEAD_OPS}


def conv_split(check: Mapping[str, Any], int8: str = "student_int8",
               fp32: str = "student_fp32") -> dict[str, dict[str, float]]:
    """Conv kernel time per inference, depthwise vs the other convs, of both files' check-stage profiles.

    ``{"int8": {...}, "fp32": {...}}``, each ``{"depthwise_ms", "depthwise_count", "other_ms", "other_count"}``;
    {} unless both profiles split their convs (``edgekd.deploy.runtime.profile``).
    """
    out: dict[str, dict[str, float]] = {}
    for key, model in (("int8", int8), ("fp32", fp32)):
        rows = ((check.get("models") or {}).get(model) or {}).get("profile_top_ops") or []
        convs = [r for r in rows if "depthwise_ms" in r]  # every conv row, once the profile split them
        if not any(r["depthwise_count"] for r in convs):
            return {}
        dw_ms = sum(float(r["depthwise_ms"]) for r in convs)
        dw_n = sum(int(r["depthwise_count"]) for r in convs)
        out[key] = {"depthwise_ms": dw_ms, "depthwise_count": dw_n,
                    "other_ms": sum(float(r["total_ms"]) for r in convs) - dw_ms,
                    "other_count": sum(int(r["count"]) for r in convs) - dw_n}
    return out


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b > 0 else "-"


def _convs(kind: str, i: Mapping[str, float], f: Mapping[str, float]) -> str:
    n_i, n_f = int(i[f"{kind}_count"]), int(f[f"{kind}_count"])
    return f"{n_i} {'depthwise' if kind == 'depthwise' else 'other'} convs" + (f" (FP32: {n_f})" if n_i != n_f else "")


def conv_split_text(split: Mapping[str, Mapping[str, float]]) -> str:
    """One sentence: INT8 against FP32 conv time, depthwise and the rest, from the check stage's profiles."""
    i, f = split["int8"], split["fp32"]
    return (f"Conv kernel time per inference in the check stage's profiles: {_convs('depthwise', i, f)}, INT8 "
            f"{i['depthwise_ms']:.3f} ms against FP32 {f['depthwise_ms']:.3f} ms "
            f"({_ratio(i['depthwise_ms'], f['depthwise_ms'])}); {_convs('other', i, f)}, {i['other_ms']:.3f} "
            f"against {f['other_ms']:.3f} ms ({_ratio(i['other_ms'], f['other_ms'])}).")


# a 10-run profile moves a kernel group's time by a few per cent: slower means beyond this ratio
DEPTHWISE_SLOWER_RATIO = 1.10


def depthwise_slower(split: Mapping[str, Mapping[str, float]]) -> bool:
    """True when the INT8 file's depthwise convs took over ``DEPTHWISE_SLOWER_RATIO`` times the FP32 file's."""
    return bool(split) and split["int8"]["depthwise_ms"] > DEPTHWISE_SLOWER_RATIO * split["fp32"]["depthwise_ms"] > 0


def depthwise_cause(split: Mapping[str, Mapping[str, float]]) -> str:
    """Why the INT8 file's depthwise convs hold its speed-up back, with the two measured ratios."""
    i, f = split["int8"], split["fp32"]
    return ("onnxruntime's int8 depthwise conv kernel is slower than its float one on the CPU the check stage ran "
            f"on: the INT8 file's depthwise convs took {_ratio(i['depthwise_ms'], f['depthwise_ms'])} of the FP32 "
            f"file's depthwise time while the other convs took {_ratio(i['other_ms'], f['other_ms'])}")
DEPTHWISE_ACTION = ("this is the runtime's kernel, not the file: keeping depthwise convs float (qat.keep_float) adds "
                    "a quantize/dequantize pair around each, so measure it (edgekd sensitivity lists the layers); a "
                    "student with fewer depthwise layers, or a runtime with a faster int8 depthwise kernel, gains more")


def _normalization_ops(d: Mapping[str, Any]) -> dict[str, int]:
    return {op: c for op, c in d.get("ops_runtime", {}).items() if op in NORMALIZATION_OPS}


def causes_and_actions(d: Mapping[str, Any], table: list[dict[str, Any]],
                       profile: Mapping[str, float]) -> tuple[list[str], list[str]]:
    """(likely causes, what to do) for the settings where INT8 lost, from the table, the graph and the profile."""
    slow = slower_settings(table)
    if not slow:
        return [], []
    causes: list[str] = []
    actions: list[str] = []
    by_key = {(r["batch"], r["threads"]): r for r in table}
    # 1. thread-pool overhead: INT8 lost only with more threads, and won at the same batch on one thread
    multi = [r for r in slow if r["threads"] != 1 and by_key.get((r["batch"], 1), {}).get("ratio", 2.0) <= 1.0]
    if multi:
        r = multi[0]
        one = by_key[(r["batch"], 1)]
        tiny = d.get("parameters", 0) < TINY_PARAMS or r["int8_ms"] < TINY_MS
        causes.append(f"thread-pool overhead{' on a tiny graph' if tiny else ''} ({d.get('parameters', 0):,} weights): "
                      f"at {setting_text(r)} INT8 took {r['int8_ms']:.3f} ms against {one['int8_ms']:.3f} ms on one "
                      "thread; the int8 kernels' work per call is too small to split, so waking and joining threads "
                      "costs more than it saves, and on a CPU shared with other work every run also waits for each "
                      "of its threads to be scheduled")
        actions.append(f"run INT8 with 1 thread at batch {r['batch']} (x{one['ratio']:.2f} of FP32 there), or "
                       "measure which thread count is fastest for your batch and pin it (intra_op_num_threads)")
    # 2. fixed per-inference costs: INT8 lost at a small batch and won at a larger one
    batches = sorted({r["batch"] for r in table})
    small = [r for r in slow if r["batch"] == batches[0] and r not in multi]  # not explained by threads
    won_big = [r for r in table if r["batch"] > batches[0] and r["ratio"] <= 1.0]
    if small and won_big:
        best = min(won_big, key=lambda r: r["ratio"])
        causes.append(f"fixed per-inference costs at batch {batches[0]} (input quantize, layout transposes, one "
                      "requantization per kernel) are a large share of a sub-millisecond run")
        actions.append(f"raise the batch: at {setting_text(best)} INT8 is x{best['ratio']:.2f} of FP32")
    # 3. float ops between int8 kernels, with their profiled share where the check stage profiled
    norm = _normalization_ops(d)
    if norm:
        share = sum(profile.get(op, 0.0) for op in NORMALIZATION_OPS)
        measured = f", {share:.1%} of the INT8 kernel time" if share else ""
        causes.append("the in-graph mean/std normalization runs in float before the first int8 kernel ("
                      + ", ".join(f"{op} x{c}" for op, c in sorted(norm.items())) + f"{measured})")
        actions.append("fold the normalization into the first conv (exact away from the zero-padded border) or "
                       "into the input QuantizeLinear's scale and zero point, or keep the first conv in float")
    layout = {op: c for op, c in d.get("ops_runtime", {}).items() if op in LAYOUT_OPS}
    if layout:
        share = sum(profile.get(op, 0.0) for op in LAYOUT_OPS)
        measured = f", {share:.1%} of the INT8 kernel time" if share else ""
        causes.append("layout conversions around the int8 kernels ("
                      + ", ".join(f"{op} x{c}" for op, c in sorted(layout.items())) + f"{measured}): onnxruntime "
                      "runs QLinearConv channels-last (NHWC) and converts the NCHW input and output")
    other = {op: c for op, c in d.get("float_elementwise", {}).items() if op not in NORMALIZATION_OPS}
    if other:
        causes.append("float element-wise ops between int8 kernels ("
                      + ", ".join(f"{op} x{c}" for op, c in sorted(other.items())) + "), each behind a dequantize "
                      "and before a quantize")
        actions.append("choose a student whose activations have int8 kernels (ReLU/ReLU6 rather than HardSwish/SE)")
    split = d.get("conv_split") or {}
    if depthwise_slower(split):
        causes.append(depthwise_cause(split))
        actions.append(DEPTHWISE_ACTION)
    if d.get("float_compute"):
        causes.append(f"{len(d['float_compute'])} compute op(s) stayed float between int8 kernels (see below)")
        actions.append("quantize the inputs of the float compute ops so onnxruntime can fuse them")
    return causes, actions


def measured_verdict(d: Mapping[str, Any], table: list[dict[str, Any]], source: str) -> str | None:
    """The verdict's first sentence from a measurement, or None without one."""
    if not table:
        return None
    slow = slower_settings(table)
    if not slow:
        lo, hi = min(r["ratio"] for r in table), max(r["ratio"] for r in table)
        span = f"x{lo:.2f}" if abs(hi - lo) < 0.005 else f"x{lo:.2f} to x{hi:.2f}"
        return f"INT8 is faster than FP32 at every setting {source} measured ({span} of FP32's latency)."
    where = "; ".join(f"{setting_text(r)}: {r['int8_ms']:.3f} vs {r['fp32_ms']:.3f} ms, x{r['ratio']:.2f}"
                      for r in slow)
    causes, actions = causes_and_actions(d, table, d.get("profile_overhead", {}))
    text = f"INT8 is SLOWER than FP32 at {where} ({source})."
    if causes:
        text += " Likely cause: " + "; ".join(causes) + "."
    if actions:
        text += " What to do: " + "; ".join(actions) + "."
    return text


# ----------------------------------------------------------------------------- what stays float

def _is_int8_kernel(op: str) -> bool:
    return op.startswith("QLinear") or op in ("QGemm", "NhwcQLinearConv", "ConvInteger", "MatMulInteger",
                                               "DynamicQuantizeLinear", "QAttention")


def runtime_float_nodes(model: "onnx.ModelProto", float_compute: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Each node of the runtime graph (ORT_ENABLE_ALL) that is not an int8 kernel, with why it is there."""
    from .onnx_io import TEMPERATURE_NODE, constants, logits_tensors, producers

    consts = constants(model)
    prod = producers(model)
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    outputs = logits_tensors(model)
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    fed_by_input: set[str] = set(inputs)  # float tensors computed from the pixels before any int8 kernel
    for n in model.graph.node:
        if n.op_type in NORMALIZATION_OPS + ("Transpose",) and n.input and n.input[0] in fed_by_input:
            fed_by_input.update(n.output)
    float_names = {f["name"] for f in (float_compute or [])}
    out = []
    for n in model.graph.node:
        op = n.op_type
        if _is_int8_kernel(op):
            continue
        if op in NORMALIZATION_OPS and n.input[0] in fed_by_input:
            why = "the model's mean/std normalization (edgekd.models.normalize), on the float pixels"
        elif op == "QuantizeLinear" and n.input[0] in fed_by_input:
            why = "quantizes the float pixel input once, before the first int8 kernel"
        elif op == "DequantizeLinear" and n.output[0] in outputs:
            why = "the logits leave the graph as float"
        elif n.name == TEMPERATURE_NODE:
            why = "the softmax temperature (export.temperature_scaling): logits x 1/T, one float multiply at the end"
        elif op in LAYOUT_OPS:
            why = "layout change between the file's NCHW and the channels-last int8 kernels"
        elif op in SHAPE_OPS or op in BOUNDARY_OPS:
            why = _shape_island_reason(n, prod, consumers, consts)
        elif n.name in float_names or op in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"):
            why = "a compute op whose input is not quantized"
        else:
            why = "onnxruntime has no int8 kernel for it on this provider"
        out.append({"op_type": op, "name": n.name, "why": why})
    return out


def _shape_island_reason(n: Any, prod: dict[str, Any], consumers: dict[str, list[Any]],
                         consts: dict[str, Any]) -> str:
    """Why a shape op (or the Q/DQ around one) stayed: its own quantizer with other scales than its input's."""
    shape = n
    if n.op_type == "DequantizeLinear":
        shape = next((c for c in consumers.get(n.output[0], []) if c.op_type in SHAPE_OPS), None)
    elif n.op_type == "QuantizeLinear":
        shape = prod.get(n.input[0])
    if shape is None or shape.op_type not in SHAPE_OPS:
        return "a float<->int8 conversion between two kernels"
    dq = prod.get(shape.input[0])
    q = next((c for c in consumers.get(shape.output[0], []) if c.op_type == "QuantizeLinear"), None)
    if dq is not None and q is not None and dq.op_type == "DequantizeLinear":
        s_in, s_out = consts.get(dq.input[1]), consts.get(q.input[1])
        if s_in is not None and s_out is not None and float(s_in) != float(s_out):
            return (f"the {shape.op_type} has its own quantizer (scale {float(s_out):.6g} after it, {float(s_in):.6g} "
                    "before): onnxruntime drops DequantizeLinear -> shape op -> QuantizeLinear only when both sides "
                    "share scale and zero point, so it runs in float between a dequantize and a quantize")
    return f"around the shape-only {shape.op_type} (no arithmetic)"


def float_ops(d: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What stays float in the runtime graph, grouped by reason: ``[{"ops": {op type: count}, "why"}]``."""
    groups: dict[str, dict[str, int]] = {}
    for node in d.get("runtime_float", []):
        ops = groups.setdefault(node["why"], {})
        ops[node["op_type"]] = ops.get(node["op_type"], 0) + 1
    return [{"ops": ops, "why": why} for why, ops in groups.items()]


def float_ops_text(d: Mapping[str, Any]) -> str:
    """One sentence: what remains float in the INT8 graph and why."""
    groups = float_ops(d)
    if not groups:
        return "Nothing stays float in the INT8 graph onnxruntime runs."
    return "Float in the INT8 graph: " + "; ".join(
        ", ".join(f"{op} x{c}" for op, c in g["ops"].items()) + f" ({g['why']})" for g in groups) + "."
