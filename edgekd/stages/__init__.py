"""One module per pipeline stage, named as the stage; each exposes ``run(ctx) -> StageResult``.

The stage list itself is the registry ``edgekd.stage_specs.STAGES`` (torch-free).
"""
from __future__ import annotations

from typing import Callable

from ..stage_specs import BY_NAME, STAGE_NAMES, STAGES, StageSpec
from .base import StageContext, StageResult


def stage_function(spec: StageSpec) -> Callable[[StageContext], StageResult]:
    """The ``run`` function of a stage.

    The stage modules import torch, so they are imported here, when a stage runs, not when the
    pipeline is imported (a bad config fails before torch loads).
    """
    from . import check, distill, export, gate, qat, teacher  # noqa: F401 - each binds edgekd.stages.<name>

    run = globals()[spec.name].run
    return run


__all__ = ["BY_NAME", "STAGES", "STAGE_NAMES", "StageContext", "StageResult", "StageSpec", "stage_function"]
