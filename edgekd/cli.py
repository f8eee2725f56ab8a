"""Command line: argument parsing only; every command calls the public API.

Exit codes: 0 success (and gate passed), 1 gate failed, 2 error (bad input, missing files).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EdgekdError

TRAIN_STAGES = ("teacher", "distill", "qat", "export", "check")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (default: configs/fashion_mnist.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set distill.temperature=2 (repeatable)")
    p.add_argument("--out", help="folder runs land in (default: the config's out_dir, 'export')")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training stage from its last epoch")
    p.add_argument("--force", action="store_true", help="re-run stages even when inputs and config are unchanged")


def build_parser() -> argparse.ArgumentParser:
    from .gate import add_gate_arguments

    parser = argparse.ArgumentParser(prog="edgekd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="the whole pipeline: teacher > distill > qat > export > check > gate")
    _add_run_options(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    helps = {
        "teacher": "train (or load) the teacher",
        "distill": "distill the teacher into the student",
        "qat": "INT8 quantization-aware fine-tuning with KD",
        "export": "ONNX export (fp32 + int8 QDQ), onnxsim, parity checks",
        "check": "onnxruntime accuracy, robustness, size and latency on CPU",
    }
    for name in TRAIN_STAGES:
        _add_run_options(sub.add_parser(name, help=helps[name]))
    g = sub.add_parser("gate", help="pass/fail a run against size, accuracy, latency and robustness budgets")
    add_gate_arguments(g)
    d = sub.add_parser("doctor", help="explain why INT8 is (or is not) faster for a run or an ONNX file")
    d.add_argument("target", help="a run folder or an .onnx file")
    d.add_argument("--provider", default="CPUExecutionProvider")
    r = sub.add_parser("report", help="render report.md and report.html for a run folder again")
    r.add_argument("run_dir")
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
    from .doctor import diagnose, format_diagnosis
    from .manifest import Manifest

    target = Path(args.target)
    fp32 = None
    if target.is_dir():
        m = Manifest.load(target)
        fp32 = m.artifact("export", "student_fp32")
        target = m.artifact("export", "student_int8")
    print(format_diagnosis(diagnose(target, provider=args.provider, fp32_path=fp32)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report

    md, html = render_report(args.run_dir)
    print(f"report: {md}\nreport: {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
            return _cmd_run(args, stages)
        if args.command in TRAIN_STAGES:
            return _cmd_run(args, [args.command])
        if args.command == "gate":
            from .gate import gate_command

            return gate_command(args)
        if args.command == "doctor":
            return _cmd_doctor(args)
        if args.command == "report":
            return _cmd_report(args)
    except EdgekdError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekd: interrupted; finished stages are kept, resume with --resume", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
