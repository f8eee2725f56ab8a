"""What ``edgekd tune`` leaves in its folder: summary.json, the trial and Pareto tables, chosen.yaml, the report.

Every file is written atomically; ``summary.json`` records the sha256 of the others.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from ..config import config_from_dict
from ..errors import EdgekdError
from ..io import atomic_write_json, atomic_write_text, sha256_file
from .pareto import choose, pareto_front, taught, teacher_selection, teacher_table
from .space import ALPHA, METHOD, TEACHER, TEMPERATURE, WIDTH, SearchSpace, chosen_config
from .teachers import CachedTeacher, candidate_weights
from .trial import LatencySpec

PARAMS = (METHOD, TEACHER, TEMPERATURE, ALPHA, WIDTH)
COLUMNS = ("number", "state", *PARAMS, "val_accuracy", "latency_ms", "test_accuracy", "size_mb", "train_seconds")


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None or key in row.get("unused", ()):  # a knob the trial's method ignores (study.ignored_knobs)
        return "—"
    if key in ("val_accuracy", "test_accuracy"):
        return f"{100 * v:.2f} %"
    if isinstance(v, float):
        return f"{v:.3f}" if key != "train_seconds" else f"{v:.1f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS, error: bool = True) -> str:
    """Rows as a GitHub Markdown table (failed trials carry their error in the last column)."""
    cols = list(columns) + (["error"] if error else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, c).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def methods_without_one_teacher() -> set[str]:
    """The registered KD methods whose student does not learn from the trial's one teacher: ``reads_teacher``
    off (the no-KD baseline), ``self_teacher`` (self-distillation), and multi_teacher (an ensemble). Their
    trials say nothing about which teacher teaches best."""
    from ..losses import KD_LOSSES, loss_class
    from .space import MULTI_TEACHER

    classes = {name: loss_class(name) for name in KD_LOSSES.names()}
    return {name for name, cls in classes.items() if not cls.reads_teacher or cls.self_teacher} | {MULTI_TEACHER}


def summarize(base: dict[str, Any], space: SearchSpace, latency: LatencySpec, rows: list[dict[str, Any]],
              teachers: dict[str, CachedTeacher]) -> dict[str, Any]:
    """The tune folder's record: space, budget, every trial, the Pareto front, the choice, teacher selection."""
    chosen = choose(rows, latency.budget_ms)
    default = next((r for r in rows if r.get("default")), None)
    compared = taught(rows, latency.budget_ms, methods_without_one_teacher())
    tt = teacher_table(compared, {a: t.val_accuracy for a, t in teachers.items()})
    return {
        "config_name": base["name"], "space": space.describe(),
        "latency": {"batch": latency.batch, "threads": latency.threads, "runs": latency.runs,
                    "budget_ms": latency.budget_ms, "provider": latency.provider},
        "objective": "maximize INT8 validation accuracy (onnxruntime) subject to INT8 latency <= budget",
        "trials": rows,
        "failed": [r["number"] for r in rows if r["state"] == "FAIL"],
        "pareto": [r["number"] for r in pareto_front(rows)],
        "chosen": None if chosen is None else chosen["number"],
        "default": None if default is None else default["number"],
        "teachers": [{**r, "teacher_test_accuracy": teachers[r["teacher"]].test_accuracy} for r in tt],
        "teacher_selection": teacher_selection(tt, compared, chosen),
    }


def write_outputs(tune_dir: Path, base: dict[str, Any], space: SearchSpace, latency: LatencySpec,
                  rows: list[dict[str, Any]], teachers: dict[str, CachedTeacher]) -> Any:
    """Write every file of the tune folder, then raise when nothing usable came out (the files say why)."""
    from ..deploy.report.tune_report import render_tune_report
    from .study import TuneResult

    summary = summarize(base, space, latency, rows, teachers)
    by_number = {r["number"]: r for r in rows}
    files = {"trials.md": atomic_write_text(tune_dir / "trials.md", markdown_table(rows)),
             "pareto.md": atomic_write_text(tune_dir / "pareto.md", markdown_table(
                 [by_number[n] for n in summary["pareto"]], error=False))}
    chosen_yaml = None
    if summary["chosen"] is not None:
        d = chosen_config(base, by_number[summary["chosen"]], str(tune_dir.resolve()), candidate_weights(teachers))
        config_from_dict(d)  # what edgekd run will do with it: a config that does not load is never written
        header = (f"# chosen by edgekd tune: trial {summary['chosen']} of {tune_dir}\n"
                  "# run it with: edgekd run --config chosen.yaml\n")
        chosen_yaml = atomic_write_text(tune_dir / "chosen.yaml", header + yaml.safe_dump(d, sort_keys=False))
        files["chosen.yaml"] = chosen_yaml
    atomic_write_json(tune_dir / "summary.json", summary)
    md, html = render_tune_report(tune_dir)
    summary["files"] = {name: sha256_file(p) for name, p in files.items()}
    summary["files"]["pareto.png"] = sha256_file(tune_dir / "plots" / "pareto.png") \
        if (tune_dir / "plots" / "pareto.png").is_file() else None
    atomic_write_json(tune_dir / "summary.json", summary)
    if not any(r["state"] == "COMPLETE" for r in rows):
        first = next((r.get("error") for r in rows if r.get("error")), "no error recorded")
        raise EdgekdError(f"every trial of the study in {tune_dir} failed (first error: {first})",
                          f"fix the error above and run edgekd tune again with --out {tune_dir}; see {tune_dir / 'trials.md'}")
    if chosen_yaml is None:
        fastest = min(r["latency_ms"] for r in rows if r["state"] == "COMPLETE")
        raise EdgekdError(f"no trial met the INT8 latency budget of {latency.budget_ms} ms (fastest: {fastest:.3f} ms)",
                          "raise tune.max_latency_ms (or budgets.max_latency_ms), or add smaller tune.student_widths")
    return TuneResult(tune_dir=tune_dir, chosen_yaml=chosen_yaml, summary=summary, report_md=md, report_html=html)
