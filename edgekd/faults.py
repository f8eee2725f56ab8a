"""Deterministic fault injection: a TEST HOOK that SIGKILLs this process at a named point.

Set ``EDGEKD_FAULT_AT`` to a point name (or several, comma-separated) and the process kills itself
with ``SIGKILL`` the moment it reaches that point: no ``finally`` block, no atexit handler and no
flush runs, exactly as if the machine lost power or the OOM killer struck. The kill-and-resume
tests (tests/test_kill_resume.py) use it to stop a real ``edgekd run`` at a precise place.

Named points (``<stage>`` is teacher, distill or qat):

- ``<stage>:step:<n>``: right after global optimizer step ``n`` (1-based) of a training stage;
- ``<stage>:checkpoint-write:<epoch>``: half-way through writing the epoch checkpoint's temp file;
- ``<stage>:weights-write``: half-way through writing the stage's weights file;
- ``export:after:<key>``: after an ONNX file (teacher_fp32, student_fp32, student_int8) is staged
  and checked, before the next one;
- ``promote:<stage>:move:<i>`` / ``commit:move:<i>``: after the i-th (0-based) file move of a
  journaled promotion or commit (edgekd.staging).

Unset (the default) every point is a no-op costing one dict lookup. Never set it in production.
"""
from __future__ import annotations

import os
import signal

ENV = "EDGEKD_FAULT_AT"


def fault_point(name: str) -> None:
    """SIGKILL this process if ``name`` is one of the points in ``$EDGEKD_FAULT_AT`` (test hook)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if name in (w.strip() for w in wanted.split(",")):
        os.kill(os.getpid(), signal.SIGKILL)
