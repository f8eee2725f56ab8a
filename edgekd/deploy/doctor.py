"""``edgekd doctor``: explain why an INT8 ONNX model is (or is not) faster than fp32 in onnxruntime.

It lets onnxruntime optimize the graph exactly as a session would, reads the optimized graph back
with onnx, and compares it with the file: which QuantizeLinear/DequantizeLinear nodes were fused
into int8 kernels, which compute ops stayed float (and what fed them), the int8 types, and the
CPU's int8 instructions. A list of small rules turns those facts into plain-language findings.

Imports no torch: it runs in the torch-free CI job.
"""
from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import onnx

from ..environment import cpu_info
from ..errors import report_error
from ..hardware import detect_cpu_features, int8_support
from .doctor_latency import (DEPTHWISE_ACTION, conv_split, conv_split_text, depthwise_cause, depthwise_slower,
                             float_ops, float_ops_text, latency_table, measured_verdict, profile_overhead,
                             runtime_float_nodes, setting_text, slower_settings)
from .mixed_precision import kept_float_layers, mixed_precision_text
from .onnx_io import TEMPERATURE_NODE, constants, load_model, logits_tensors, producers
from .runtime import make_session, measure_latency

# Kernels that compute in int8 (ONNX domain and com.microsoft contrib ops).
INT8_KERNELS = frozenset({
    "QLinearConv", "NhwcQLinearConv", "ConvInteger", "QLinearConvTranspose",
    "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
    "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat", "QLinearReduceMean", "QLinearWhere",
    "DynamicQuantizeLinear", "QAttention",
})
# The heavy compute ops, by family, so "17 of 52 Conv" counts float and int8 forms together.
FAMILY = {
    "Conv": "Conv", "FusedConv": "Conv", "NhwcFusedConv": "Conv", "QLinearConv": "Conv", "NhwcQLinearConv": "Conv",
    "ConvInteger": "Conv",
    "ConvTranspose": "ConvTranspose", "QLinearConvTranspose": "ConvTranspose",
    "Gemm": "Gemm/MatMul", "FusedGemm": "Gemm/MatMul", "MatMul": "Gemm/MatMul", "FusedMatMul": "Gemm/MatMul",
    "QGemm": "Gemm/MatMul", "QLinearMatMul": "Gemm/MatMul", "MatMulInteger": "Gemm/MatMul",
    "MatMulIntegerToFloat": "Gemm/MatMul", "DynamicQuantizeMatMul": "Gemm/MatMul",
}
# Element-wise / pooling ops that onnxruntime's CPU kernels run in float only.
FLOAT_ONLY = frozenset({
    "HardSigmoid", "HardSwish", "Sigmoid", "Mul", "Add", "Sub", "Div", "GlobalAveragePool", "AveragePool",
    "Softmax", "BatchNormalization", "Erf", "Tanh", "Gelu", "LayerNormalization",
})
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
TINY_PARAMS = 1_000_000  # below this, per-inference overheads are a large share of batch-1 latency
TINY_LATENCY_MS = 1.0


# ----------------------------------------------------------------------------- graph facts

def optimized_graph(path: Path, provider: str, level: str) -> onnx.ModelProto:
    """The graph onnxruntime runs after its optimizations at ``level`` (none|basic|extended|all), read back."""
    with tempfile.TemporaryDirectory(prefix="edgekd-doctor-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        # the session exists only to write the optimized graph; it is never run
        make_session(path, provider=provider, optimized_model_path=out, graph_optimization=level)
        return load_model(out)


def _numel(t: onnx.TensorProto) -> int:
    size = 1
    for d in t.dims:
        size *= d
    return size


def _quant_types(model: onnx.ModelProto) -> dict[str, Any]:
    """Activation and weight int8 types from the Q/DQ nodes of the original file."""
    consts = constants(model)
    made_by = producers(model)
    act, weights, bias, narrowed = Counter(), Counter(), Counter(), Counter()
    granularity, stored_float = Counter(), 0
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        scale = consts.get(n.input[1])
        src = consts.get(n.input[0])
        per = "per-channel" if scale is not None and scale.size > 1 else "per-tensor"
        if n.op_type == "DequantizeLinear" and src is not None:  # int8 initializer -> DQ: a stored weight/bias
            kind = str(src.dtype)
            if kind == "int32":
                bias[kind] += 1
                stored = _stored_dtype(n.input[0], made_by, consts)
                if stored != kind:
                    narrowed[f"{stored} biases"] += 1
            else:
                weights[kind] += 1
                granularity[per] += 1
                if per == "per-channel" and _stored_dtype(n.input[1], made_by, consts) == "float16":
                    narrowed["float16 weight scales (times one float32 factor)"] += 1
        elif n.op_type == "QuantizeLinear" and src is not None:  # float weight quantized at load time
            weights[str(zp.dtype) if zp is not None else "uint8"] += 1
            granularity[per] += 1
            stored_float += 1
        elif n.op_type == "QuantizeLinear":
            act[str(zp.dtype) if zp is not None else "uint8"] += 1
    return {"activations": dict(act), "weights": dict(weights), "bias": dict(bias),
            "weight_granularity": dict(granularity), "weights_stored_float": stored_float,
            "narrowed_storage": dict(narrowed)}


def _stored_dtype(name: str, made_by: dict[str, onnx.NodeProto], consts: dict[str, Any]) -> str:
    """The dtype a constant is stored in: behind ``Cast(x)`` or ``Mul(Cast(x), factor)`` (the exporter's
    narrowed storage, ``edgekd.exporting.slim``) it is ``x``'s, otherwise the constant's own."""
    node = made_by.get(name)
    if node is not None and node.op_type == "Mul":
        node = next((made_by[i] for i in node.input if i in made_by and made_by[i].op_type == "Cast"), None)
    if node is not None and node.op_type == "Cast" and node.input[0] in consts:
        return str(consts[node.input[0]].dtype)
    return str(consts[name].dtype) if name in consts else "unknown"


def _float_compute(opt: onnx.ModelProto) -> list[dict[str, str]]:
    """Heavy compute nodes that stayed float, each with what feeds its data input (the usual cause)."""
    prod = producers(opt)
    inputs = {i.name for i in opt.graph.input}
    out = []
    for n in opt.graph.node:
        if FAMILY.get(n.op_type) and n.op_type not in INT8_KERNELS:
            src = n.input[0] if n.input else ""
            feeder = prod[src].op_type if src in prod else ("graph input" if src in inputs else "constant")
            out.append({"name": n.name, "op_type": n.op_type, "family": FAMILY[n.op_type], "input_from": feeder})
    return out


def _boundary_qdq(model: onnx.ModelProto) -> int:
    """Q/DQ nodes at the model's boundary: a QuantizeLinear on a graph input, a DequantizeLinear
    producing a graph output. Every int8 model needs them, so they are not a missed fusion."""
    inputs = {i.name for i in model.graph.input}
    outputs = logits_tensors(model)
    return sum(1 for n in model.graph.node
               if (n.op_type == "QuantizeLinear" and n.input and n.input[0] in inputs)
               or (n.op_type == "DequantizeLinear" and n.output and n.output[0] in outputs))


def _param_count(model: onnx.ModelProto) -> int:
    return sum(_numel(t) for t in model.graph.initializer if len(t.dims) > 1)


def analyze(path: Path, provider: str) -> dict[str, Any]:
    """Graph facts for ``path``: Q/DQ before and after optimization, int8 kernels, float ops, types."""
    src = load_model(path)
    # EXTENDED fuses Q/DQ into int8 kernels and keeps node names; ALL adds the CPU-specific layouts
    # (NCHWc, NHWC) that a session actually runs, so both are reported.
    ext = optimized_graph(path, provider, "extended")
    full = optimized_graph(path, provider, "all")
    src_ops = Counter(n.op_type for n in src.graph.node)
    ext_ops = Counter(n.op_type for n in ext.graph.node)
    families_src = Counter(FAMILY[o] for n in src.graph.node if (o := n.op_type) in FAMILY)
    int8_by_family = Counter(FAMILY[n.op_type] for n in ext.graph.node
                             if n.op_type in INT8_KERNELS and n.op_type in FAMILY)
    float_ops = _float_compute(ext)
    qdq_before = {op: src_ops.get(op, 0) for op in QDQ_OPS}
    qdq_after = {op: ext_ops.get(op, 0) for op in QDQ_OPS}
    return {
        "model": str(path),
        "provider": provider,
        "parameters": _param_count(src),
        "ops_original": dict(src_ops),
        "ops_optimized": dict(ext_ops),
        "ops_runtime": dict(Counter(n.op_type for n in full.graph.node)),
        "qdq": {"original": qdq_before, "remaining": qdq_after,
                "fused": sum(qdq_before.values()) - sum(qdq_after.values()),
                "boundary": _boundary_qdq(ext)},
        "int8_kernels": {op: c for op, c in ext_ops.items() if op in INT8_KERNELS},
        "compute": {fam: {"total": families_src[fam], "int8": int8_by_family.get(fam, 0),
                          "float": sum(1 for f in float_ops if f["family"] == fam)} for fam in sorted(families_src)},
        "float_compute": float_ops,
        # the temperature Mul of a scaled file sits after the last int8 kernel, not between two
        "float_elementwise": dict(Counter(n.op_type for n in ext.graph.node
                                          if n.op_type in FLOAT_ONLY and n.name != TEMPERATURE_NODE)),
        "runtime_float": runtime_float_nodes(full, float_ops),  # what stays float and why (doctor_latency)
        "types": _quant_types(src),
        "io": {"inputs": [i.name for i in src.graph.input if i.name not in {t.name for t in src.graph.initializer}],
               "outputs": [o.name for o in src.graph.output]},
    }


# ----------------------------------------------------------------------------- latency

def _median_ms(path: Path, provider: str, warmup: int = 5, runs: int = 30) -> float:
    """Batch 1, 1 thread median latency (ms) on the runtime's seeded uniform [0, 1] input."""
    return measure_latency(path, batch=1, threads=1, warmup=warmup, runs=runs, provider=provider)["median_ms"]


# ----------------------------------------------------------------------------- rules

Finding = dict[str, str]
Rule = Callable[[dict[str, Any]], "Finding | None"]


def is_quantized(d: dict[str, Any]) -> bool:
    return sum(d["qdq"]["original"].values()) > 0 or bool(d["int8_kernels"])


def rule_float_compute(d: dict[str, Any]) -> Finding | None:
    kept = set(d.get("kept_float") or [])  # float on purpose: rule_mixed_precision states them
    unplanned = [f for f in d["float_compute"] if f["name"] not in kept]
    if not is_quantized(d) or not unplanned:
        return None
    causes = Counter(f["input_from"] for f in unplanned)
    names = ", ".join(f["name"] or f["op_type"] for f in unplanned[:12])
    more = "" if len(unplanned) <= 12 else f" (+{len(unplanned) - 12} more)"
    why = ", ".join(f"{c} fed by {src}" for src, c in causes.most_common())
    return {"level": "warn", "text": f"{len(unplanned)} compute node(s) stayed float: {names}{more}. "
            f"Their data inputs were not quantized ({why}); put QuantizeLinear/DequantizeLinear "
            "on those inputs (or quantize the op that feeds them) so onnxruntime can fuse them."}


def rule_float_elementwise(d: dict[str, Any]) -> Finding | None:
    ew = d["float_elementwise"]
    if not is_quantized(d) or not ew:
        return None
    listing = ", ".join(f"{op} x{c}" for op, c in sorted(ew.items(), key=lambda kv: -kv[1]))
    hard = " HardSwish/HardSigmoid and SE blocks (MobileNetV3) are the usual source." if (
        {"HardSwish", "HardSigmoid"} & set(ew)) else ""
    return {"level": "info", "text": f"Float element-wise ops between int8 kernels: {listing}. Each needs a "
            f"dequantize before and a quantize after it.{hard}"}


def rule_leftover_qdq(d: dict[str, Any]) -> Finding | None:
    boundary = d["qdq"].get("boundary", 0)
    inner = sum(d["qdq"]["remaining"].values()) - boundary  # the boundary ones are needed, not missed fusions
    if not is_quantized(d) or inner <= 0:
        return None
    return {"level": "info", "text": f"{inner} QuantizeLinear/DequantizeLinear remain after optimization beyond "
            f"the model's input/output boundary (not counting the {boundary} at the boundary); each is a "
            "float<->int8 conversion at run time."}


def rule_weights_stored_float(d: dict[str, Any]) -> Finding | None:
    n = d["types"]["weights_stored_float"]
    if not n:
        return None
    return {"level": "warn", "text": f"{n} weight tensor(s) are stored as float32 and quantized when the session "
            "loads: the file is not smaller than fp32. Fold QuantizeLinear on constant weights at export."}


def rule_isa(d: dict[str, Any]) -> Finding | None:
    if not is_quantized(d):
        return None
    int8 = cpu_int8(d["cpu"])
    return {"level": int8["level"], "text": int8["text"]}


def cpu_int8(cpu: dict[str, Any]) -> dict[str, str]:
    """What the CPU offers int8 (``edgekd.hardware.int8_support``: x86 VNNI/AVX2, aarch64 asimddp/i8mm);
    from the ``isa`` flags when the record predates the ``int8`` entry."""
    return cpu.get("int8") or int8_support(frozenset(k for k, v in cpu.get("isa", {}).items() if v),
                                           cpu.get("machine", ""))


def rule_tiny(d: dict[str, Any]) -> Finding | None:
    lat = d.get("latency") or {}
    small_lat = lat.get("int8_ms") is not None and lat["int8_ms"] < TINY_LATENCY_MS
    if not is_quantized(d) or not (d["parameters"] < TINY_PARAMS or small_lat):
        return None
    return {"level": "info", "text": f"Small model ({d['parameters']:,} weights"
            + (f", {lat['int8_ms']:.3f} ms int8" if lat.get("int8_ms") is not None else "")
            + "): at batch 1 fixed per-inference overheads (input quantize, layout transposes, "
            "session dispatch) are a large share of the time, so the int8 gain is smaller than the op counts suggest."}


def rule_measured(d: dict[str, Any]) -> Finding | None:
    lat = d.get("latency")
    if not lat:
        return None
    ratio = lat["int8_ms"] / lat["fp32_ms"]
    level = "ok" if ratio < 0.9 else "warn"
    return {"level": level, "text": f"Measured at batch 1, 1 thread ({d['provider']}): int8 {lat['int8_ms']:.3f} ms "
            f"vs fp32 {lat['fp32_ms']:.3f} ms, x{ratio:.2f}."}


def rule_latency_table(d: dict[str, Any]) -> Finding | None:
    table = d.get("latency_table") or []
    if not table:
        return None
    rows = "; ".join(f"{setting_text(r)} x{r['ratio']:.2f}" for r in table)
    slow = [r for r in table if r["ratio"] > 1.0]
    return {"level": "warn" if slow else "ok", "text": f"INT8/FP32 median latency in the check stage: {rows}."}


def rule_conv_split(d: dict[str, Any]) -> Finding | None:
    split = d.get("conv_split")
    if not split:
        return None
    text = conv_split_text(split)
    if not depthwise_slower(split):
        return {"level": "info", "text": text}
    # even where INT8 wins overall, this is what holds its speed-up back; where it lost somewhere the
    # verdict already gives the cause and the action
    if not slower_settings(d.get("latency_table") or []):
        text += f" {depthwise_cause(split)}; {DEPTHWISE_ACTION}."
    return {"level": "warn", "text": text}


def rule_mixed_precision(d: dict[str, Any]) -> Finding | None:
    """Layers kept float on purpose (qat.keep_float), with their measured cost when the check stage has it."""
    mp = d.get("mixed_precision") or ({"float_layers": d["kept_float"]} if d.get("kept_float") else None)
    return {"level": "info", "text": mixed_precision_text(mp)} if mp else None


def rule_float_ops(d: dict[str, Any]) -> Finding | None:
    return {"level": "info", "text": float_ops_text(d)} if is_quantized(d) else None


RULES: list[Rule] = [rule_float_compute, rule_float_elementwise, rule_leftover_qdq, rule_weights_stored_float,
                     rule_isa, rule_tiny, rule_measured, rule_latency_table, rule_conv_split, rule_float_ops,
                     rule_mixed_precision]


def _family_phrase(d: dict[str, Any]) -> str:
    parts = []
    for fam, c in d["compute"].items():
        kernels = sorted(op for op in d["int8_kernels"] if FAMILY.get(op) == fam)
        parts.append(f"{c['int8']} of {c['total']} {fam} run as {'/'.join(kernels) or 'int8'}")
    return "; ".join(parts)


def verdict(d: dict[str, Any]) -> str:
    """One plain sentence: will INT8 be faster, and the main reason."""
    if not is_quantized(d):
        return ("This is an FP32 model: no QDQ nodes (QuantizeLinear/DequantizeLinear) and no int8 kernels; "
                "quantize it first (edgekd qat, then edgekd export writes model.int8.onnx).")
    cpu = cpu_int8(d["cpu"])["phrase"]
    total = sum(c["total"] for c in d["compute"].values())
    n_int8 = sum(c["int8"] for c in d["compute"].values())
    n_float = len(d["float_compute"])
    if total and n_int8 == 0:
        return (f"INT8 will not be faster: onnxruntime ({d['provider']}) fused none of the {total} compute ops into "
                "int8 kernels, so they run in float between extra quantize/dequantize steps.")
    if n_float == 0:  # a prediction from the graph only: diagnose() puts a measurement first when it has one
        return f"INT8 can be faster: every compute op is an int8 kernel ({_family_phrase(d)}); {cpu}."
    stayed = "; ".join(
        f"{c['float']} of {c['total']} {fam} stayed float (fed by "
        + ", ".join(sorted({f["input_from"] for f in d["float_compute"] if f["family"] == fam})) + ")"
        for fam, c in d["compute"].items() if c["float"])
    head = "INT8 should be somewhat faster" if n_float <= 0.1 * total else "INT8 will not be much faster"
    return (f"{head}: {stayed}, their inputs were not quantized; {_family_phrase(d)}; {cpu}.")


# ----------------------------------------------------------------------------- public API

def diagnose(onnx_path: str | Path, provider: str = "CPUExecutionProvider",
             fp32_path: str | Path | None = None, check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Explain an ONNX model's INT8 status; with ``fp32_path`` also time both at batch 1, 1 thread.

    ``check`` is the run's ``stages.check.metrics``: its INT8-vs-FP32 latency table (every batch/thread
    setting) and INT8 profile lead the verdict; where INT8 was slower it names the setting, the likely
    causes and what to do (``edgekd.deploy.doctor_latency``). Returns a JSON-ready dict: graph facts
    (see ``analyze``), ``cpu``, optional ``latency`` and ``latency_table``, ``float_ops`` (what stays
    float and why), ``findings`` (list of {"level", "text"}) and ``verdict``.
    """
    path = Path(onnx_path)
    d = analyze(path, provider)
    d["cpu"] = cpu_info()
    d["cpu"]["int8"] = int8_support(detect_cpu_features().flags, d["cpu"].get("machine", ""))
    if fp32_path is not None:
        fp32 = Path(fp32_path)
        load_model(fp32)  # a clear error for a missing/corrupt reference before timing anything
        d["latency"] = {"batch": 1, "threads": 1, "int8_ms": _median_ms(path, provider),
                        "fp32_ms": _median_ms(fp32, provider), "fp32_model": str(fp32)}
    d["latency_table"] = latency_table(check) if check else []
    d["profile_overhead"] = profile_overhead(check) if check else {}
    d["conv_split"] = conv_split(check) if check else {}
    source = "the check stage"
    if not d["latency_table"] and d.get("latency"):
        lat = d["latency"]
        d["latency_table"] = [{"batch": 1, "threads": 1, "int8_ms": lat["int8_ms"], "fp32_ms": lat["fp32_ms"],
                               "ratio": lat["int8_ms"] / lat["fp32_ms"]}]
        source = "the doctor"
    d["float_ops"] = float_ops(d) if is_quantized(d) else []
    d["kept_float"] = kept_float_layers(path)
    d["mixed_precision"] = (check or {}).get("mixed_precision")
    d["findings"] = [f for rule in RULES if (f := rule(d)) is not None]
    measured = measured_verdict(d, d["latency_table"], source) if is_quantized(d) else None
    graph = verdict(d)
    if measured:  # the measurement decides; the graph facts follow as the explanation
        graph = graph.replace("INT8 can be faster: every", "Graph: every", 1)
    d["verdict"] = f"{measured} {graph}" if measured else graph
    return d


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "-"


def format_diagnosis(d: dict[str, Any]) -> str:
    """Human-readable text of a ``diagnose`` result: verdict first, then the facts behind it."""
    lines = [f"edgekd doctor: {d['model']} ({d['provider']})", "", f"Verdict: {d['verdict']}", ""]
    q = d["qdq"]
    lines.append(f"Q/DQ nodes: {q['original']['QuantizeLinear']} Q + {q['original']['DequantizeLinear']} DQ in the file; "
                 f"{q['remaining']['QuantizeLinear']} Q + {q['remaining']['DequantizeLinear']} DQ remain after "
                 f"optimization ({q['fused']} fused into int8 kernels, {q.get('boundary', 0)} at the "
                 "input/output boundary)")
    if d["int8_kernels"]:
        lines.append("int8 kernels: " + ", ".join(f"{op} x{c}" for op, c in sorted(d["int8_kernels"].items())))
    for fam, c in d["compute"].items():
        lines.append(f"{fam}: {c['total']} in the file, {c['int8']} int8, {c['float']} float")
    for f in d["float_compute"]:
        lines.append(f"  float: {f['name']} ({f['op_type']}, input from {f['input_from']})")
    t = d["types"]
    if t["activations"] or t["weights"]:
        lines.append(f"types: activations {_counts(t['activations'])}; weights {_counts(t['weights'])} "
                     f"({_counts(t['weight_granularity'])}); bias {_counts(t['bias'])}"
                     + (f"; narrowed storage: {_counts(t['narrowed_storage'])}" if t.get("narrowed_storage") else ""))
    isa = [k for k, v in d["cpu"]["isa"].items() if v]
    lines.append(f"CPU: {d['cpu']['model']} ({', '.join(isa) or 'no listed ISA extensions'})")
    lines.append("runtime kernels (ORT_ENABLE_ALL): "
                 + ", ".join(f"{op} x{c}" for op, c in sorted(d["ops_runtime"].items(), key=lambda kv: -kv[1])))
    if d["findings"]:
        lines += ["", "Findings:"] + [f"  [{f['level']}] {f['text']}" for f in d["findings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgekd.deploy.doctor MODEL.onnx [--fp32 FP32.onnx] [--provider P]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgekd.deploy.doctor", description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--fp32", help="the fp32 model, to compare latency at batch 1 / 1 thread")
    p.add_argument("--provider", default="CPUExecutionProvider")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    try:
        print(format_diagnosis(diagnose(args.model, provider=args.provider, fp32_path=args.fp32)))
    except Exception as e:  # printed as a message (exit 2, or 3 for a bug), or re-raised with --debug
        return report_error(e, "edgekd doctor", args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
