"""Command line: argument parsing only; every command calls the public API.

Exit codes: 0 success (and gate passed), 1 gate failed, 2 error (bad input, missing files),
3 internal error (a bug). A traceback is printed only with ``--debug``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import report_error
from .stage_specs import BY_NAME, STAGE_NAMES, STAGES

PROG = "edgekd"

DESCRIPTION = """\
Distill a large image classifier into a small, robust INT8 ONNX model for edge CPUs, and prove it.

A run trains (or loads) a teacher, distills it into a small student, fine-tunes the student
with INT8 quantization-aware training, exports fp32 and INT8 ONNX files, measures accuracy,
robustness, size and latency in onnxruntime, and gates the result against your budgets.
Everything lands in one run folder (export/<run-name>/) described by its manifest.json."""

EPILOG = """\
examples:
  edgekd run                                   the default Fashion-MNIST run (configs/fashion_mnist.yaml)
  edgekd run -c configs/smoke.yaml --out /tmp/runs
                                               a two-minute smoke run of the whole chain
  edgekd run --set distill.temperature=2 --set budgets.max_size_mb=1.5
                                               override config keys on the command line
  edgekd export -c configs/smoke.yaml --out /tmp/runs
                                               run one stage (earlier ones must have finished)
  edgekd gate export/fashion_mnist --min-accuracy 0.85 --junit gate.xml
                                               pass/fail a finished run in CI
  edgekd doctor export/fashion_mnist           why INT8 is (or is not) faster on this CPU
  edgekd report export/fashion_mnist           render report.md / report.html again

exit codes: 0 success (gate passed), 1 gate failed, 2 bad input or missing/corrupt files,
3 internal error. Add --debug to any command to see the traceback of an error."""

RUN_EPILOG = """\
examples:
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs --set data.batch_size=128
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs --resume      continue after an interruption

A stage whose config and inputs are unchanged is skipped (--force re-runs it). A failed stage
exits 2 and leaves the run's verified files as they were."""

GATE_EPILOG = """\
examples:
  edgekd gate export/fashion_mnist                     the budgets the run was configured with
  edgekd gate export/fashion_mnist --max-size-mb 2 --min-accuracy 0.85
  edgekd gate export/fashion_mnist --max-latency-ms 3 --latency-batch 1 --latency-threads 1
  edgekd gate export/fashion_mnist --junit reports/gate.xml --summary reports/gate.md

Every ONNX file is verified against its sha256 first. Exit 0: every budget met; 1: a budget
missed; 2: an error (missing or corrupt run, unmeasured budget, unwritable --junit/--summary)."""

DOCTOR_EPILOG = """\
examples:
  edgekd doctor export/fashion_mnist           the run's INT8 model, timed against its fp32 model
  edgekd doctor model.int8.onnx                any ONNX file (no timing)"""

REPORT_EPILOG = """\
examples:
  edgekd report export/fashion_mnist           rewrites report.md, report.html and plots/

The recorded models are verified against their sha256 first: a changed file is an error (exit 2)."""

TUNE_EPILOG = """\
examples:
  edgekd tune -c configs/smoke.yaml --trials 20 --out /tmp/tune
  edgekd tune -c configs/smoke.yaml --trials 30 --out /tmp/tune      continue the same study to 30 trials
  edgekd run --config /tmp/tune/chosen.yaml                         run the chosen config

Trial 0 is the config as given. Writes study.db (Optuna, sqlite), trials.md, pareto.md, plots/pareto.png,
report.md/.html, summary.json and chosen.yaml into the tune folder. Needs pip install 'edgekd[tune]'."""


def _common() -> argparse.ArgumentParser:
    """Options every subcommand accepts (SUPPRESS keeps a top-level --debug when the subcommand lacks it)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the Python traceback of an error")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars (they are drawn only when stderr is a terminal anyway)")
    return p


def _sub(sub: argparse._SubParsersAction, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_common()])


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file, or a built-in name: smoke, fashion_mnist, fashion_mnist_gpu, cifar10, image_folder (default: fashion_mnist)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set distill.temperature=2 (repeatable)")
    p.add_argument("--out", help="folder runs land in (default: the config's out_dir, 'export')")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training stage from its last epoch")
    p.add_argument("--force", action="store_true", help="re-run stages even when inputs and config are unchanged")


def build_parser() -> argparse.ArgumentParser:
    """The ``edgekd`` parser: run, one command per stage, gate, doctor and report."""
    from .deploy.gate import add_gate_arguments

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (drawn only on a terminal anyway)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _sub(sub, "run", "the whole pipeline: " + " > ".join(STAGE_NAMES),
             RUN_EPILOG.format(cmd="run") + "\n  edgekd run -c configs/smoke.yaml --out /tmp/runs --stages export,check")
    _add_run_options(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run, e.g. export,check")
    for spec in STAGES:
        if spec.command:
            _add_run_options(_sub(sub, spec.name, spec.help, RUN_EPILOG.format(cmd=spec.name)))
    g = _sub(sub, "gate", "pass/fail a run against size, accuracy, latency and robustness budgets", GATE_EPILOG)
    add_gate_arguments(g)
    d = _sub(sub, "doctor", "explain why INT8 is (or is not) faster for a run or an ONNX file", DOCTOR_EPILOG)
    d.add_argument("target", help="a run folder or an .onnx file")
    d.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider")
    r = _sub(sub, "report", "render report.md and report.html for a run folder again", REPORT_EPILOG)
    r.add_argument("run_dir", help="a run folder written by 'edgekd run'")
    t = _sub(sub, "tune", "search KD method, temperature, alpha, student width and teacher (Optuna)", TUNE_EPILOG)
    t.add_argument("--config", "-c", help="YAML config whose tune: section sets the search space (default: fashion_mnist)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set tune.max_latency_ms=2 (repeatable)")
    t.add_argument("--trials", type=int, required=True, help="finished trials the tune folder should hold (resumable)")
    t.add_argument("--out", help="the tune folder (default: <out_dir>/<name>-tune)")
    return parser


def _cmd_run(args: argparse.Namespace, stages: list[str] | None) -> int:
    from .pipeline import run

    result = run(args.config, overrides=args.overrides, out=args.out, stages=stages,
                 resume=args.resume, force=args.force)
    print(f"run folder: {result.run_dir}")
    if result.report_md:
        print(f"report: {result.report_md}  ({result.report_html.name if result.report_html else ''})")
    if result.passed is None:
        return 0
    print(f"gate: {'PASS' if result.passed else 'FAIL'}")
    return 0 if result.passed else 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .deploy.doctor import diagnose, format_diagnosis
    from .manifest import Manifest

    target = Path(args.target)
    fp32 = None
    # a file is an ONNX model; anything else is a run folder (a missing one is named as such)
    if not target.is_file() and not (target.suffix == ".onnx" and not target.exists()):
        m = Manifest.load(target)
        fp32 = m.artifact("export", "student_fp32")
        target = m.artifact("export", "student_int8")
    print(format_diagnosis(diagnose(target, provider=args.provider, fp32_path=fp32)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .deploy.report import render_report

    md, html = render_report(args.run_dir)
    print(f"report: {md}\nreport: {html}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import tune

    result = tune(args.config, args.trials, out=args.out, overrides=args.overrides)
    print(f"tune folder: {result.tune_dir}\nchosen config: {result.chosen_yaml}\nreport: {result.report_md}")
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from .deploy.gate import gate_command

    return gate_command(args)


def _command(args: argparse.Namespace) -> Callable[[], int]:
    """The function that carries out the parsed command."""
    if args.command == "run":
        stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
        return lambda: _cmd_run(args, stages)
    if args.command in BY_NAME and BY_NAME[args.command].command:
        return lambda: _cmd_run(args, [args.command])
    handler = {"gate": _cmd_gate, "doctor": _cmd_doctor, "report": _cmd_report, "tune": _cmd_tune}[args.command]
    return lambda: handler(args)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; user errors print a message and return 2 (see the module doc)."""
    args = build_parser().parse_args(argv)
    prog = f"{PROG} {args.command}"
    if args.quiet:
        from .progress import set_quiet

        set_quiet()
    try:
        return _command(args)()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished stages are kept, resume with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # printed as a message (exit 2, or 3 for a bug), or re-raised with --debug
        return report_error(e, prog, args.debug)


if __name__ == "__main__":
    sys.exit(main())
