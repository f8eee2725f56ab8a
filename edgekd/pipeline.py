"""The stage graph: run folder, skip-if-unchanged, resume, and the manifest record of every stage.

A stage's fingerprint is the hash of the config sections it reads plus the sha256 of the
artifacts it consumes and of the files its config names (``StageSpec.files``, edgekd.config_files: a
path alone would not see a file retrained in place). A stage whose fingerprint matches the manifest and whose artifacts
still verify is skipped; anything else re-runs it.

Writes are staged (edgekd.staging): a stage writes into ``<run>/.staging/stage-<name>/``, is checked
there, and is promoted into the shadow run folder ``<run>/.staging/run/``; only when every
requested stage succeeded is the shadow committed to the run folder, manifest last. Each stage's
manifest entry keeps the config sections it ran with (``config``); the top-level ``config``,
``config_hash`` and ``config.yaml`` are those of the last command that committed.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, config_from_dict, dump_config, load_config, stable_hash
from .config_files import config_file_inputs, refuse_paths_inside_the_run
from .environment import environment
from .errors import ArtifactError, ConfigError
from .manifest import Manifest
from .staging import STAGING_DIR, Transaction, record_failure
from .validation import check_stage_names
from .stages import BY_NAME, STAGE_NAMES, STAGES, StageContext, StageResult, StageSpec, stage_function


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
        # a Config built in Python skipped load-time validation: validate it the same way
        return config_from_dict(config.to_dict(), overrides)
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
    for stage, key in spec.optional_inputs:
        sha = manifest.artifact_sha(stage, key)
        if sha is not None:
            inputs[f"{stage}.{key}"] = sha
    inputs.update(config_file_inputs(cfg, spec.files))
    d = cfg.to_dict()
    payload = {"config": {k: d[k] for k in spec.sections}, "inputs": inputs}
    return stable_hash(payload), inputs


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


@dataclass(frozen=True)
class _Ranks:
    """This process's place under torchrun: rank 0 alone writes; the others wait at barriers."""

    main: bool = True
    distributed: bool = False
    world_size: int = 1

    def sync(self) -> None:
        if self.distributed:
            from .train.distributed import barrier

            barrier()

    def finish(self) -> None:
        """The last barrier of a command: every rank waits, then all leave the process group."""
        if self.distributed:
            from .train.distributed import finish_distributed

            finish_distributed()


def _join_ranks(cfg: Config) -> _Ranks:
    """Join the process group early when launched by torchrun, so rank 0 can stage before the others read.

    Outside torchrun (WORLD_SIZE unset or 1) torch is not even imported here.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return _Ranks()
    from .train.distributed import distributed_context, init_distributed, resolve_device

    init_distributed(resolve_device(cfg.device))
    dctx = distributed_context()
    return _Ranks(main=dctx.is_main, distributed=True, world_size=dctx.world_size)


def _run_fields(cfg: Config) -> dict[str, Any]:
    """Top-level manifest fields for the command's config (they land with the commit, never before)."""
    return {"run_name": cfg.name, "config": cfg.to_dict(), "config_hash": cfg.hash(), "environment": environment(cfg),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_folder(cfg: Config, out: str | Path | None) -> Path:
    """Where a run of ``cfg`` lives: ``out`` (or the config's ``out_dir``) / its name."""
    return Path(out if out is not None else cfg.out_dir) / cfg.name


def open_run(cfg: Config, out: str | Path | None, resume: bool, ranks: _Ranks,
             log: Any = None) -> tuple[Path, Transaction]:
    """The run folder and this command's staged work on it (rank 0 opens; the others attach)."""
    run_dir = run_folder(cfg, out)
    txn: Transaction | None = None
    if ranks.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        txn = Transaction.open(run_dir, resume, log=log or _stderr)
        fields = _run_fields(cfg)
        fields["created"] = txn.manifest.data.get("created") or fields["created"]
        txn.set_run_config(fields, dump_config(cfg))
    ranks.sync()
    return run_dir, txn if txn is not None else Transaction.attach(run_dir)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_stage(ctx: StageContext, txn: Transaction, name: str, force: bool = False,
              ranks: _Ranks = _Ranks()) -> bool:
    """Run one stage unless up to date; returns True when it ran.

    The stage writes into its scratch folder (``ctx.run_dir``); on success rank 0 promotes the files
    and the manifest entry into the shadow run folder, where later stages read them.
    """
    spec = BY_NAME[name]
    fp, inputs = fingerprint(ctx.cfg, spec, ctx.manifest)
    if not force and _up_to_date(ctx.manifest, spec, fp):
        ctx.log(f"[edgekd] {name}: up to date, skipped (fingerprint {fp})")
        return False
    ctx.log(f"[edgekd] {name}: running")
    ctx.fingerprint = fp
    ctx.run_dir = txn.scratch(name)
    t0 = time.perf_counter()
    if ranks.main or spec.trains:  # training stages run on every torchrun rank; the rest on rank 0 alone
        result: StageResult = stage_function(spec)(ctx)
    if ranks.main:
        seconds = time.perf_counter() - t0
        d = ctx.cfg.to_dict()
        extra = {**result.extra, "config": {k: d[k] for k in spec.sections}}  # what this stage was run with
        entry = ctx.manifest.make_entry(result.artifacts, result.metrics, fp, inputs, seconds, extra,
                                        files_root=ctx.run_dir)
        txn.promote(name, entry)
        ctx.log(f"[edgekd] {name}: done in {seconds:.1f} s (staged; committed when the run succeeds)")
    ranks.sync()
    if not ranks.main:
        txn.reload()
    ctx.manifest = txn.manifest
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
    ``resume`` continues an interrupted command's staged work (finished stages, and the last epoch
    checkpoint of the stage it stopped in); ``force`` re-runs stages even when their inputs and
    config are unchanged.

    Nothing in the run folder changes unless every requested stage succeeds (edgekd.staging): then
    the new artifacts, ``config.yaml``, the report and, last, ``manifest.json`` are committed. A
    failure leaves the folder as it was and writes a note to ``<run>/failed/``.
    """
    cfg = resolve_config(config, overrides)
    wanted = list(stages) if stages else list(cfg.stages)
    check_stage_names(wanted, "in --stages", "pass a comma-separated subset of")
    if not cfg.qat.enabled and "qat" in wanted:
        raise ConfigError("qat.enabled is false but the INT8 chain needs the qat stage",
                          "drop 'qat' (and 'export', 'check') from stages, or enable qat")
    # before anything is opened: a run that reads its own outputs is refused without touching its folder
    refuse_paths_inside_the_run(cfg, tuple(k for spec in STAGES for k in spec.files), run_folder(cfg, out))
    ranks = _join_ranks(cfg)
    run_dir, txn = open_run(cfg, out, resume, ranks, log)
    ctx = StageContext(cfg=cfg, run_dir=run_dir, manifest=txn.manifest, resume=resume)
    if log is not None:
        ctx.log = log
    if not ranks.main:
        ctx.log = _quiet  # rank 0 speaks for the run
    result = Run(run_dir=run_dir, manifest=txn.manifest)
    current = "open"
    try:
        for name in (n for n in STAGE_NAMES if n in wanted):
            current = name
            (result.ran if run_stage(ctx, txn, name, force, ranks) else result.skipped).append(name)
        current = "commit"
        if ranks.main:
            if "check" in txn.manifest.data["stages"]:
                current = "report"
                from .deploy.report import render_report

                render_report(txn.shadow)  # into the shadow: committed with everything else
                current = "commit"
            txn.commit({"ran": result.ran, "skipped": result.skipped, "config_hash": cfg.hash(),
                        "overrides": list(overrides or []), "resume": resume, "force": force,
                        "world_size": ranks.world_size})
        ranks.finish()
    except BaseException as e:  # noted, then re-raised: the run folder keeps its verified state
        if ranks.main:
            _note_failure(run_dir, current, e, cfg, overrides, wanted, resume)
        raise
    result.manifest = Manifest.load(run_dir)
    if (run_dir / "report.md").is_file() and "check" in result.manifest.data["stages"]:
        result.report_md, result.report_html = run_dir / "report.md", run_dir / "report.html"
    return result


def _quiet(msg: str) -> None:
    """Log sink of ranks other than 0."""


def _note_failure(run_dir: Path, stage: str, error: BaseException, cfg: Config, overrides: list[str] | None,
                  wanted: list[str], resume: bool) -> None:
    """Record a failed command in ``<run>/failed/`` without touching the manifest or any artifact."""
    record = {
        "stage": stage, "error": type(error).__name__,
        "message": getattr(error, "problem", None) or str(error) or type(error).__name__,
        "fix": getattr(error, "fix", None), "overrides": list(overrides or []), "stages": wanted,
        "config_hash": cfg.hash(), "resume": resume,
        "staged_work": f"kept in {STAGING_DIR}/: 'edgekd run ... --resume' continues it, a plain run drops it",
    }
    try:
        path = record_failure(run_dir, record)
    except OSError as note_error:  # the original error matters more; say why the note is missing
        _stderr(f"[edgekd] could not write the failure note in {run_dir / 'failed'}: {note_error}")
        return
    _stderr(f"[edgekd] {stage} failed; the run folder is unchanged; note: {path}")
