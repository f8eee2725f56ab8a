"""Candidate teachers, each trained once per tune folder and reused by every trial (and by benchmarks).

A teacher is an ordinary ``edgekd run`` of the teacher stage alone, in ``<folder>/<arch>/``: the
pipeline's fingerprint skips it when it is already there, so a resumed tune never retrains one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class CachedTeacher:
    arch: str
    weights: Path  # the verified teacher.pt of the teacher run
    val_accuracy: float
    test_accuracy: float
    trained: bool  # False: reused from an earlier call


def cached_teacher(base: dict[str, Any], arch: str, folder: Path, log: Callable[[str], None] | None = None
                   ) -> CachedTeacher:
    """Train (or reuse) teacher ``arch`` with the base config's data, seed and teacher schedule."""
    from ..pipeline import run

    d = copy.deepcopy(base)
    d["name"] = arch
    if arch != d["teacher"]["arch"]:
        d["teacher"]["weights"] = None  # the base teacher's weights file fits its own arch only
    d["teacher"]["arch"] = arch
    d["stages"] = ["teacher"]
    result = run(d, out=folder, stages=["teacher"], resume=True, log=log)
    m = result.metrics("teacher")
    return CachedTeacher(arch=arch, weights=result.manifest.artifact("teacher", "weights"),
                         val_accuracy=float(m["val_accuracy"]), test_accuracy=float(m["test_accuracy"]),
                         trained="teacher" in result.ran)


def candidate_weights(teachers: dict[str, CachedTeacher]) -> dict[str, str]:
    """arch -> weights file of each cached candidate teacher (``multi_teacher``'s extra teachers)."""
    return {arch: str(t.weights) for arch, t in teachers.items()}
