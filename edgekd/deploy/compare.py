"""Compare two runs: accuracy, robustness, size and latency deltas from their manifests (torch-free).

``compare_runs(run_a, run_b)`` reads the check metrics of both manifests (a run folder or its
``manifest.json``; no ONNX file is opened) and returns a :class:`Comparison`: for every model
measured in both runs, one :class:`Delta` per metric with ``b - a`` and, for size and latency,
``b / a``. ``edgekd compare RUN_A RUN_B`` prints it as markdown; ``edgekd report RUN --compare BASE``
adds it to the run's report as a section (A = BASE, B = RUN).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ArtifactError, InputError, from_os_error
from ..io import atomic_write_text
from ..manifest import Manifest
from .report.doc import MISSING, Document, Paragraph, Section, Table, ordered_models
from .report.render_md import render_md

# How a metric's values and deltas are written, and whether a larger value is better.
KINDS = {
    "fraction": True,  # accuracies in [0, 1]: shown in %, deltas in percentage points
    "mb": False,  # file size: delta in MB, ratio
    "ms": False,  # median latency: delta in ms, ratio
    "ece": False,  # calibration error in [0, 1]
    "auroc": True,  # OOD detection in [0, 1]
}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


@dataclass
class Delta:
    """One metric of one model in both runs (``None`` where a run did not measure it)."""

    metric: str
    kind: str  # a key of KINDS
    a: float | None
    b: float | None

    @property
    def higher_is_better(self) -> bool:
        return KINDS[self.kind]

    @property
    def delta(self) -> float | None:
        """``b - a``, or None when either is missing."""
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def ratio(self) -> float | None:
        """``b / a`` for sizes and latencies (a ratio of accuracies says little); None otherwise."""
        if self.kind not in ("mb", "ms") or self.delta is None or not self.a:
            return None
        return self.b / self.a  # type: ignore[operator]

    @property
    def change(self) -> str:
        """``better``, ``worse`` or ``same`` from B's point of view; ``—`` when not comparable."""
        d = self.delta
        if d is None:
            return MISSING
        if d == 0:
            return "same"
        return "better" if (d > 0) == self.higher_is_better else "worse"


@dataclass
class ModelComparison:
    model: str
    deltas: list[Delta] = field(default_factory=list)

    def get(self, metric: str) -> Delta:
        """The delta of ``metric`` (KeyError naming the metrics there are)."""
        for d in self.deltas:
            if d.metric == metric:
                return d
        raise KeyError(f"no metric {metric!r}; there are: {', '.join(d.metric for d in self.deltas)}")


@dataclass
class Comparison:
    """Run B against run A: ``models`` measured in both, and the models only one of them has."""

    run_a: str
    run_b: str
    models: list[ModelComparison]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def model(self, name: str) -> ModelComparison:
        for m in self.models:
            if m.model == name:
                return m
        raise KeyError(f"model {name!r} not compared; compared: {', '.join(m.model for m in self.models)}")


# ----------------------------------------------------------------------------- reading the manifests


def _label(manifest: Manifest) -> str:
    return str(manifest.data.get("run_name") or manifest.run_dir.name)


def _check_models(manifest: Manifest, which: str) -> dict[str, Any]:
    models = manifest.metrics("check").get("models")
    if not isinstance(models, dict) or not models:
        raise ArtifactError(f"run {which} ({manifest.run_dir}) has no check metrics to compare",
                            f"run 'edgekd check' on {manifest.run_dir} first")
    return models


def _latency(model: dict[str, Any]) -> dict[tuple[int, int], float]:
    return {(int(r["batch"]), int(r["threads"])): float(r["median_ms"]) for r in model.get("latency") or []
            if isinstance(r, dict) and _num(r.get("median_ms")) is not None}


def _threads(t: int) -> str:
    return "all cores" if t == 0 else f"{t} thread{'s' if t != 1 else ''}"


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _robustness_rows(ra: dict[str, Any], rb: dict[str, Any]) -> list[Delta]:
    rows = [Delta("corruption mean accuracy", "fraction", _num(_dig(ra, "corruption", "mean_accuracy")),
                  _num(_dig(rb, "corruption", "mean_accuracy")))]
    attacks = sorted({(a, e) for r in (ra, rb) for a, eps in (r.get("adversarial") or {}).items()
                      if isinstance(eps, dict) for e in eps})
    rows += [Delta(f"adversarial {a}, ε={e}", "fraction", _num(_dig(ra, "adversarial", a, e)),
                   _num(_dig(rb, "adversarial", a, e))) for a, e in attacks]
    rows.append(Delta("ECE", "ece", _num(_dig(ra, "calibration", "ece")), _num(_dig(rb, "calibration", "ece"))))
    rows.append(Delta("ECE, temperature scaled", "ece", _num(_dig(ra, "calibration", "ece_temperature_scaled")),
                      _num(_dig(rb, "calibration", "ece_temperature_scaled"))))
    for ood in sorted({k for r in (ra, rb) for k in (r.get("ood") or {})}):
        for score in ("auroc_msp", "auroc_energy"):
            rows.append(Delta(f"OOD {ood}, AUROC ({score.split('_')[1]})", "auroc",
                              _num(_dig(ra, "ood", ood, score)), _num(_dig(rb, "ood", ood, score))))
    return [r for r in rows if r.a is not None or r.b is not None]


def compare_model(name: str, a: dict[str, Any], b: dict[str, Any]) -> ModelComparison:
    """Every metric of one model that either run measured: accuracy, size, latency, robustness."""
    out = ModelComparison(name, [Delta("top-1 accuracy", "fraction", _num(a.get("accuracy")), _num(b.get("accuracy"))),
                                 Delta("size (MB)", "mb", _num(a.get("size_mb")), _num(b.get("size_mb")))])
    la, lb = _latency(a), _latency(b)
    for batch, threads in sorted(set(la) | set(lb)):
        out.deltas.append(Delta(f"latency, batch {batch}, {_threads(threads)} (median ms)", "ms",
                                la.get((batch, threads)), lb.get((batch, threads))))
    if a.get("robustness") or b.get("robustness"):
        out.deltas += _robustness_rows(a.get("robustness") or {}, b.get("robustness") or {})
    return out


# check-metrics model name -> the export stage's artifact key of its file
EXPORT_KEYS = {"teacher": "teacher_fp32", "student_fp32": "student_fp32", "student_int8": "student_int8"}


def _same_files_note(a: Manifest, b: Manifest, models: list[str]) -> str | None:
    """Models whose file is byte-identical in both runs: their latency deltas are measurement noise."""
    same = [m for m in models if m in EXPORT_KEYS
            and (sha := a.artifact_sha("export", EXPORT_KEYS[m])) is not None
            and sha == b.artifact_sha("export", EXPORT_KEYS[m])]
    if not same:
        return None
    return (f"The same file in both runs (equal sha256): {', '.join(same)}. Its latency deltas are measurement "
            "noise between the two check stages, not a change of the model.")


def _machine_note(a: Manifest, b: Manifest) -> str | None:
    """Latencies from two CPUs compare machines, not models: say so when the manifests' CPUs differ."""
    ca, cb = (_dig(m.data, "environment", "cpu", "model") for m in (a, b))
    if ca and cb and ca != cb:
        return (f"The runs were measured on different CPUs ({ca} vs {cb}): latency deltas mix the models' and "
                "the machines' speed. Re-run 'edgekd check' on one machine to compare latency.")
    return None


def compare_runs(run_a: str | Path, run_b: str | Path, models: Iterable[str] | None = None) -> Comparison:
    """Run B against run A (``b - a``), for ``models`` (default: every model both runs measured).

    Reads only the two manifests' check metrics. A run without check metrics raises ArtifactError;
    a requested model that a run did not measure raises InputError naming the models it has.
    """
    ma, mb = Manifest.load(run_a), Manifest.load(run_b)
    ca, cb = _check_models(ma, "A"), _check_models(mb, "B")
    common = [m for m in ordered_models(ca) if m in cb]
    wanted = list(models) if models else common
    for m in wanted:
        if m not in common:
            raise InputError(f"model '{m}' is not measured in both runs; both have: {', '.join(common) or 'none'}",
                             "pass --model with one of those names, or leave it out to compare them all")
    if not wanted:
        raise ArtifactError(f"the runs share no measured model (A: {', '.join(ca)}; B: {', '.join(cb)})",
                            "compare two runs of edgekd, whose check stage measured the same models")
    cmp = Comparison(run_a=_label(ma), run_b=_label(mb), models=[compare_model(m, ca[m], cb[m]) for m in wanted],
                     only_in_a=[m for m in ca if m not in cb], only_in_b=[m for m in cb if m not in ca])
    cmp.notes += [n for n in (_same_files_note(ma, mb, wanted), _machine_note(ma, mb)) if n]
    return cmp


# ----------------------------------------------------------------------------- presenting it


def _value(kind: str, x: float | None) -> str:
    if x is None:
        return MISSING
    return {"fraction": f"{100 * x:.2f} %", "mb": f"{x:.3f} MB", "ms": f"{x:.3f} ms"}.get(kind, f"{x:.4f}")


def _delta(kind: str, d: float | None) -> str:
    if d is None:
        return MISSING
    return {"fraction": f"{100 * d:+.2f} pp", "mb": f"{d:+.3f} MB", "ms": f"{d:+.3f} ms"}.get(kind, f"{d:+.4f}")


def model_table(mc: ModelComparison, label_a: str = "A", label_b: str = "B") -> Table:
    """One model's deltas as a report table."""
    rows = [[d.metric, _value(d.kind, d.a), _value(d.kind, d.b), _delta(d.kind, d.delta),
             MISSING if d.ratio is None else f"×{d.ratio:.2f}", d.change] for d in mc.deltas]
    return Table(["metric", label_a, label_b, "Δ (B − A)", "B / A", "B is"], rows, caption=mc.model)


def comparison_section(cmp: Comparison, title: str | None = None) -> Section:
    """The comparison as one report section: what A and B are, one table per model, notes."""
    sec = Section(title or f"Comparison: {cmp.run_b} (B) vs {cmp.run_a} (A)", [Paragraph(
        f"A = {cmp.run_a}, B = {cmp.run_b}. Δ is B − A: accuracies in percentage points, size in MB, latency in "
        "ms (median, onnxruntime); B / A for size and latency. ECE lower is better, AUROC higher is better.")])
    sec.blocks += [model_table(m, f"A: {cmp.run_a}", f"B: {cmp.run_b}") for m in cmp.models]
    if cmp.only_in_a or cmp.only_in_b:
        sec.blocks.append(Paragraph(f"Measured in one run only (not compared): A: {', '.join(cmp.only_in_a) or 'none'}; "
                                    f"B: {', '.join(cmp.only_in_b) or 'none'}."))
    sec.blocks += [Paragraph(n) for n in cmp.notes]
    return sec


def to_markdown(cmp: Comparison) -> str:
    """The comparison as a markdown page (what ``edgekd compare`` prints)."""
    doc = Document(title=f"edgekd compare: {cmp.run_b} vs {cmp.run_a}", sections=[comparison_section(cmp, "Deltas")],
                   run_dir=Path("."))
    return render_md(doc)


def write_markdown(cmp: Comparison, path: str | Path) -> Path:
    """Write :func:`to_markdown` to ``path`` atomically; an unwritable path raises InputError."""
    try:
        return atomic_write_text(Path(path), to_markdown(cmp))
    except OSError as e:
        raise from_os_error(e, "write", str(path)) from None
