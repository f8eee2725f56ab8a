"""``python -m edgekd.deploy.report RUN_DIR [--debug]``: render the run's report again."""
from __future__ import annotations

import sys

from ...errors import report_error
from . import render_report

USAGE = "usage: python -m edgekd.deploy.report RUN_DIR [--debug]"


def main(argv: list[str] | None = None) -> int:
    """Render the report of the run folder given as the only argument; exit 2 on a user error."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        md, html = render_report(args[0])
    except Exception as e:  # printed as a message (exit 2, or 3 for a bug), or re-raised with --debug
        return report_error(e, "edgekd report", debug)
    print(f"report: {md}\nreport: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
