"""Pareto front and the choice of one trial: validation accuracy up, INT8 latency down. Plain Python.

A trial row is a dict with at least ``number``, ``state``, ``val_accuracy`` and ``latency_ms``
(see ``edgekd.tuning.study``); only finished trials (state ``COMPLETE``) take part.
"""
from __future__ import annotations

from typing import Any, Collection, Sequence

Row = dict[str, Any]


def finished(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.get("state") == "COMPLETE"]


def dominates(a: Row, b: Row) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and strictly better in one of the two."""
    ge = a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms"] <= b["latency_ms"]
    gt = a["val_accuracy"] > b["val_accuracy"] or a["latency_ms"] < b["latency_ms"]
    return ge and gt


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """The finished trials no other finished trial dominates, fastest first."""
    done = finished(rows)
    front = [r for r in done if not any(dominates(o, r) for o in done if o is not r)]
    return sorted(front, key=lambda r: (r["latency_ms"], -r["val_accuracy"], r["number"]))


def feasible(row: Row, budget_ms: float | None) -> bool:
    return budget_ms is None or row["latency_ms"] <= budget_ms


def _rank(r: Row) -> tuple[float, float, int]:
    """``choose``'s order: more accurate first, then faster, then earlier."""
    return (-r["val_accuracy"], r["latency_ms"], r["number"])


def choose(rows: Sequence[Row], budget_ms: float | None) -> Row | None:
    """The most accurate finished trial within the latency budget; ties go to the faster, then the earlier.

    None when no finished trial meets the budget (the caller says so; it never picks an over-budget one).
    """
    ok = [r for r in finished(rows) if feasible(r, budget_ms)]
    if not ok:
        return None
    return min(ok, key=_rank)


def taught(rows: Sequence[Row], budget_ms: float | None, not_one_teacher: Collection[str]) -> list[Row]:
    """The trials teacher selection compares: finished, within the latency budget, and trained with a
    method that learns from the trial's one teacher (``not_one_teacher`` lists the others: ce and
    self-distillation learn from none, multi_teacher from an ensemble)."""
    return [r for r in finished(rows) if feasible(r, budget_ms) and r.get("method") not in not_one_teacher]


def teacher_table(rows: Sequence[Row], teacher_accuracy: dict[str, float]) -> list[Row]:
    """Per candidate teacher: its own validation accuracy and the best / mean validation accuracy of the
    students distilled from it (``rows``: the ``taught`` trials), in ``choose``'s order of those best students.

    Teacher selection uses the student column: the teacher that teaches best is not always the one that
    is most accurate itself (a capacity gap, or a teacher too confident for its soft targets to help).
    """
    out, order = [], {}
    for arch, acc in teacher_accuracy.items():
        students = [r for r in rows if r["teacher"] == arch]
        best = min(students, key=_rank) if students else None
        accs = [r["val_accuracy"] for r in students]
        out.append({"teacher": arch, "teacher_val_accuracy": acc, "trials": len(students),
                    "best_student_val_accuracy": best["val_accuracy"] if best else None,
                    "mean_student_val_accuracy": sum(accs) / len(accs) if accs else None})
        order[arch] = (0, *_rank(best)) if best else (1, 0.0, 0.0, 0)
    return sorted(out, key=lambda r: order[r["teacher"]])


def teacher_selection(table: Sequence[Row], taught_rows: Sequence[Row], chosen: Row | None) -> dict[str, Any]:
    """Which teacher is most accurate, which taught the best student (``choose``'s rule over the ``taught``
    trials, so the chosen trial's teacher whenever that trial learned from one teacher), whether they differ,
    and whether the chosen trial learned from one teacher.

    They differ only when the most accurate teacher's own best student is less accurate: a tie (broken by
    latency) is no difference, and a most accurate teacher with no student that counts was not compared.
    """
    if not table:
        return {}
    most = max(table, key=lambda r: r["teacher_val_accuracy"])
    best = choose(taught_rows, None)
    best_teaching = best["teacher"] if best is not None else None
    compared = most["best_student_val_accuracy"] is not None
    return {"most_accurate_teacher": most["teacher"], "best_student_teacher": best_teaching,
            "most_accurate_compared": compared,
            "differ": best is not None and compared and most["best_student_val_accuracy"] < best["val_accuracy"],
            "chosen_learns_from_one_teacher": chosen is not None
            and chosen["number"] in {r["number"] for r in taught_rows}}
