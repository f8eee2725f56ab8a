"""``python -m edgekd.report RUN_DIR``: render the run's report again."""
from __future__ import annotations

import sys

from ..errors import EdgekdError
from . import render_report


def main(argv: list[str] | None = None) -> int:
    """Render the report of the run folder given as the only argument; exit 2 on a user error."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m edgekd.report RUN_DIR", file=sys.stderr)
        return 2
    try:
        md, html = render_report(args[0])
    except EdgekdError as e:
        print(f"edgekd report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {md}\nreport: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
