"""The stage graph: run folder, skip-if-unchanged, resume, and the manifest record of every stage.

A stage's fingerprint is the hash of the config sections it reads plus the sha256 of the
artifacts it consumes. A stage whose fingerprint matches the manifest and whose artifacts
still verify is skipped; anything else re-runs it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, config_from_dict, dump_config, load_config
from .environment import environment
from .errors import ArtifactError, ConfigError
from .io import atomic_write_text
from .manifest import Manifest
from .stages import STAGE_ORDER, StageContext, StageResult


@dataclass(frozen=True)
class StageSpec:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads
    inputs: tuple[tuple[str, str], ...]  # (stage, artifact key) it consumes
    always: bool = False  # cheap verdict stages run every time


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("teacher", ("seed", "deterministic", "data", "teacher", "teacher_train"), ()),
        StageSpec("distill", ("seed", "deterministic", "data", "student", "distill"), (("teacher", "weights"),)),
        StageSpec("qat", ("seed", "deterministic", "data", "student", "distill", "qat"),
                  (("teacher", "weights"), ("distill", "weights"))),
        StageSpec("export", ("data", "teacher", "student", "export", "qat"),
                  (("teacher", "weights"), ("distill", "weights"), ("qat", "weights"))),
        StageSpec("check", ("seed", "data", "check", "student", "teacher"),
                  (("export", "teacher_fp32"), ("export", "student_fp32"), ("export", "student_int8"),
                   ("teacher", "weights"), ("distill", "weights"))),
        StageSpec("gate", ("budgets",), (), always=True),
    )
}


@dataclass
class Run:
    """The outcome of ``edgekd.run``: where it landed and what it measured."""

    run_dir: Path
    manifest: Manifest
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report_md: Path | None = None
    report_html: Path | None = None

    @property
    def passed(self) -> bool | None:
        gate = self.manifest.stage("gate")
        return None if gate is None else bool(gate["metrics"].get("passed"))

    def metrics(self, stage: str) -> dict[str, Any]:
        return self.manifest.metrics(stage)


def resolve_config(config: Config | dict | str | Path | None, overrides: list[str] | None = None) -> Config:
    if isinstance(config, Config):
        return config_from_dict(config.to_dict(), overrides) if overrides else config
    if isinstance(config, dict):
        return config_from_dict(config, overrides)
    return load_config(config, overrides)


def fingerprint(cfg: Config, spec: StageSpec, manifest: Manifest) -> tuple[str, dict[str, str]]:
    inputs: dict[str, str] = {}
    for stage, key in spec.inputs:
        sha = manifest.artifact_sha(stage, key)
        if sha is None:
            raise ArtifactError(
                f"stage '{spec.name}' needs '{key}' from stage '{stage}', which this run has not produced",
                f"run the '{stage}' stage first, or 'edgekd run' for the whole chain",
            )
        inputs[f"{stage}.{key}"] = sha
    d = cfg.to_dict()
    payload = {"config": {k: d[k] for k in spec.sections}, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16], inputs


def _up_to_date(manifest: Manifest, spec: StageSpec, fp: str) -> bool:
    entry = manifest.stage(spec.name)
    if spec.always or entry is None or entry.get("status") != "done" or entry.get("config_hash") != fp:
        return False
    try:
        for key in entry.get("artifacts", {}):
            manifest.artifact(spec.name, key)
    except ArtifactError:
        return False
    return True


def prepare_run_dir(cfg: Config, out: str | Path | None) -> tuple[Path, Manifest]:
    run_dir = Path(out if out is not None else cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(run_dir, must_exist=False)
    manifest.data["run_name"] = cfg.name
    manifest.data["config"] = cfg.to_dict()
    manifest.data["config_hash"] = cfg.hash()
    manifest.data["environment"] = environment()
    manifest.data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    manifest.save()
    return run_dir, manifest


def run_stage(ctx: StageContext, name: str, force: bool = False) -> bool:
    """Run one stage unless up to date; returns True when it ran."""
    spec = STAGES[name]
    fp, inputs = fingerprint(ctx.cfg, spec, ctx.manifest)
    if not force and _up_to_date(ctx.manifest, spec, fp):
        ctx.log(f"[edgekd] {name}: up to date, skipped (fingerprint {fp})")
        return False
    ctx.log(f"[edgekd] {name}: running")
    ctx.fingerprint = fp
    module = importlib.import_module(f"edgekd.stages.{name}")
    t0 = time.perf_counter()
    result: StageResult = module.run(ctx)
    seconds = time.perf_counter() - t0
    ctx.manifest.record_stage(name, result.artifacts, result.metrics, fp, inputs, seconds, result.extra)
    ctx.log(f"[edgekd] {name}: done in {seconds:.1f} s")
    return True


def run(
    config: Config | dict | str | Path | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    stages: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    log: Any = None,
) -> Run:
    """Run the pipeline (or the named stages) and return the Run.

    ``config`` is a Config, a dict, a YAML path, or None for ``configs/fashion_mnist.yaml``.
    ``resume`` continues an interrupted training stage from its last epoch checkpoint;
    ``force`` re-runs stages even when their inputs and config are unchanged.
    """
    cfg = resolve_config(config, overrides)
    wanted = list(stages) if stages else list(cfg.stages)
    for s in wanted:
        if s not in STAGES:
            raise ConfigError(f"unknown stage '{s}'; valid: {', '.join(STAGE_ORDER)}")
    run_dir, manifest = prepare_run_dir(cfg, out)
    ctx = StageContext(cfg=cfg, run_dir=run_dir, manifest=manifest, resume=resume)
    if log is not None:
        ctx.log = log
    result = Run(run_dir=run_dir, manifest=manifest)
    for name in STAGE_ORDER:
        if name not in wanted:
            continue
        if not cfg.qat.enabled and name == "qat":
            raise ConfigError("qat.enabled is false but the INT8 chain needs the qat stage",
                              "drop 'qat' (and 'export', 'check') from stages, or enable qat")
        (result.ran if run_stage(ctx, name, force) else result.skipped).append(name)
    if "check" in manifest.data["stages"]:
        from .report import render_report

        result.report_md, result.report_html = render_report(run_dir)
    return result
