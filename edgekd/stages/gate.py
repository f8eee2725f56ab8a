"""Gate stage: the run's verdict against its config's budgets (same function as ``edgekd gate``)."""
from __future__ import annotations

from ..deploy.gate import format_table, gate
from .base import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    result = gate(ctx.manifest.run_dir, ctx.cfg.budgets)  # the staged run folder, as it will be committed
    for line in format_table(result).splitlines():
        ctx.log(f"[edgekd] gate: {line}")
    return StageResult(metrics=result.to_metrics())
