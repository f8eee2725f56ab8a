"""KD losses: the ``KD_LOSSES`` registry, the ``KDLoss`` base and the ``Distiller``.

Every module in this package is imported here, so a new loss is one new file that registers
itself with ``@register_kd_loss(name)`` (see ``base.py``); nothing else needs editing.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import KD_LOSSES, Distiller, KDLoss, loss_class, register_kd_loss

__all__ = ["KD_LOSSES", "KDLoss", "Distiller", "loss_class", "register_kd_loss"]

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
