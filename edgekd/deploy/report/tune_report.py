"""The tuning report: Pareto front (INT8 validation accuracy vs INT8 latency), trials, teacher selection.

``render_tune_report(tune_dir)`` writes ``report.md``/``report.html`` and ``plots/pareto.png`` into a
folder written by ``edgekd tune``, from its ``summary.json`` alone. ``tune_sections`` gives the same
sections to a run report whose config came from ``edgekd tune`` (``tune.source``). Imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ArtifactError
from ...io import atomic_write_text
from .doc import Document, Image, Paragraph, Section, Table, num, pct, value
from .plots import NO_MATPLOTLIB, _save, matplotlib_available
from .render_html import render_html
from .render_md import render_md

PARAMS = ("method", "teacher", "temperature", "alpha", "student_width")


def load_summary(tune_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a tune folder; a missing or malformed one is an ArtifactError."""
    path = Path(tune_dir) / "summary.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist: {tune_dir} is not a finished tune folder",
                            "run edgekd tune --out FOLDER first, or pass that folder") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is unreadable or not JSON ({e})", "run edgekd tune again on that folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        raise ArtifactError(f"{path} has no 'trials' list", "run edgekd tune again on that folder")
    return data


def pareto_plot(summary: dict[str, Any], path: Path) -> Path | None:
    """All finished trials, the Pareto front as a step line, the budget, trial 0 and the chosen trial."""
    import matplotlib.pyplot as plt

    done = [r for r in summary["trials"] if r.get("state") == "COMPLETE"]
    if not done:
        return None
    by = {r["number"]: r for r in done}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([r["latency_ms"] for r in done], [100 * r["val_accuracy"] for r in done], c="0.6", s=25, label="trial")
    front = [by[n] for n in summary.get("pareto", []) if n in by]
    ax.step([r["latency_ms"] for r in front], [100 * r["val_accuracy"] for r in front], where="post",
            color="C0", marker="o", label="Pareto front")
    budget = (summary.get("latency") or {}).get("budget_ms")
    if budget is not None:
        ax.axvline(budget, color="C3", ls="--", lw=1, label=f"latency budget {budget:g} ms")
    for key, style in (("default", dict(marker="s", color="C1", s=70)), ("chosen", dict(marker="*", color="C2", s=160))):
        n = summary.get(key)
        if n in by:
            ax.scatter([by[n]["latency_ms"]], [100 * by[n]["val_accuracy"]], label=f"{key} (trial {n})", zorder=3, **style)
    lat = summary.get("latency") or {}
    ax.set_xlabel(f"INT8 median latency, batch {lat.get('batch')}, {lat.get('threads')} thread(s) (ms)")
    ax.set_ylabel("INT8 validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _row(r: dict[str, Any]) -> list[str]:
    # "—" for a knob the trial's method ignores (edgekd.tuning.study.ignored_knobs): its value did nothing
    return [str(r["number"]), *("—" if p in r.get("unused", ()) else value(r.get(p)) for p in PARAMS),
            pct(r.get("val_accuracy")),
            num(r.get("latency_ms")), pct(r.get("test_accuracy"))]


HEADER = ["trial", *PARAMS, "INT8 val acc", "INT8 latency (ms)", "INT8 test acc"]


def tune_sections(summary: dict[str, Any], plots_dir: Path) -> list[Section]:
    """Tuning, Pareto front, teacher selection and all trials, as report sections (plot drawn into plots_dir)."""
    by = {r["number"]: r for r in summary["trials"]}
    lat = summary.get("latency") or {}
    budget = lat.get("budget_ms")
    intro = [Paragraph(f"Objective: {summary.get('objective')}. Latency measured in onnxruntime "
                       f"({lat.get('provider')}), batch {lat.get('batch')}, {lat.get('threads')} thread(s), median of "
                       f"{lat.get('runs')} runs; budget: {'none' if budget is None else f'{budget:g} ms'}. "
                       f"Search space: {json.dumps(summary.get('space'))}. Trial 0 is the config as given.")]
    chosen, default = by.get(summary.get("chosen")), by.get(summary.get("default"))
    if chosen is not None:
        text = (f"Chosen: trial {chosen['number']} ({', '.join(f'{p}={value(chosen.get(p))}' for p in PARAMS)}), "
                f"INT8 val accuracy {pct(chosen['val_accuracy'])} at {num(chosen['latency_ms'])} ms")
        if default is not None and default.get("state") == "COMPLETE":
            text += (f"; the default config (trial {default['number']}) reached {pct(default['val_accuracy'])} at "
                     f"{num(default['latency_ms'])} ms")
        intro.append(Paragraph(text + ". Written to chosen.yaml (edgekd run --config chosen.yaml)."))
    else:
        intro.append(Paragraph("No finished trial met the latency budget: nothing was chosen."))
    if summary.get("failed"):
        intro.append(Paragraph(f"Failed trials (see the trial table for each error): {summary['failed']}."))
    pareto_blocks: list[Any] = [Table(HEADER, [_row(by[n]) for n in summary.get("pareto", [])],
                                      "trials no other trial beats on both accuracy and latency, fastest first")]
    if matplotlib_available():
        import matplotlib

        matplotlib.use("Agg")
        plots_dir.mkdir(parents=True, exist_ok=True)
        png = pareto_plot(summary, plots_dir / "pareto.png")
        if png is not None:
            pareto_blocks.append(Image(png, "Pareto front: INT8 validation accuracy vs INT8 latency"))
    else:
        pareto_blocks.append(Paragraph(NO_MATPLOTLIB))
    sel = summary.get("teacher_selection") or {}
    teacher_rows = [[t["teacher"], pct(t["teacher_val_accuracy"]), pct(t.get("teacher_test_accuracy")), str(t["trials"]),
                     pct(t["best_student_val_accuracy"]), pct(t["mean_student_val_accuracy"])]
                    for t in summary.get("teachers", [])]
    teacher_blocks: list[Any] = [
        Table(["teacher", "teacher val acc", "teacher test acc", "trials", "best student val acc", "mean student val acc"],
              teacher_rows, ("students are the INT8 files of the trials within the latency budget that learned from "
                             "one teacher" if "chosen_learns_from_one_teacher" in sel else "students are INT8 files")
              + "; the teacher is chosen by its best student, not its own accuracy"),
        Paragraph(_selection_text(sel)),
    ]
    all_rows = [_row(r) + [r["state"], str(r.get("error") or "")] for r in summary["trials"]]
    return [Section("Tuning", intro), Section("Pareto front", pareto_blocks),
            Section("Teacher selection", teacher_blocks),
            Section("All trials", [Table(HEADER + ["state", "error"], all_rows)])]


def _selection_text(sel: dict[str, Any]) -> str:
    # a summary written before selection counted only in-budget one-teacher trials has no chosen_* key: its
    # table was over every finished trial, so it is described as it was
    current = "chosen_learns_from_one_teacher" in sel
    scope = " within the latency budget" if current else ""
    if not sel or sel.get("best_student_teacher") is None:
        return (f"No finished trial{scope} learned from one teacher (ce, self-distillation and multi-teacher do not): "
                "no teacher could be selected." if current else "No finished trial: no teacher could be selected.")
    best = sel["best_student_teacher"]
    if sel["differ"]:
        text = (f"The teachers differ: {sel['most_accurate_teacher']} is the most accurate teacher, but {best} "
                f"taught the best student{scope}.")
    elif best == sel["most_accurate_teacher"]:
        text = (f"{best} is both the most accurate teacher and the one whose student scored best{scope} in this study "
                "(no case where they differ).")
    elif not sel.get("most_accurate_compared", True):
        text = (f"{best} taught the best student{scope}; the most accurate teacher, {sel['most_accurate_teacher']}, "
                "taught no student that counts, so the two were not compared.")
    else:
        text = (f"{best} and the most accurate teacher, {sel['most_accurate_teacher']}, taught equally accurate best "
                f"students{scope}; {best}'s is faster (a tie: no case where they differ).")
    if not current:
        return text
    if sel["chosen_learns_from_one_teacher"]:
        return text + f" The chosen config uses {best}."
    return text + " The chosen trial's method does not learn from one teacher, so its teacher is not this selection."


def render_tune_report(tune_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and ``plots/pareto.png``) into the tune folder."""
    tune_dir = Path(tune_dir)
    summary = load_summary(tune_dir)
    doc = Document(title=f"edgekd tune report: {summary.get('config_name', tune_dir.name)}",
                   sections=tune_sections(summary, tune_dir / "plots"), run_dir=tune_dir)
    md = atomic_write_text(tune_dir / "report.md", render_md(doc))
    html = atomic_write_text(tune_dir / "report.html", render_html(doc))
    return md, html
