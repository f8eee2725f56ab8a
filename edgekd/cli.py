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
  edgekd compare export/baseline export/fashion_mnist
                                               accuracy, robustness, size and latency deltas of two runs
  edgekd sensitivity export/fashion_mnist      which quantized layer costs accuracy (keep it float: qat.keep_float)
  edgekd divergence export/fashion_mnist       first layer where the INT8 file departs from the QAT model

exit codes: 0 success (gate passed), 1 gate failed, 2 bad input or missing/corrupt files,
3 internal error. Add --debug to any command to see the traceback of an error."""

# Appended to every subcommand's --help that does not state its own (tests/test_cli_help.py checks them all).
EXIT_CODES = """\
exit codes: 0 success, 2 bad input or missing/corrupt files, 3 internal error (a bug: --debug
shows its traceback)."""

STAGE_EXIT_CODES = """\
exit codes: 0 success, 2 bad input, missing/corrupt files or a failed stage (the run folder is
unchanged), 3 internal error (--debug shows its traceback), 130 interrupted (continue with --resume)."""

RUN_EXIT_CODES = """\
exit codes: 0 success (and the gate passed, when it ran), 1 the gate failed, 2 bad input,
missing/corrupt files or a failed stage (the run folder is unchanged), 3 internal error (--debug
shows its traceback), 130 interrupted (continue with --resume)."""

RUN_EPILOG = """\
examples:
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs --set data.batch_size=128
  edgekd {cmd} -c configs/smoke.yaml --out /tmp/runs --resume      continue after an interruption{extra}

A stage whose config and inputs are unchanged is skipped (--force re-runs it). A failed stage
exits 2 and leaves the run's verified files as they were."""

GATE_EPILOG = """\
examples:
  edgekd gate export/fashion_mnist                     the budgets the run was configured with
  edgekd gate export/fashion_mnist --max-size-mb 2 --min-accuracy 0.85
  edgekd gate export/fashion_mnist --max-latency-ms 3 --latency-batch 1 --latency-threads 1
  edgekd gate export/fashion_mnist --junit reports/gate.xml --summary reports/gate.md

Every ONNX file is verified against its sha256 first.

exit codes: 0 every budget met, 1 a budget missed, 2 an error (missing or corrupt run, unmeasured
budget, unwritable --junit/--summary), 3 internal error."""

DOCTOR_EPILOG = """\
examples:
  edgekd doctor export/fashion_mnist           the run's INT8 model: the check stage's latency table (every
                                               batch/thread setting) leads the verdict, and where INT8 was
                                               slower it names the setting, the likely cause and what to do
  edgekd doctor model.int8.onnx                any ONNX file (no timing)"""

SENSITIVITY_EPILOG = """\
examples:
  edgekd sensitivity export/fashion_mnist      every quantized layer: accuracy quantized alone / kept float alone
  edgekd sensitivity export/fashion_mnist --images 500 --threads 1 --top 10

Writes sensitivity.json into the run folder (recorded in manifest.json with its sha256) and prints
the top offenders; qat.keep_float / qat.keep_float_most_sensitive keep such layers in float.

exit codes: 0 ranked and written, 2 bad input (missing run, changed file, --images < 1), 3 internal error."""

DIVERGENCE_EPILOG = """\
examples:
  edgekd divergence export/fashion_mnist       the INT8 file vs the QAT model, int8 kernels as fused
  edgekd divergence export/fashion_mnist --model fp32 --images 8

Compares layer by layer at the onnxruntime optimization level the check stage uses ('all') and
names the first layer whose relative error exceeds --threshold.

exit codes: 0 compared (whether or not a layer diverges), 2 bad input (missing run, changed file, unknown
--model), 3 internal error."""

REPORT_EPILOG = """\
examples:
  edgekd report export/fashion_mnist           rewrites report.md, report.html and plots/

The recorded models are verified against their sha256 first: a changed file is an error (exit 2)."""

COMPARE_EPILOG = """\
examples:
  edgekd compare export/baseline export/candidate                 markdown table of B - A to stdout
  edgekd compare export/baseline export/candidate --out compare.md --model student_int8
  edgekd report export/candidate --compare export/baseline         the same deltas as a report section

Reads the two manifests' check metrics (a run folder or its manifest.json; no model is run): accuracy,
size, latency (median ms per batch/threads) and robustness (corruption, adversarial, ECE, OOD AUROC).

exit codes: 0 compared, 2 a run is missing, has no check metrics, or --out cannot be written,
3 internal error."""

STATS_EPILOG = """\
examples:
  edgekd stats /path/to/images                      classes, image counts, size, mean/std per channel
  edgekd stats /path/to/images --json stats.json    also write them as JSON
  edgekd stats /path/to/images --on-corrupt skip    leave unreadable images out (listed in a warning)

Reads the folder exactly as a run with data.dataset: image_folder would (root/<class>/<image> or
root/train/ + root/test/; see docs/own-data.md). exit codes: 0 done, 2 a missing folder, an unreadable
image (with --on-corrupt fail) or an unwritable --json path, 3 internal error."""

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


def _sub(sub: argparse._SubParsersAction, name: str, help: str, epilog: str,
         exit_codes: str = EXIT_CODES) -> argparse.ArgumentParser:
    """A subcommand whose --help has a description, the epilog's examples, and its exit codes."""
    if "exit codes:" not in epilog:
        epilog = f"{epilog}\n\n{exit_codes}"
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_common()])


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file, or a built-in name: smoke, fashion_mnist, fashion_mnist_gpu, cifar10, cifar100, image_folder (default: fashion_mnist)")
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
             RUN_EPILOG.format(cmd="run", extra="\n  edgekd run -c configs/smoke.yaml --out /tmp/runs --stages export,check"),
             RUN_EXIT_CODES)
    _add_run_options(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run, e.g. export,check")
    for spec in STAGES:
        if spec.command:
            _add_run_options(_sub(sub, spec.name, spec.help, RUN_EPILOG.format(cmd=spec.name, extra=""),
                                  STAGE_EXIT_CODES))
    g = _sub(sub, "gate", "pass/fail a run against size, accuracy, latency and robustness budgets", GATE_EPILOG)
    add_gate_arguments(g)
    d = _sub(sub, "doctor", "explain why INT8 is (or is not) faster for a run or an ONNX file", DOCTOR_EPILOG)
    d.add_argument("target", help="a run folder or an .onnx file")
    d.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider")
    s = _sub(sub, "sensitivity", "rank a run's quantized layers by the accuracy their int8 form costs",
             SENSITIVITY_EPILOG)
    s.add_argument("run_dir", help="a run folder written by 'edgekd run' (export stage finished)")
    s.add_argument("--images", type=int, default=2000, help="test images to score each variant on (default 2000)")
    s.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default 0 = all cores)")
    s.add_argument("--top", type=int, default=5, help="offenders to print (default 5)")
    v = _sub(sub, "divergence", "name the first layer where a run's ONNX file departs from its torch model",
             DIVERGENCE_EPILOG)
    v.add_argument("run_dir", help="a run folder written by 'edgekd run' (export stage finished)")
    v.add_argument("--model", default="int8", help="int8 (vs the QAT model, default) or fp32 (vs the student)")
    v.add_argument("--images", type=int, default=32, help="test images to compare on (default 32)")
    v.add_argument("--threshold", type=float, default=0.05, help="relative L2 error that counts as diverging")
    v.add_argument("--optimization", default="all", help="onnxruntime graph optimization level (default all)")
    r = _sub(sub, "report", "render report.md and report.html for a run folder again", REPORT_EPILOG)
    r.add_argument("run_dir", help="a run folder written by 'edgekd run'")
    r.add_argument("--compare", metavar="BASELINE_RUN",
                   help="add a section comparing this run (B) with BASELINE_RUN (A): see 'edgekd compare'")
    c = _sub(sub, "compare", "show accuracy, robustness, size and latency deltas between two runs", COMPARE_EPILOG)
    c.add_argument("run_a", help="run A, the reference: a run folder or its manifest.json")
    c.add_argument("run_b", help="run B, compared with A (deltas are B - A)")
    c.add_argument("--model", action="append", metavar="NAME",
                   help="compare only this model (teacher, student_fp32, student_int8; repeatable; default all)")
    c.add_argument("--out", help="also write the markdown to this file")
    st = _sub(sub, "stats", "show an image folder's class balance, image size and per-channel mean/std", STATS_EPILOG)
    st.add_argument("root", help="an image folder: root/<class>/<image>, or root/train/ and root/test/")
    st.add_argument("--json", metavar="PATH", help="also write the statistics to this JSON file")
    st.add_argument("--on-corrupt", choices=("fail", "skip"), default="fail",
                    help="an unreadable image: stop naming it (fail, default) or leave it out with a warning (skip)")
    st.add_argument("--image-size", type=int, help="resize to this square size first (default: the native size)")
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
    fp32, check = None, None
    # a file is an ONNX model; anything else is a run folder (a missing one is named as such)
    if not target.is_file() and not (target.suffix == ".onnx" and not target.exists()):
        m = Manifest.load(target)
        fp32 = m.artifact("export", "student_fp32")
        target = m.artifact("export", "student_int8")
        check = m.metrics("check") or None  # the measured latency table leads the verdict
    print(format_diagnosis(diagnose(target, provider=args.provider, fp32_path=fp32, check=check)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .deploy.report import render_report

    md, html = render_report(args.run_dir, compare_to=args.compare)
    print(f"report: {md}\nreport: {html}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .deploy.compare import compare_runs, to_markdown, write_markdown

    cmp = compare_runs(args.run_a, args.run_b, args.model)
    if args.out:
        write_markdown(cmp, args.out)  # before printing: a failed write never follows printed output
    print(to_markdown(cmp), end="")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .data.stats import folder_stats, format_stats, write_stats

    stats = folder_stats(args.root, on_corrupt=args.on_corrupt, image_size=args.image_size)
    if args.json:
        write_stats(stats, args.json)  # before printing: a failed write never follows printed output
    print(format_stats(stats))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import tune

    result = tune(args.config, args.trials, out=args.out, overrides=args.overrides)
    print(f"tune folder: {result.tune_dir}\nchosen config: {result.chosen_yaml}\nreport: {result.report_md}")
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from .deploy.sensitivity import format_sensitivity, run_sensitivity

    if args.top < 1:
        from .errors import ConfigError

        raise ConfigError(f"--top must be >= 1, got {args.top}", "pass a positive number of layers to print")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr
    result = run_sensitivity(args.run_dir, images=args.images, threads=args.threads, log=log)
    print(format_sensitivity(result, args.top))
    print(f"sensitivity: {Path(args.run_dir) / 'sensitivity.json'}")
    return 0


def _cmd_divergence(args: argparse.Namespace) -> int:
    from .stages.inspect import format_divergence, run_divergence

    print(format_divergence(run_divergence(args.run_dir, model=args.model, images=args.images,
                                           threshold=args.threshold, optimization=args.optimization)))
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
    handler = {"gate": _cmd_gate, "doctor": _cmd_doctor, "report": _cmd_report, "tune": _cmd_tune, "compare": _cmd_compare,
               "sensitivity": _cmd_sensitivity, "divergence": _cmd_divergence, "stats": _cmd_stats}[args.command]
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
