"""``edgekd gate RUN_DIR``: pass/fail a checked run against its size, accuracy, latency and robustness budgets.

Exit codes: 0 every budget met, 1 a budget missed, 2 an error (a missing or corrupt manifest or
ONNX file, an unreadable baseline, a budget on something the run did not measure).
Imports no torch: a CI job with only numpy, onnx and onnxruntime installed runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from xml.etree import ElementTree as ET

import yaml

from ..config import BudgetsConfig, LatencyBudget, budgets_from_dict, load_config, validate_budgets
from ..errors import ArtifactError, ConfigError, EdgekdError, from_os_error, report_error, user_error
from ..manifest import Manifest

CHECK_FIX = "run the check stage first (edgekd check, or edgekd run)"


@dataclass
class Row:
    """One budget: its limit, what the run measured, and the verdict."""

    name: str
    budget: float
    measured: float | None
    passed: bool
    detail: str = ""
    op: str = "<="  # measured must be <= budget, or >= for minimum budgets

    @property
    def limit(self) -> str:
        return f"{self.op} {self.budget:.6g}"

    @property
    def measured_text(self) -> str:
        return "n/a" if self.measured is None else f"{self.measured:.6g}"


@dataclass
class GateResult:
    """The verdict over every budget set; ``rows`` is empty when no budget was set."""

    passed: bool
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_metrics(self) -> dict[str, Any]:
        """The form the gate stage records in the manifest: ``{"passed", "checks", "notes"}``."""
        checks = [{"budget": r.name, "limit": r.limit, "measured": r.measured, "passed": r.passed, "detail": r.detail}
                  for r in self.rows]
        return {"passed": self.passed, "checks": checks, "notes": list(self.notes)}


# ------------------------------------------------------------------------ inputs


def measured(m: Mapping[str, Any], key: str, model: str) -> float:
    """A number from a model's check metrics; missing or non-numeric is an ArtifactError, not a KeyError."""
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ArtifactError(f"the check metrics of '{model}' have no numeric '{key}' (found {v!r})",
                            "re-run the check stage (edgekd check --force) to measure it again")
    return float(v)


def load_run_budgets(manifest: Manifest) -> BudgetsConfig:
    """The budgets the run was configured with: manifest["config"]["budgets"], else config.yaml's."""
    section = (manifest.data.get("config") or {}).get("budgets")
    if section is None:
        cfg_file = manifest.run_dir / "config.yaml"
        if cfg_file.is_file():
            try:
                loaded = yaml.safe_load(cfg_file.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{cfg_file} is not valid YAML: {e}", "re-run the pipeline to rewrite it") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{cfg_file} is not a mapping of config sections", "re-run the pipeline to rewrite it")
            section = loaded.get("budgets")
    return budgets_from_dict(section)


def apply_overrides(budgets: BudgetsConfig, overrides: Mapping[str, Any] | None) -> BudgetsConfig:
    """Replace the budget fields given (non-None) in ``overrides``; an unknown name is a ConfigError."""
    if not overrides:
        return budgets
    names = [f.name for f in dataclasses.fields(BudgetsConfig)]
    for key in overrides:
        if key not in names:
            raise ConfigError(f"unknown budget '{key}'; valid: {', '.join(names)}", "check the spelling")
    out = dataclasses.replace(budgets, **{k: v for k, v in overrides.items() if v is not None})
    validate_budgets(out)  # a nonsense flag (--min-accuracy 150, nan) is bad input (exit 2), not a missed budget
    return out


def verify_artifacts(manifest: Manifest, provider: str = "CPUExecutionProvider") -> list[Path]:
    """Every export artifact exists and matches its sha256; every ONNX one opens in onnxruntime."""
    export = manifest.stage("export")
    if not export or not export.get("artifacts"):
        raise ArtifactError(f"run {manifest.run_dir} records no exported models",
                            "run the export stage first (edgekd export, or edgekd run)")
    from .runtime.session import make_session  # lazy: the CLI parser imports this module, onnxruntime is slow to load

    paths = []
    for key in export["artifacts"]:
        path = manifest.artifact("export", key, verify=True)
        if path.suffix == ".onnx":
            make_session(path, provider=provider, threads=1)  # raises ArtifactError when unloadable
        paths.append(path)
    return paths


def check_metrics(manifest: Manifest) -> dict[str, Any]:
    metrics = manifest.metrics("check")
    if not metrics.get("models"):
        raise ArtifactError(f"run {manifest.run_dir} has no check metrics (stages.check.metrics.models)", CHECK_FIX)
    return metrics


def model_metrics(metrics: Mapping[str, Any], model: str, where: str) -> dict[str, Any]:
    models = metrics.get("models", {})
    if model not in models:
        raise ConfigError(f"{where} has no check metrics for model '{model}'; measured: {', '.join(models) or 'none'}",
                          "set budgets.model (or --model) to a measured model")
    return models[model]


def _load_baseline(path: str | Path, run_dir: Path) -> tuple[Manifest, dict[str, Any]]:
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (run_dir / p).exists():
        p = run_dir / p
    if not p.exists():
        raise ArtifactError(f"baseline {p} does not exist", "pass a baseline run folder or its manifest.json")
    base = Manifest.load(p)
    metrics = base.metrics("check")
    if not metrics.get("models"):
        raise ArtifactError(f"baseline {base.path} has no check metrics", "pass a baseline run that finished its check")
    return base, metrics


# ------------------------------------------------------------------------ budgets


def _at_most(name: str, limit: float, measured: float, detail: str) -> Row:
    return Row(name, limit, measured, measured <= limit, detail, "<=")


def _at_least(name: str, limit: float, measured: float, detail: str) -> Row:
    return Row(name, limit, measured, measured >= limit, detail, ">=")


def _latency_row(metrics: Mapping[str, Any], lb: LatencyBudget) -> Row:
    m = model_metrics(metrics, lb.model, "the run")
    records = m.get("latency") or []
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ArtifactError(f"the latency metrics of '{lb.model}' are not a list of records",
                            "re-run the check stage (edgekd check --force)")
    for r in records:
        if r.get("batch") == lb.batch and r.get("threads") == lb.threads:
            return _at_most(f"max_latency_ms[{lb.model} b{lb.batch} t{lb.threads}]", lb.value_ms,
                            measured(r, "median_ms", lb.model),
                            f"median of {r.get('runs', '?')} runs, batch {lb.batch}, threads {lb.threads}")
    found = ", ".join(f"b{r.get('batch')} t{r.get('threads')}" for r in records) or "none"
    raise ConfigError(f"latency budget is at batch {lb.batch}, threads {lb.threads}, which the run did not measure "
                      f"for '{lb.model}' (measured: {found})",
                      "set budgets.max_latency_ms.batch/threads to a measured setting, or add it to check.latency")


def _robustness(m: Mapping[str, Any], model: str) -> dict[str, Any]:
    rob = m.get("robustness")
    if not rob:
        raise ArtifactError(f"the run has no robustness metrics for '{model}'",
                            "enable check.robustness and re-run the check stage")
    return rob


def _adversarial_row(m: Mapping[str, Any], b: BudgetsConfig) -> Row:
    key = f"{b.adversarial_epsilon:.4f}"
    adv = _robustness(m, b.model).get("adversarial") or {}
    found = {attack: accs[key] for attack, accs in adv.items() if isinstance(accs, dict) and key in accs}
    if not found:
        eps = sorted({k for accs in adv.values() if isinstance(accs, dict) for k in accs})
        raise ConfigError(f"no adversarial accuracy at epsilon {key} for '{b.model}' (measured: {', '.join(eps) or 'none'})",
                          "set budgets.adversarial_epsilon to a measured epsilon, or add it to check.robustness.epsilons")
    worst = min(found, key=lambda a: found[a])
    return _at_least(f"min_adversarial_accuracy[{b.model} eps {key}]", b.min_adversarial_accuracy, found[worst],
                     f"worst of {', '.join(sorted(found))}: {worst}")


def evaluate_budgets(metrics: Mapping[str, Any], b: BudgetsConfig, run_dir: Path) -> list[Row]:
    """One Row per budget that is set; budgets left at None are not checked."""
    rows: list[Row] = []
    if b.max_size_mb is not None:
        m = model_metrics(metrics, b.model, "the run")
        rows.append(_at_most(f"max_size_mb[{b.model}]", b.max_size_mb, measured(m, "size_mb", b.model),
                             f"{m.get('file', '?')}, {m.get('size_bytes', '?')} bytes"))
    if b.min_accuracy is not None:
        m = model_metrics(metrics, b.model, "the run")
        rows.append(_at_least(f"min_accuracy[{b.model}]", b.min_accuracy, measured(m, "accuracy", b.model),
                              "top-1 on the test set"))
    if b.max_latency_ms is not None:
        rows.append(_latency_row(metrics, b.max_latency_ms))
    if b.max_accuracy_drop is not None:
        if not b.baseline:
            raise ConfigError("budgets.max_accuracy_drop is set but no baseline run is given",
                              "set budgets.baseline (or --baseline) to a run folder or its manifest.json")
        base, base_metrics = _load_baseline(b.baseline, run_dir)
        base_acc = measured(model_metrics(base_metrics, b.model, f"baseline {base.path}"), "accuracy", b.model)
        acc = measured(model_metrics(metrics, b.model, "the run"), "accuracy", b.model)
        rows.append(_at_most(f"max_accuracy_drop[{b.model}]", b.max_accuracy_drop, base_acc - acc,
                             f"baseline {base_acc:.4f} ({base.run_dir}) -> {acc:.4f}"))
    if b.min_corruption_accuracy is not None:
        m = model_metrics(metrics, b.model, "the run")
        corr = _robustness(m, b.model).get("corruption") or {}
        if "mean_accuracy" not in corr:
            raise ArtifactError(f"the run has no corruption accuracy for '{b.model}'",
                                "enable check.robustness and re-run the check stage")
        rows.append(_at_least(f"min_corruption_accuracy[{b.model}]", b.min_corruption_accuracy,
                              measured(corr, "mean_accuracy", b.model), "mean over corruptions and severities"))
    if b.min_adversarial_accuracy is not None:
        rows.append(_adversarial_row(model_metrics(metrics, b.model, "the run"), b))
    return rows


def _any_budget(b: BudgetsConfig) -> bool:
    return any(getattr(b, k) is not None for k in (
        "max_size_mb", "min_accuracy", "max_latency_ms", "max_accuracy_drop",
        "min_corruption_accuracy", "min_adversarial_accuracy"))


def gate(run_dir: str | Path, budgets: BudgetsConfig | None = None,
         overrides: Mapping[str, Any] | None = None) -> GateResult:
    """Verify a run's ONNX files, then judge its check metrics against the budgets.

    ``budgets`` defaults to the run's own (its manifest config, else config.yaml); ``overrides``
    (BudgetsConfig field -> value, None meaning "keep") replace single fields, as the CLI flags do.
    Raises EdgekdError subclasses for errors; a missed budget is a failed Row, not an exception.
    """
    manifest = Manifest.load(run_dir)
    b = apply_overrides(budgets if budgets is not None else load_run_budgets(manifest), overrides)
    files = verify_artifacts(manifest)  # on CPU: always available, even where the check used another provider
    notes = [f"verified {len(files)} artifact(s): {', '.join(p.name for p in files)}"]
    if not _any_budget(b):
        return GateResult(True, [], notes + ["no budgets set: only the artifacts were verified"])
    rows = evaluate_budgets(check_metrics(manifest), b, manifest.run_dir)
    return GateResult(all(r.passed for r in rows), rows, notes)


# ------------------------------------------------------------------------ output


def _status(r: Row) -> str:
    return "PASS" if r.passed else "FAIL"


def verdict_line(result: GateResult) -> str:
    if not result.rows:
        return "gate: PASS (no budgets set)"
    missed = sum(not r.passed for r in result.rows)
    return "gate: PASS" if result.passed else f"gate: FAIL ({missed} of {len(result.rows)} budgets missed)"


def format_table(result: GateResult) -> str:
    """Plain-text table: budget | limit | measured | status, one row per budget, then the verdict."""
    header = ("budget", "limit", "measured", "status")
    body = [(r.name, r.limit, r.measured_text, _status(r)) for r in result.rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join([*lines, *result.notes, verdict_line(result)])


def markdown_summary(result: GateResult, run_dir: str | Path = "") -> str:
    lines = [f"### edgekd gate {run_dir}".rstrip(), "", "| budget | limit | measured | status |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.limit} | {r.measured_text} | {_status(r)} |" for r in result.rows]
    lines += ["", *[f"- {n}" for n in result.notes], "", f"**{verdict_line(result)}**", ""]
    return "\n".join(lines)


def write_junit(path: str | Path, result: GateResult | None, error: EdgekdError | None = None) -> Path:
    """JUnit XML: one testcase per budget (a <failure> when missed), or one <error> testcase on error."""
    suite = ET.Element("testsuite", name="edgekd.gate")
    cases: list[ET.Element] = []
    if error is not None:
        case = ET.SubElement(suite, "testcase", classname="edgekd.gate", name="gate")
        ET.SubElement(case, "error", message=error.problem, type=type(error).__name__).text = str(error)
        cases.append(case)
    for r in (result.rows if result else []):
        case = ET.SubElement(suite, "testcase", classname="edgekd.gate", name=r.name)
        if not r.passed:
            ET.SubElement(case, "failure", message=f"measured {r.measured_text}, limit {r.limit}").text = r.detail
        cases.append(case)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(0 if r.passed else 1 for r in (result.rows if result else []))))
    suite.set("errors", "1" if error is not None else "0")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(p, encoding="utf-8", xml_declaration=True)
    return p


# ------------------------------------------------------------------------ command line


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``edgekd gate`` arguments; each budget flag overrides the run's configured budget."""
    parser.add_argument("run_dir", help="a run folder (export/<run-name>/) holding manifest.json")
    parser.add_argument("--config", help="take the budgets from this YAML config instead of the run's own")
    parser.add_argument("--model", help="model the size/accuracy/robustness budgets apply to (default student_int8)")
    parser.add_argument("--max-size-mb", type=float)
    parser.add_argument("--min-accuracy", type=float, help="top-1 accuracy in [0, 1]")
    parser.add_argument("--max-latency-ms", type=float, help="median latency limit at --latency-batch/--latency-threads")
    parser.add_argument("--latency-batch", type=int, help="batch of the latency budget (default 1)")
    parser.add_argument("--latency-threads", type=int, help="threads of the latency budget (default 1; 0 = all cores)")
    parser.add_argument("--latency-model", help="model of the latency budget (default: --model)")
    parser.add_argument("--max-accuracy-drop", type=float, help="largest accuracy loss vs --baseline")
    parser.add_argument("--baseline", help="baseline run folder or its manifest.json")
    parser.add_argument("--min-corruption-accuracy", type=float)
    parser.add_argument("--min-adversarial-accuracy", type=float, help="worst attack's accuracy at --adversarial-epsilon")
    parser.add_argument("--adversarial-epsilon", type=float, help="epsilon of the adversarial budget (default 2/255)")
    parser.add_argument("--junit", help="write a JUnit XML report here")
    parser.add_argument("--summary", help="write a markdown summary here (also appended to $GITHUB_STEP_SUMMARY)")


def _flag_overrides(args: argparse.Namespace, base: BudgetsConfig) -> dict[str, Any]:
    over: dict[str, Any] = {
        "model": args.model, "max_size_mb": args.max_size_mb, "min_accuracy": args.min_accuracy,
        "max_accuracy_drop": args.max_accuracy_drop, "baseline": args.baseline,
        "min_corruption_accuracy": args.min_corruption_accuracy,
        "min_adversarial_accuracy": args.min_adversarial_accuracy, "adversarial_epsilon": args.adversarial_epsilon,
    }
    lat = base.max_latency_ms
    latency_flags = (args.latency_batch, args.latency_threads, args.latency_model)
    if args.max_latency_ms is not None or (lat is not None and any(v is not None for v in latency_flags)):
        # a flag replaces one field of the configured latency budget; the rest is kept
        default = lat or LatencyBudget(model=args.model or base.model)
        over["max_latency_ms"] = LatencyBudget(
            value_ms=default.value_ms if args.max_latency_ms is None else args.max_latency_ms,
            batch=default.batch if args.latency_batch is None else args.latency_batch,
            threads=default.threads if args.latency_threads is None else args.latency_threads,
            model=default.model if args.latency_model is None else args.latency_model,
        )
    return over


def _write(what: str, path: str | Path, write: Any) -> None:
    """Run ``write()``; an OSError becomes an error naming ``what`` and the path (e.g. an unwritable --junit)."""
    try:
        write()
    except OSError as e:
        raise from_os_error(e, f"write {what}", str(path)) from e


def _emit(args: argparse.Namespace, result: GateResult | None, error: EdgekdError | None) -> None:
    """Write the --junit, --summary and $GITHUB_STEP_SUMMARY outputs; raises InputError when one is unwritable."""
    if args.junit:
        _write("the JUnit report", args.junit, lambda: write_junit(args.junit, result, error))
    if result is None:
        return
    text = markdown_summary(result, args.run_dir)
    if args.summary:
        _write("the summary", args.summary, lambda: Path(args.summary).write_text(text))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        def append() -> None:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(text)
        _write("$GITHUB_STEP_SUMMARY", step_summary, append)


def _judge(args: argparse.Namespace) -> GateResult:
    """The gate over the budgets of --config (else the run's own) with the flags applied."""
    if args.config:
        base = load_config(args.config, registries=False).budgets  # the gate needs the budgets only
    else:
        base = load_run_budgets(Manifest.load(args.run_dir))
    return gate(args.run_dir, base, _flag_overrides(args, base))


def gate_command(args: argparse.Namespace) -> int:
    """Run the gate for parsed ``add_gate_arguments`` args; print the table; return 0, 1 or 2.

    The --junit/--summary files are written before anything is printed, so a failed write never
    follows a printed verdict; an error is written into the JUnit file too, so CI shows it.
    An unwritable output raises InputError (the CLI turns it into exit 2).
    """
    try:
        result = _judge(args)
    except (EdgekdError, OSError, ValueError) as e:  # bad input; anything else is a bug and propagates
        if getattr(args, "debug", False):
            raise
        err = user_error(e)
        assert err is not None  # user_error maps each of the caught types
        print(f"edgekd gate: error: {err}", file=sys.stderr)
        _emit(args, None, err)
        return 2
    _emit(args, result, None)
    print(format_table(result))
    return 0 if result.passed else 1


def main_gate(argv: Sequence[str] | None = None) -> int:
    """``python -m edgekd.deploy.gate RUN_DIR [budget flags]`` without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="edgekd gate", description=__doc__.splitlines()[0])
    add_gate_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        return gate_command(args)
    except Exception as e:  # printed (exit 2 or 3), or re-raised with --debug; never silently dropped
        return report_error(e, "edgekd gate", args.debug)


if __name__ == "__main__":
    sys.exit(main_gate())
