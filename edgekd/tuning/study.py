"""``edgekd tune``: an Optuna study over KD method, temperature, alpha, student width and teacher.

Objectives: validation accuracy of the INT8 ONNX file (maximize) and its onnxruntime latency
(minimize), with the latency budget as an Optuna constraint; the chosen config is the most accurate
trial within the budget. The base config is trial 0. The study lives in ``<tune>/study.db`` (sqlite),
so a second call with the same folder continues it: ``--trials N`` is the total number of finished
trials the folder should hold. A failed trial is recorded (state FAIL, its error in the trial table
and the log), never dropped; a trial cut off by a kill is re-run with the same parameters, and its
run folder resumes from its staged stages.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Config, stable_hash
from ..errors import ConfigError, EdgekdError, InputError
from .space import ALPHA, METHOD, TEACHER, TEMPERATURE, WIDTH, SearchSpace, default_params, search_space
from .teachers import CachedTeacher, cached_teacher, candidate_weights
from .trial import LatencySpec, run_trial

STUDY_NAME = "edgekd-tune"
INSTALL_FIX = "install with pip install 'edgekd[tune]' (or pip install optuna)"


@dataclass
class TuneResult:
    """What ``edgekd tune`` wrote: the folder, the chosen config file, the summary and the report."""

    tune_dir: Path
    chosen_yaml: Path | None
    summary: dict[str, Any]
    report_md: Path
    report_html: Path


def import_optuna() -> Any:
    """Optuna, or an InputError saying how to install it (it is the optional ``tune`` extra)."""
    try:
        import optuna
    except ImportError as e:
        raise InputError(f"edgekd tune needs optuna, which is not installed ({e})", INSTALL_FIX) from None
    return optuna


def latency_spec(cfg: Config) -> LatencySpec:
    """The budget and where latency is measured: the config's gate budget wins, then ``tune.*``."""
    t, gate = cfg.tune, cfg.budgets.max_latency_ms
    budget = t.max_latency_ms if t.max_latency_ms is not None else (gate.value_ms if gate else None)
    batch, threads = (gate.batch, gate.threads) if gate else (t.latency_batch, t.latency_threads)
    return LatencySpec(batch=batch, threads=threads, runs=t.latency_runs, budget_ms=budget,
                       provider=cfg.check.latency.provider)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _changed(d: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The leaves of ``d`` that differ from ``default`` (a new config key at its default changes nothing)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and isinstance(default.get(k), dict):
            sub = _changed(v, default[k])
            if sub:
                out[k] = sub
        elif k not in default or default[k] != v:
            out[k] = v
    return out


def _study_key(base: dict[str, Any], space: SearchSpace, latency: LatencySpec) -> str:
    """What a study's trials depend on; a folder holding a study with another key is not continued."""
    fixed = {k: v for k, v in _changed(base, Config().to_dict()).items() if k not in ("name", "out_dir", "tune")}
    return stable_hash({"config": fixed, "space": space.describe(), "latency": latency.__dict__})


def _open_study(optuna: Any, tune_dir: Path, key: str, seed: int) -> Any:
    def constraints(trial: Any) -> list[float]:
        return trial.user_attrs.get("constraint", [0.0])  # <= 0: within the latency budget

    # Optuna >= 5 reads constraints the trial sets itself (constraints_func is deprecated there)
    own = hasattr(optuna.trial.Trial, "set_constraint")
    sampler = optuna.samplers.TPESampler(seed=seed, **({} if own else {"constraints_func": constraints}))
    study = optuna.create_study(storage=f"sqlite:///{tune_dir / 'study.db'}", study_name=STUDY_NAME,
                                directions=["maximize", "minimize"], sampler=sampler, load_if_exists=True)
    old = study.user_attrs.get("key")
    if old is None:
        study.set_user_attr("key", key)
    elif old != key:
        raise ConfigError(f"{tune_dir} holds a study of another config or search space (key {old}, this one {key})",
                          "pass another --out folder, or the config that study was started with")
    return study


def _requeue_interrupted(optuna: Any, study: Any, log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a killed process: closed as FAIL and re-enqueued with the same parameters."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number})
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        log(f"[edgekd] tune: trial {t.number} was interrupted; re-running its parameters")


def _interrupted(study: Any) -> set[int]:
    return {t.user_attrs["resumes_trial"] for t in study.get_trials(deepcopy=False) if "resumes_trial" in t.user_attrs}


def _finished_count(optuna: Any, study: Any) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    skip = _interrupted(study)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states) if t.number not in skip)


def _suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    return {
        METHOD: trial.suggest_categorical(METHOD, list(space.methods)),
        TEACHER: trial.suggest_categorical(TEACHER, list(space.teachers)),
        TEMPERATURE: trial.suggest_float(TEMPERATURE, *space.temperature, log=True),
        ALPHA: trial.suggest_float(ALPHA, *space.alpha),
        WIDTH: trial.suggest_categorical(WIDTH, list(space.widths)),
    }


def _one_trial(optuna: Any, study: Any, ctx: dict[str, Any]) -> None:
    """Ask, run, tell. An exception inside the trial is recorded on it (FAIL + error) and logged."""
    trial = study.ask()
    params = _suggest(trial, ctx["space"])
    log, latency = ctx["log"], ctx["latency"]
    log(f"[edgekd] tune: trial {trial.number}: {params}")
    try:
        teacher: CachedTeacher = ctx["teachers"][params[TEACHER]]
        m = run_trial(ctx["base"], params, teacher.weights, ctx["dir"] / "trials", ctx["data"], latency, log=log,
                      candidates=candidate_weights(ctx["teachers"]))
    except Exception as e:  # recorded on the trial and in the log; the study goes on with the next trial
        msg = f"{type(e).__name__}: {getattr(e, 'problem', None) or e}"
        trial.set_user_attr("error", msg)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log(f"[edgekd] tune: trial {trial.number} FAILED: {msg}")
        return
    for k, v in m.items():
        trial.set_user_attr(k, v)
    if latency.budget_ms is not None:
        over = m["latency_ms"] - latency.budget_ms  # <= 0: within the budget
        trial.set_user_attr("constraint", [over])
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("latency", over)
    study.tell(trial, [m["val_accuracy"], m["latency_ms"]])
    log(f"[edgekd] tune: trial {trial.number}: INT8 val accuracy {m['val_accuracy']:.4f}, "
        f"latency {m['latency_ms']:.3f} ms")


def ignored_knobs(row: dict[str, Any]) -> list[str]:
    """The sampled shared KD knobs (temperature, alpha) the trial's method does not read (``KDLoss.uses``):
    their values did nothing, so the tables show "—" for them (ce, rslad; dkd's alpha is distill.dkd's)."""
    from ..losses import KD_LOSSES, loss_class

    method = row.get(METHOD)
    if method not in KD_LOSSES.names():
        return []
    return [k for k in (TEMPERATURE, ALPHA) if k in row and k not in loss_class(method).uses]


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study as a plain row (params, state, metrics, error), by number."""
    interrupted = _interrupted(study)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        row = {"number": t.number, "state": t.state.name, **t.params,
               **{k: v for k, v in t.user_attrs.items() if k != "constraint"}}
        if t.number in interrupted:
            row["error"] = "interrupted (killed); its parameters were run again as a later trial"
        unused = ignored_knobs(row)
        if unused:
            row["unused"] = unused
        rows.append(row)
    return rows


def tune(config: Config | dict | str | Path | None, trials: int, out: str | Path | None = None,
         overrides: list[str] | None = None, log: Callable[[str], None] | None = None) -> TuneResult:
    """Search the config's ``tune`` space for ``trials`` trials (in total, across resumed calls).

    Writes into ``out`` (default ``<out_dir>/<name>-tune``): ``study.db``, ``teachers/``, ``trials/``,
    ``summary.json``, ``trials.md``, ``pareto.md``, ``plots/pareto.png``, ``report.md``/``.html`` and
    ``chosen.yaml``. Returns the TuneResult; raises EdgekdError when no trial finishes or none meets
    the latency budget (the files are still written, saying so).
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InputError(f"--trials must be a whole number >= 1, got {trials!r}", "pass e.g. --trials 20")
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # edgekd logs each trial itself
    from ..data import build_dataset
    from ..pipeline import resolve_config
    from .outputs import write_outputs

    log = log or _stderr
    cfg = resolve_config(config, overrides)
    if not cfg.qat.enabled:
        raise ConfigError("edgekd tune measures the INT8 model, but qat.enabled is false",
                          "set qat.enabled: true in the config you tune")
    tune_dir = Path(out) if out is not None else Path(cfg.out_dir) / f"{cfg.name}-tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    base, space, latency = cfg.to_dict(), search_space(cfg), latency_spec(cfg)
    study = _open_study(optuna, tune_dir, _study_key(base, space, latency), cfg.tune.sampler_seed)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_params(cfg), user_attrs={"default": True})  # trial 0: the config as given
    _requeue_interrupted(optuna, study, log)
    teachers = {arch: cached_teacher(base, arch, tune_dir / "teachers", log=log) for arch in space.teachers}
    ctx = {"space": space, "latency": latency, "log": log, "teachers": teachers, "base": base, "dir": tune_dir,
           "data": build_dataset(cfg.data, cfg.seed)}
    while _finished_count(optuna, study) < trials:
        _one_trial(optuna, study, ctx)
    return write_outputs(tune_dir, base, space, latency, trial_rows(study), teachers)
