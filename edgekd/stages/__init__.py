"""One module per pipeline stage; each exposes ``run(ctx) -> StageResult``."""
from .base import StageContext, StageResult

STAGE_ORDER = ("teacher", "distill", "qat", "export", "check", "gate")

__all__ = ["STAGE_ORDER", "StageContext", "StageResult"]
