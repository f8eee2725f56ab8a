"""Robustness suite: corruptions, attacks, OOD sets, metrics and the check-stage evaluation.

Importing this package pulls in numpy only; ``edgekd.robustness.attacks`` (torch) is imported
where white-box attacks or robust distillation need it.
"""
from __future__ import annotations

from .blackbox import square_attack
from .corruptions import CORRUPTIONS, apply_corruption
from .evaluate import add_mce, evaluate_robustness, transfer_attack
from .metrics import auroc, ece, energy_score, fit_temperature, mce, msp_score, reliability
from .ood import OOD_SETS, make_ood

__all__ = [
    "CORRUPTIONS", "OOD_SETS", "add_mce", "apply_corruption", "auroc", "ece", "energy_score", "evaluate_robustness",
    "fit_temperature", "make_ood", "mce", "msp_score", "reliability", "square_attack", "transfer_attack",
]
