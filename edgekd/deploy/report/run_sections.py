"""Report sections beyond the three models: robustness, the gate, the training/export stages,
the student choice and the environment. Every number is read from the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...stage_specs import STAGES
from .doc import MISSING, Image, Paragraph, Section, Table, flatten, num, ordered_models, pct, value

# Shown only when the export stage recorded no note (an older manifest); it says it was measured outside this run.
DEFAULT_STUDENT_NOTE = (
    "No student-choice note was recorded for this run. From the project's design notes (measured with "
    "onnxruntime's own static INT8 QDQ quantization on a CPU with AVX-512 VNNI and AMX, not in this run): "
    "MobileNetV2 ran at ×0.5–0.66 of its fp32 latency and ×0.29 of its size, while MobileNetV3-small barely "
    "gained (×0.9 at batch 1, ×1.13 at batch 32) because hardswish and SE blocks do not quantize well in "
    "onnxruntime. That is why the INT8 student is a MobileNetV2 by default."
)


def num4(x: Any) -> str:
    return num(x, 4)


def _robust_rows(models: dict[str, Any], names: list[str]) -> list[list[str]]:
    rob = {n: models[n].get("robustness") or {} for n in names}

    def row(label: str, get: Any, fmt: Any = pct) -> list[str]:
        return [label, *(fmt(get(rob[n])) for n in names)]

    rows = [["clean accuracy", *(pct(models[n].get("accuracy")) for n in names)]]
    rows.append(row("corruption mean accuracy", lambda r: r.get("corruption", {}).get("mean_accuracy")))
    rows.append(row("mCE", lambda r: r.get("corruption", {}).get("mce"), num))
    rows.append(row("relative mCE", lambda r: r.get("corruption", {}).get("relative_mce"), num))
    attacks = sorted({(a, e) for r in rob.values() for a, eps in (r.get("adversarial") or {}).items() for e in eps})
    for a, e in attacks:
        rows.append(row(f"adversarial {a}, ε={e}", lambda r, a=a, e=e: (r.get("adversarial") or {}).get(a, {}).get(e)))
    rows.append(row("ECE", lambda r: r.get("calibration", {}).get("ece"), num4))
    rows.append(row("ECE, temperature scaled", lambda r: r.get("calibration", {}).get("ece_temperature_scaled"), num4))
    rows.append(row("temperature", lambda r: r.get("calibration", {}).get("temperature"), num))
    for ood in sorted({k for r in rob.values() for k in (r.get("ood") or {})}):
        for score in ("auroc_msp", "auroc_energy"):
            rows.append(row(f"OOD {ood}, AUROC ({score.split('_')[1]})",
                            lambda r, o=ood, s=score: (r.get("ood") or {}).get(o, {}).get(s), num4))
    return rows


def robustness_section(check: dict[str, Any], plots: dict[str, Path]) -> Section | None:
    """Corruption, adversarial, calibration and OOD numbers per model (absent when robustness was off)."""
    models = check["models"]
    names = [n for n in ordered_models(models) if models[n].get("robustness")]
    if not names:
        return None
    sec = Section("Robustness", [
        Paragraph("Accuracies in %; mCE is relative to the reference model's corruption errors (lower is better); "
                  "ECE is the expected calibration error (lower is better); AUROC separates in- from "
                  "out-of-distribution inputs (higher is better). ε is on the [0, 1] pixel scale."),
        Table(["", *names], _robust_rows(models, names)),
    ])
    for key, caption in (("severity_curves", "Accuracy vs corruption severity"),
                         ("reliability", "Reliability diagram")):
        if key in plots:
            sec.blocks.append(Image(plots[key], caption))
    return sec


def gate_section(manifest_data: dict[str, Any]) -> Section | None:
    """The gate's verdict and each check it made, as recorded."""
    gate = manifest_data.get("stages", {}).get("gate")
    if not gate:
        return None
    m = gate.get("metrics", {})
    passed = m.get("passed", gate.get("passed"))
    verdict = MISSING if passed is None else ("PASS" if passed else "FAIL")
    sec = Section("Gate", [Paragraph(f"Verdict: {verdict}")])
    budgets = [(k, v) for k, v in flatten((manifest_data.get("config") or {}).get("budgets") or {}) if v is not None]
    if budgets:  # the targets this run was held to: its own config, not the project's defaults
        sec.blocks.append(Table(["budget", "target"], [[k, value(v)] for k, v in budgets], caption="Budgets from this run's config"))
    checks = m.get("checks")
    if isinstance(checks, list) and checks and all(isinstance(c, dict) for c in checks):
        keys = list(dict.fromkeys(k for c in checks for k in c))
        sec.blocks.append(Table(keys, [[value(c.get(k)) for k in keys] for c in checks]))
    rest = [(k, v) for k, v in flatten({k: v for k, v in m.items() if k not in ("passed", "checks")})]
    if rest:
        sec.blocks.append(Table(["metric", "value"], [[k, value(v)] for k, v in rest]))
    return sec


def stages_section(manifest_data: dict[str, Any]) -> Section | None:
    """Training and export: each stage's recorded time and scalar metrics (accuracies, epochs, node counts, parity)."""
    stages = manifest_data.get("stages", {})
    sec = Section("Training and export stages")
    timing = [[s, value(stages[s].get("seconds")), str(stages[s].get("status", MISSING))]
              for s in (spec.name for spec in STAGES if not spec.always) if s in stages]
    if timing:
        sec.blocks.append(Table(["stage", "seconds", "status"], timing))
    for s in (spec.name for spec in STAGES if spec.report_metrics):
        metrics = (stages.get(s) or {}).get("metrics") or {}
        rows = [[k, value(v)] for k, v in flatten(metrics)]
        if rows:
            sec.blocks.append(Table(["metric", "value"], rows, caption=f"{s} metrics"))
    return sec if sec.blocks else None


def student_note(manifest_data: dict[str, Any]) -> str:
    """The export stage's recorded note (stage extra fields land at the entry's top level, or under 'extra')."""
    export = manifest_data.get("stages", {}).get("export") or {}
    note = export.get("student_choice_note") or (export.get("extra") or {}).get("student_choice_note")
    return str(note) if note else DEFAULT_STUDENT_NOTE


def student_section(manifest_data: dict[str, Any]) -> Section:
    arch = ((manifest_data.get("config") or {}).get("student") or {}).get("arch")
    blocks: list[Any] = [Paragraph(f"Student architecture in this run: {arch}.")] if arch else []
    return Section("Why this student", [*blocks, Paragraph(student_note(manifest_data))])


def environment_section(manifest_data: dict[str, Any]) -> Section:
    env = manifest_data.get("environment")
    if not env:
        return Section("Environment", [Paragraph("The manifest records no environment.")])
    cpu = env.get("cpu") or {}
    flags = [k for k, v in (cpu.get("isa") or {}).items() if v]
    rows = [["CPU", str(cpu.get("model", MISSING))], ["cores", value(cpu.get("cores"))],
            ["ISA", ", ".join(flags) or "none of the listed flags"],
            ["python", str(env.get("python", MISSING))], ["platform", str(env.get("platform", MISSING))]]
    rows += [[pkg, str(v) if v else "not installed"] for pkg, v in sorted((env.get("versions") or {}).items())]
    return Section("Environment", [Table(["", "value"], rows, caption="The machine and versions the run used.")])
