"""The search space of ``edgekd tune``, and how a trial's parameters turn into a config ``edgekd run`` accepts.

Torch-free: it reads the config and the KD-loss registry names only. The base config's own values
are always inside the space, so the unchanged config can be enqueued as trial 0 (Optuna
re-samples an enqueued value that lies outside its distribution).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..config import Config, DistillConfig
from ..validation import TORCH_REGISTRIES, registered_names, uncacheable_losses

# Optuna parameter names; also the columns of the trial table.
METHOD, TEACHER, TEMPERATURE, ALPHA, WIDTH = "method", "teacher", "temperature", "alpha", "student_width"
MULTI_TEACHER = "multi_teacher"  # the one method that reads distill.teachers


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose: categorical methods, teachers and widths, ranges for T and alpha."""

    methods: tuple[str, ...]
    teachers: tuple[str, ...]
    temperature: tuple[float, float]  # log-uniform
    alpha: tuple[float, float]  # uniform
    widths: tuple[float, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-ready form, recorded in the tune summary and the report."""
        return {METHOD: list(self.methods), TEACHER: list(self.teachers), TEMPERATURE: list(self.temperature),
                ALPHA: list(self.alpha), WIDTH: list(self.widths)}


def _with(values: list[Any], extra: Any) -> tuple[Any, ...]:
    """``values`` plus ``extra`` (once), order kept: the base config's choice is always a candidate."""
    return tuple(values) + (() if extra in values else (extra,))


def search_space(cfg: Config) -> SearchSpace:
    """The space ``cfg.tune`` describes, widened to hold ``cfg``'s own loss, teacher, T, alpha and width.

    An empty ``tune.methods`` means every registered KD loss (new loss files join automatically);
    an empty ``tune.teachers`` means the config's teacher alone.
    """
    t = cfg.tune
    methods = t.methods or registered_names(TORCH_REGISTRIES["distill.loss"])
    T, a = cfg.distill.temperature, cfg.distill.alpha
    return SearchSpace(
        methods=_with(list(methods), cfg.distill.loss),
        teachers=_with(list(t.teachers), cfg.teacher.arch),
        temperature=(min(t.temperature[0], T), max(t.temperature[1], T)),
        alpha=(min(t.alpha[0], a), max(t.alpha[1], a)),
        widths=_with(list(t.student_widths), cfg.student.width),
    )


def default_params(cfg: Config) -> dict[str, Any]:
    """The base config as trial parameters (trial 0)."""
    return {METHOD: cfg.distill.loss, TEACHER: cfg.teacher.arch, TEMPERATURE: cfg.distill.temperature,
            ALPHA: cfg.distill.alpha, WIDTH: cfg.student.width}


def apply_params(base: dict[str, Any], params: dict[str, Any],
                 candidates: dict[str, str] | None = None) -> dict[str, Any]:
    """A copy of the config dict ``base`` with a trial's choices written into their config keys.

    The settings a method depends on follow it, so every method of the space runs from one base config:
    a loss cached logits cannot serve (``uncacheable_losses``) runs its teacher every step; extra
    teachers (``distill.teachers``) go only to ``multi_teacher``, the one method that reads them. When
    the base config is another method and lists none, ``multi_teacher`` learns from the trial's teacher
    plus the other candidate teachers (``candidates``: arch -> weights file), built like the base teacher.
    """
    d = copy.deepcopy(base)
    d["distill"]["loss"] = params[METHOD]
    d["distill"]["temperature"] = float(params[TEMPERATURE])
    d["distill"]["alpha"] = float(params[ALPHA])
    d["student"]["width"] = float(params[WIDTH])
    d["teacher"]["arch"] = params[TEACHER]
    ds = d["distill"]
    if params[METHOD] in uncacheable_losses():
        ds["cache_teacher_logits"] = False
    if params[METHOD] != MULTI_TEACHER:
        ds["teachers"], ds["teacher_weights"] = [], []
        ds["teacher_weighting"] = DistillConfig().teacher_weighting
    elif not ds["teachers"] and candidates and base["distill"]["loss"] != MULTI_TEACHER:
        # multi_teacher is the tuner's addition here (a multi_teacher base config's trials, trial 0 first,
        # keep the teachers it lists, none or some)
        ds["teachers"] = [{**base["teacher"], "arch": arch, "weights": str(w)}
                          for arch, w in candidates.items() if arch != params[TEACHER]]
        if ds["teacher_weighting"] == "fixed":  # its weights were given for a teacher list of another length
            ds["teacher_weighting"], ds["teacher_weights"] = DistillConfig().teacher_weighting, []
    return d


def trial_config(base: dict[str, Any], params: dict[str, Any], teacher_weights: str, name: str,
                 candidates: dict[str, str] | None = None) -> dict[str, Any]:
    """The config a trial runs: ``params`` applied, the cached teacher loaded (not retrained), no check stage.

    ``teacher_train.epochs = 0`` makes the teacher stage load ``teacher.weights`` and score it, so each
    teacher is trained once per tune folder. The trial stops after export: the tuner measures the INT8
    file itself (validation accuracy and latency in onnxruntime), which is all the objective needs.
    """
    d = apply_params(base, params, candidates)
    d["name"] = name
    d["teacher"]["weights"] = teacher_weights
    d["teacher_train"]["epochs"] = 0
    d["stages"] = ["teacher", "distill", "qat", "export"]
    return d


def chosen_config(base: dict[str, Any], params: dict[str, Any], tune_dir: str,
                  candidates: dict[str, str] | None = None) -> dict[str, Any]:
    """The chosen trial as a config ``edgekd run`` accepts: it trains its own teacher, like the base config did.

    The run is seeded and deterministic, so it retrains the teacher the tuner cached. A teacher of
    another arch than the base config's starts from scratch, as the tuner's did (the base
    ``teacher.weights`` fit the base arch only). ``multi_teacher``'s extra candidate teachers are the
    tune folder's cached ones. ``tune.source`` points the run report at the tune folder's Pareto front.
    """
    d = apply_params(base, params, candidates)
    if params[TEACHER] != base["teacher"]["arch"]:
        d["teacher"]["weights"] = None
    d["name"] = f"{base['name']}-tuned"
    d["tune"]["source"] = tune_dir
    return d
