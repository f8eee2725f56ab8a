"""The run report: ``report.md`` + ``report.html`` (self-contained) + PNG plots, from a run's manifest.

``render_report(run_dir)`` reads ``manifest.json`` only (plus the int8 ONNX file for the doctor),
so ``edgekd report RUN_DIR`` re-renders any finished run. Imports no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...io import atomic_write_text
from ...manifest import Manifest
from .doc import Document, Paragraph, Section
from .model_sections import doctor_section, latency_section, ops_section, per_class_section, summary_section
from .plots import make_plots
from .render_html import render_html
from .render_md import render_md
from .sensitivity_section import sensitivity_section
from .run_sections import environment_section, gate_section, stages_section, student_section, robustness_section

__all__ = ["build_document", "render_report", "verify_models"]


def verify_models(manifest: Manifest) -> None:
    """Every exported file exists and matches its recorded sha256, else ArtifactError.

    A report about files that changed after the run measured them would describe models nobody
    can ship, so a changed file is an error rather than a note in the report.
    """
    export = manifest.stage("export") or {}
    for key in export.get("artifacts", {}):
        manifest.artifact("export", key, verify=True)


def _run_section(data: dict[str, Any]) -> Section:
    facts = [f"{k}: {data[k]}" for k in ("run_name", "created", "updated", "config_hash") if data.get(k)]
    stages = ", ".join(data.get("stages", {})) or "none"
    return Section("Run", [Paragraph("; ".join(facts + [f"stages recorded: {stages}"]) + ".")])


def _tune_sections(data: dict[str, Any], plots_dir: Path, notes: list[str]) -> list[Section]:
    """The Pareto front of the ``edgekd tune`` folder this run's config came from (``tune.source``), if any."""
    from ...errors import ArtifactError
    from .tune_report import load_summary, tune_sections

    source = ((data.get("config") or {}).get("tune") or {}).get("source")
    if not source:
        return []
    try:
        return tune_sections(load_summary(source), plots_dir)
    except ArtifactError as e:  # the tune folder is optional context: say why the section is missing
        notes.append(f"This config came from edgekd tune in {source}, but its summary cannot be read ({e.problem}): "
                     "tuning sections omitted.")
        return []


def build_document(run_dir: str | Path, compare_to: str | Path | None = None) -> Document:
    """Read the run's manifest, draw the plots, and assemble the report's sections.

    ``compare_to``: another run (folder or manifest.json); a section of deltas, this run minus that
    one (edgekd.deploy.compare), follows the run facts.
    """
    manifest = Manifest.load(run_dir)  # ArtifactError when the folder or manifest is missing or malformed
    verify_models(manifest)
    data = manifest.data
    check = (data["stages"].get("check") or {}).get("metrics") or {}
    sections = [_run_section(data)]
    if compare_to is not None:
        from ..compare import compare_runs, comparison_section  # compare builds on this package's doc model

        sections.append(comparison_section(compare_runs(compare_to, manifest.run_dir),
                                           f"Compared with {compare_to}"))
    notes: list[str] = []
    if check.get("models"):
        plots, plot_note = make_plots(check, manifest.run_dir / "plots")
        if plot_note:
            notes.append(plot_note)
        sections.append(summary_section(check, plots))
        optional = {
            "latency": latency_section(check),
            "robustness": robustness_section(check, plots),
            "per-class accuracy": per_class_section(check, plots),
            "profiler top ops": ops_section(check),
        }
        sections.append(doctor_section(manifest, check))
        sensitivity = sensitivity_section(manifest, manifest.run_dir / "plots", notes)
        if sensitivity is not None:
            sections.append(sensitivity)
        for name, sec in optional.items():
            if sec is None:
                notes.append(f"No {name} data in the check stage's metrics: section omitted.")
            else:
                sections.append(sec)
    else:
        notes.append("The run has no check-stage metrics yet: accuracy, size, latency, robustness and the "
                     "doctor are omitted (run 'edgekd check').")
    gate = gate_section(data)
    if gate is None:
        notes.append("No gate verdict recorded (run 'edgekd gate RUN_DIR').")
    tail = [gate, student_section(data), stages_section(data), environment_section(data)]
    sections += _tune_sections(data, manifest.run_dir / "plots", notes)
    sections += [s for s in tail if s is not None]
    if notes:
        sections.append(Section("Notes", [Paragraph(n) for n in notes]))
    title = f"edgekd run report: {data.get('run_name') or manifest.run_dir.name}"
    return Document(title=title, sections=sections, run_dir=manifest.run_dir)


def render_report(run_dir: str | Path, compare_to: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (atomically) and ``plots/*.png`` into the run folder.

    ``compare_to`` adds a comparison with that run (see :func:`build_document`).
    """
    doc = build_document(run_dir, compare_to)
    md = atomic_write_text(doc.run_dir / "report.md", render_md(doc))
    html = atomic_write_text(doc.run_dir / "report.html", render_html(doc))
    return md, html
