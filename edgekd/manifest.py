"""The run's ``manifest.json``: what each stage wrote (path, sha256, bytes), measured, and was configured with.

Imports no torch: the gate, doctor and report read it in a torch-free CI job.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .io import atomic_write_json, sha256_file

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
RUN_FOLDER_FIX = "pass a run folder written by 'edgekd run' (export/<run-name>/) or its manifest.json"
REWRITE_FIX = "re-run the pipeline to rewrite it, or restore the run folder from a copy"


class Manifest:
    """In-memory view of ``<run_dir>/manifest.json``; every ``save`` is atomic."""

    def __init__(self, run_dir: str | Path, data: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.data: dict[str, Any] = data or {"schema": SCHEMA_VERSION, "stages": {}}
        self.data.setdefault("stages", {})

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @classmethod
    def load(cls, run_dir: str | Path, must_exist: bool = True) -> "Manifest":
        """Read a run's manifest: a run folder, or its ``manifest.json``.

        A missing folder, a folder without a manifest, invalid JSON and a manifest whose structure
        is not what edgekd writes each raise ArtifactError naming the path, so no reader (gate,
        doctor, report, pipeline) meets a KeyError or AttributeError deep inside.
        """
        run_dir = Path(run_dir)
        if run_dir.is_file():
            if run_dir.name != MANIFEST_NAME:
                raise ArtifactError(f"{run_dir} is a file, not a run folder", RUN_FOLDER_FIX)
            run_dir = run_dir.parent
        elif must_exist and not run_dir.exists():
            raise ArtifactError(f"run folder {run_dir} does not exist", RUN_FOLDER_FIX)
        path = run_dir / MANIFEST_NAME
        _finish_pending_commit(run_dir)
        if not path.exists():
            if must_exist:
                raise ArtifactError(f"no {MANIFEST_NAME} in {run_dir}", RUN_FOLDER_FIX)
            return cls(run_dir)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path} is not valid JSON ({e})", REWRITE_FIX) from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} is not an edgekd manifest", REWRITE_FIX)
        manifest = cls(run_dir, data)
        manifest.check_shape()
        return manifest

    def check_shape(self) -> None:
        """Raise ArtifactError when the structure is not what edgekd writes (a hand-edited or foreign file)."""
        data = self.data
        if not isinstance(data.get("stages"), dict):
            raise self._malformed(f"'stages' is a {type(data.get('stages')).__name__}, not a mapping of stage names")
        if data.get("config") is not None and not isinstance(data["config"], dict):
            raise self._malformed("'config' is not a mapping")
        for name, entry in data["stages"].items():
            if not isinstance(entry, dict):
                raise self._malformed(f"stage '{name}' is a {type(entry).__name__}, not a mapping")
            for key in ("artifacts", "metrics"):
                if not isinstance(entry.get(key, {}), dict):
                    raise self._malformed(f"stages.{name}.{key} is not a mapping")
            for key, rec in entry.get("artifacts", {}).items():
                if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not isinstance(rec.get("sha256"), str):
                    raise self._malformed(f"artifact stages.{name}.artifacts.{key} needs a 'path' and a 'sha256'")
        models = (data["stages"].get("check") or {}).get("metrics", {}).get("models", {})
        if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
            raise self._malformed("stages.check.metrics.models is not a mapping of model name -> metrics")

    def _malformed(self, what: str) -> ArtifactError:
        return ArtifactError(f"{self.path} is malformed: {what}", REWRITE_FIX)

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.path, self.data)

    # ----------------------------------------------------------- stages

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def make_entry(
        self,
        artifacts: dict[str, str | Path],
        metrics: dict[str, Any] | None = None,
        config_hash: str | None = None,
        inputs: dict[str, str] | None = None,
        seconds: float | None = None,
        extra: dict[str, Any] | None = None,
        files_root: str | Path | None = None,
    ) -> dict[str, Any]:
        """A finished stage's manifest entry: each artifact with its sha256 and size; nothing is saved.

        ``files_root`` is where the files lie now when that is not the run folder (a stage's staging
        folder): a path under it is recorded relative to it, i.e. as the path it will have in the
        run folder once the staged files are moved there.
        """
        entry: dict[str, Any] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config_hash": config_hash,
            "inputs": inputs or {},
            "artifacts": {},
            "metrics": metrics or {},
        }
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        root = Path(files_root if files_root is not None else self.run_dir).resolve()
        for key, p in artifacts.items():
            p = Path(p).resolve()  # a relative path means relative to the working directory
            entry["artifacts"][key] = {
                # inside the run folder: stored relative to it, so the folder can be moved or copied
                "path": str(p.relative_to(root) if p.is_relative_to(root) else p),
                "sha256": sha256_file(p),
                "bytes": p.stat().st_size,
            }
        if extra:
            entry.update(extra)
        return entry

    def record_stage(
        self,
        name: str,
        artifacts: dict[str, str | Path],
        metrics: dict[str, Any] | None = None,
        config_hash: str | None = None,
        inputs: dict[str, str] | None = None,
        seconds: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record a finished stage in place: each artifact with its sha256, then save the manifest.

        The pipeline does not use this (it stages and commits, edgekd.staging); tools and tests
        that build a manifest by hand do.
        """
        entry = self.make_entry(artifacts, metrics, config_hash, inputs, seconds, extra)
        self.data["stages"][name] = entry
        self.save()
        return entry

    def resolve(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.run_dir / p

    def artifact(self, stage: str, key: str, verify: bool = True) -> Path:
        """Path of a recorded artifact, checked to exist and to match its sha256."""
        entry = self.stage(stage)
        if entry is None or key not in entry.get("artifacts", {}):
            raise ArtifactError(
                f"run {self.run_dir} has no '{key}' from stage '{stage}'",
                f"run the '{stage}' stage first (edgekd run --out {self.run_dir.parent})",
            )
        rec = entry["artifacts"][key]
        path = self.resolve(rec["path"])
        if not path.exists():
            raise ArtifactError(f"artifact {path} (stage '{stage}') is missing", f"re-run the '{stage}' stage")
        if verify and sha256_file(path) != rec["sha256"]:
            raise ArtifactError(
                f"artifact {path} (stage '{stage}') does not match its sha256 in the manifest: "
                "it was changed or truncated after the stage wrote it",
                f"re-run the '{stage}' stage, or restore the file",
            )
        return path

    def artifact_sha(self, stage: str, key: str) -> str | None:
        entry = self.stage(stage)
        if entry is None:
            return None
        rec = entry.get("artifacts", {}).get(key)
        return rec["sha256"] if rec else None

    def metrics(self, stage: str) -> dict[str, Any]:
        entry = self.stage(stage)
        return dict(entry.get("metrics", {})) if entry else {}


def _finish_pending_commit(run_dir: Path) -> None:
    """Complete a commit that a killed ``edgekd run`` had decided but not finished (edgekd.staging).

    Its journal is written only after every staged file was verified, so finishing it (moving the
    remaining files, then writing the manifest) is what that run would have done; reading the
    half-moved folder instead would fail every sha256 check.
    """
    from .staging import commit_pending, finish_commit

    if commit_pending(run_dir):
        finish_commit(run_dir)
