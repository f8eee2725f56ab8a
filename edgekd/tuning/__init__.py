"""``edgekd tune``: search KD method, temperature, alpha, student width and teacher with Optuna.

``tune(config, trials, out=None, overrides=None) -> TuneResult`` is the API the CLI calls; Optuna is
the optional ``tune`` extra (imported when a study starts). See docs/tuning.md.
"""
from __future__ import annotations

from .study import TuneResult, tune

__all__ = ["TuneResult", "tune"]
