"""Staged, journaled writes: what an ``edgekd run`` writes becomes visible only when the whole command succeeds.

While a command runs, ``<run>`` (the run folder) is never written; everything goes to
``<run>/.staging/``:

- ``run/``: the *shadow*, the run folder as this command will leave it. It opens with hard links to
  the committed artifacts (no copy, and never written through: every write replaces a name), and
  holds the shadow ``manifest.json`` and ``config.yaml``. Later stages read their inputs here; the
  gate stage and the report see it exactly as they will see the run folder.
- ``stage-<name>/``: where a running stage writes, laid out like the run folder
  (``stages/<name>/teacher.pt``, ``model.fp32.onnx``, ...). Its epoch checkpoints live here too, so
  ``--resume`` continues a stage killed mid-way. Parity and other checks run on these files.
- ``promote-<name>.json``: journal of a *promotion* (a finished stage's files into the shadow).
- ``COMMIT.json``: journal of the *commit* (the shadow's new files into the run folder).

Both steps follow one protocol (:func:`_apply`):

1. hash every file to move and write the journal atomically: the list of moves with their sha256,
   and the complete manifest that holds once they are done. Writing the journal is the decision;
   it is written only after the stage (or the whole command) succeeded.
2. ``os.replace`` the files one at a time (each rename is atomic), then (commit only) delete the
   files the command *retired*: what a stage promoted in this command wrote last time (its manifest
   entry's ``written`` list and artifacts) and did not write this time (``<name>.unscaled.onnx`` once
   temperature scaling is off, ``.ort`` files once ORT export is off); files a stage did not write
   (a user's, a shared folder's behind a symlink, one the config names) are never deleted;
3. write the destination's ``manifest.json`` atomically, last;
4. rename the source folder away (to ``<run>/.staging-trash-*``) and delete it.

A crash before step 1 leaves the destination untouched (the staged work is resumable with
``--resume`` or dropped by a plain re-run). A crash after step 1 is rolled *forward* by whoever opens
the folder next (``edgekd run``, and :meth:`edgekd.manifest.Manifest.load`, so ``edgekd gate``
too): a move whose source is gone must find its destination with the journal's sha256, one whose
source is still there is redone, then the manifest is written. So the run folder always holds
either the old verified state or the new one, never a mix that the manifest does not describe.

Imports no torch (the gate and report use it through the manifest).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from .errors import ArtifactError
from .faults import fault_point
from .io import atomic_write_json, atomic_write_text, fsync_dir, replace_file, sha256_file
from .manifest import MANIFEST_NAME, Manifest

STAGING_DIR = ".staging"
SHADOW_DIR = "run"
COMMIT_JOURNAL = "COMMIT.json"
TRASH_PREFIX = ".staging-trash-"
FAILED_DIR = "failed"
HISTORY_KEEP = 100  # commits remembered in manifest["history"]; older ones are dropped


def staging_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / STAGING_DIR


def commit_pending(run_dir: str | Path) -> bool:
    """Whether a decided commit (its journal written) is waiting to be finished."""
    return (staging_root(run_dir) / COMMIT_JOURNAL).is_file()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _is_temp(name: str) -> bool:
    """Temp files of atomic writes a kill interrupted (edgekd.io.atomic_path names them .<name>.*.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def _files_under(folder: Path) -> list[str]:
    """Regular files below ``folder`` as sorted POSIX paths relative to it, without stray temp files."""
    if not folder.is_dir():
        return []
    out = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
           if p.is_file() and not _is_temp(p.name)]
    return sorted(out)


def _trash(folder: Path, run_dir: Path) -> None:
    """Delete ``folder`` so that a kill half-way never leaves half of it under its own name."""
    if not folder.exists():
        return
    away = run_dir / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
    os.replace(folder, away)
    shutil.rmtree(away)


def _empty_trash(run_dir: Path) -> None:
    for leftover in run_dir.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(leftover)


# ------------------------------------------------------------------ the journaled move


def _write_journal(path: Path, fault: str, src: Path, dst: Path, moves: list[dict[str, Any]],
                   manifest: dict[str, Any], run_dir: Path, deletes: list[str] | None = None) -> None:
    atomic_write_json(path, {
        "fault": fault, "src": src.relative_to(run_dir).as_posix(), "dst": dst.relative_to(run_dir).as_posix(),
        "moves": moves, "deletes": deletes or [], "manifest": manifest, "written": _now(),
    })


def _safe_target(run_dir: Path, rel: str) -> Path | None:
    """``run_dir / rel`` when it is a plain path inside the run folder (no symlink on the way), else None."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        return None
    target = run_dir / p
    # a symlinked stages/<name>/ (a shared teacher folder) must never let a delete reach outside
    if Path(os.path.realpath(target)) != Path(os.path.realpath(run_dir)) / p:
        return None
    return target


def _config_paths(value: Any) -> set[str]:
    """Every string in a config (a file a stage reads: teacher.weights, qat.sensitivity, ...)."""
    if isinstance(value, dict):
        return set().union(*(_config_paths(v) for v in value.values()))
    if isinstance(value, (list, tuple)):
        return set().union(*(_config_paths(v) for v in value))
    return {value} if isinstance(value, str) else set()


def _named_paths(base: Path, config: dict[str, Any]) -> set[str]:
    """Real paths of every file or folder the config names (relative names resolve under ``base``)."""
    return {os.path.realpath(base / v) for v in _config_paths(config) if v}


def retired_files(run_dir: Path, old: dict[str, Any], new: dict[str, Any], promoted: set[str]) -> list[str]:
    """Files of the committed run that a stage promoted in this command wrote last time and not this time.

    Relative to ``run_dir``. What a stage wrote is its manifest entry's ``written`` list (every file its
    promotion moved) and its artifacts; nothing is inferred from folder contents, so a file a user put
    in a stage folder is never touched. Kept anyway: any artifact or written file of the new state, and
    any file the new config names. Stages not promoted in this command keep everything.
    """
    new_stages = new.get("stages", {})
    keep = {rec["path"] for e in new_stages.values() for rec in (e.get("artifacts") or {}).values()}
    keep |= {rel for e in new_stages.values() for rel in e.get("written", [])}
    named = _named_paths(run_dir, new.get("config", {}))
    out: set[str] = set()
    for stage in promoted:
        entry = old.get("stages", {}).get(stage)
        if entry is None or stage not in new_stages:
            continue
        owned = set(entry.get("written", [])) | {rec["path"] for rec in (entry.get("artifacts") or {}).values()}
        for rel in owned - keep:
            target = _safe_target(run_dir, rel)
            if target is not None and target.is_file() and os.path.realpath(target) not in named:
                out.add(rel)
    return sorted(out)


def _prune_empty_parents(path: Path, base: Path, named: set[str]) -> Path:
    """Remove the folders above a deleted file that it left empty, up to (not including) ``base``.

    Only a retired file's own folders are pruned, so an empty folder a user made elsewhere stays, and
    so does a folder the config names (``named``: real paths). Returns the deepest folder that remains
    (to fsync).
    """
    folder = path.parent
    while folder != base and base in folder.parents:
        # a symlink anywhere on the way (made after the commit was decided) stops the walk: never prune outside
        if _safe_target(base, str(folder.relative_to(base))) is None or os.path.realpath(folder) in named:
            break
        if folder.is_dir():  # gone already when a roll-forward repeats the deletes
            try:
                if any(folder.iterdir()):
                    break
                folder.rmdir()
            except OSError:
                break  # unreadable, or a file appeared meanwhile: the folder stays, which is only untidy
        folder = folder.parent
    return folder


def _moves_from(src: Path, dst: Path, skip_same_file: bool) -> list[dict[str, Any]]:
    """Every file under ``src`` with its sha256; ``skip_same_file`` drops hard links of ``dst``'s file."""
    moves = []
    for rel in _files_under(src):
        if rel == MANIFEST_NAME:
            continue  # the manifest is written last, from the journal
        target = dst / rel
        if skip_same_file and target.exists() and os.path.samefile(src / rel, target):
            continue  # an unchanged committed artifact, linked into the shadow
        moves.append({"path": rel, "sha256": sha256_file(src / rel)})
    return moves


def _apply(run_dir: Path, journal: Path, verify: bool) -> dict[str, Any]:
    """Carry out a journal's moves (idempotently), then write its manifest; returns the journal.

    ``verify`` re-hashes a source before moving it (roll-forward after a crash, when time has
    passed since the journal was written).
    """
    try:
        j = json.loads(journal.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"the staging journal {journal} is unreadable ({e})",
                            f"delete {journal.parent} to drop the interrupted run's staged work, then run again") from None
    src_base, dst_base = run_dir / j["src"], run_dir / j["dst"]
    touched: set[Path] = set()
    for i, move in enumerate(j["moves"]):
        src, dst = src_base / move["path"], dst_base / move["path"]
        if src.exists():
            if verify and sha256_file(src) != move["sha256"]:
                raise ArtifactError(f"staged file {src} changed after its commit was decided",
                                    f"delete {staging_root(run_dir)} and run the pipeline again")
            replace_file(src, dst)
            touched.add(dst.parent)
        elif not dst.exists() or sha256_file(dst) != move["sha256"]:
            raise ArtifactError(f"interrupted commit cannot finish: {dst} is missing or differs from the "
                                f"file that was staged for it", f"re-run the pipeline without --resume to rewrite {dst.name}")
        fault_point(f"{j['fault']}:move:{i}")  # test hook: a kill between two renames
    named = _named_paths(dst_base, j["manifest"].get("config", {}))
    for i, rel in enumerate(j.get("deletes", [])):
        target = _safe_target(dst_base, rel)  # checked again: a symlink made since the decision is not followed
        if target is not None:
            target.unlink(missing_ok=True)  # idempotent: a roll-forward may find it gone already
            touched.add(_prune_empty_parents(target, dst_base, named))
        fault_point(f"{j['fault']}:delete:{i}")
    for folder in touched:
        if not folder.is_dir():
            continue  # removed by hand before a roll-forward: nothing left to sync
        fsync_dir(folder)
    atomic_write_json(dst_base / MANIFEST_NAME, j["manifest"])
    return j


def finish_commit(run_dir: str | Path, verify: bool = True) -> None:
    """Finish the decided commit of ``run_dir`` (see the module docstring); a no-op when none is pending."""
    run_dir = Path(run_dir)
    journal = staging_root(run_dir) / COMMIT_JOURNAL
    if not journal.is_file():
        return
    try:
        _apply(run_dir, journal, verify)
        _trash(staging_root(run_dir), run_dir)
        _empty_trash(run_dir)
    except OSError as e:
        raise ArtifactError(f"cannot finish the interrupted commit in {run_dir} ({e})",
                            "make the run folder writable and run 'edgekd run' (or 'edgekd gate') on it again") from None


def record_failure(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write a failed command's note to ``<run>/failed/<time>-<stage>-<pid>.json`` (atomically).

    The manifest and the verified artifacts are not touched: a failure is not a result.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = Path(run_dir) / FAILED_DIR / f"{stamp}-{record.get('stage') or 'run'}-{os.getpid()}.json"
    return atomic_write_json(path, {"time": _now(), **record})


# ------------------------------------------------------------------ the transaction


class Transaction:
    """One command's staged work on a run folder: open, promote each finished stage, commit at the end."""

    def __init__(self, run_dir: str | Path, manifest: Manifest) -> None:
        self.run_dir = Path(run_dir)
        self.manifest = manifest  # the shadow manifest: what the run folder will say after the commit

    @property
    def root(self) -> Path:
        return staging_root(self.run_dir)

    @property
    def shadow(self) -> Path:
        return self.root / SHADOW_DIR

    @classmethod
    def open(cls, run_dir: str | Path, resume: bool, log: Callable[[str], None] = print) -> "Transaction":
        """Start (or, with ``resume``, continue) the staged work on ``run_dir``. One process only (rank 0).

        A decided commit left by a killed command is finished first. Staged work left by a failed
        or killed command is continued with ``resume`` and dropped without it.
        """
        run_dir = Path(run_dir)
        finish_commit(run_dir)
        _empty_trash(run_dir)
        root = staging_root(run_dir)
        if root.exists():
            if resume and (root / SHADOW_DIR / MANIFEST_NAME).is_file():
                for journal in sorted(root.glob("promote-*.json")):
                    cls._finish_promotion(run_dir, journal, verify=True)
                log(f"[edgekd] resuming the staged work of an interrupted run in {root}")
                return cls(run_dir, Manifest.load(root / SHADOW_DIR))
            _trash(root, run_dir)
            log(f"[edgekd] dropped the staged work of an earlier interrupted run ({root}); "
                "use --resume to continue such work instead")
        committed = Manifest.load(run_dir, must_exist=False)
        shadow = root / SHADOW_DIR
        shadow.mkdir(parents=True)
        _link_artifacts(committed, shadow)
        manifest = Manifest(shadow, copy.deepcopy(committed.data))
        manifest.save()
        return cls(run_dir, manifest)

    @classmethod
    def attach(cls, run_dir: str | Path) -> "Transaction":
        """The transaction rank 0 opened (other ranks, after a barrier): read-only use."""
        run_dir = Path(run_dir)
        return cls(run_dir, Manifest.load(staging_root(run_dir) / SHADOW_DIR))

    def reload(self) -> None:
        """Re-read the shadow manifest (other ranks, after rank 0 promoted a stage)."""
        self.manifest = Manifest.load(self.shadow)

    def scratch(self, stage: str) -> Path:
        """Where stage ``stage`` writes while it runs (laid out like the run folder)."""
        return self.root / f"stage-{stage}"

    def set_run_config(self, fields: dict[str, Any], config_yaml: str) -> None:
        """The command's config for the run folder: top-level manifest fields and ``config.yaml``, in the shadow."""
        self.manifest.data.update(fields)
        atomic_write_text(self.shadow / "config.yaml", config_yaml)
        self.manifest.save()

    def promote(self, stage: str, entry: dict[str, Any]) -> None:
        """Move a finished stage's files from its scratch folder into the shadow and record ``entry``."""
        scratch = self.scratch(stage)
        moves = _moves_from(scratch, self.shadow, skip_same_file=False)
        data = copy.deepcopy(self.manifest.data)
        # every file the stage wrote: what a later re-run may retire (retired_files), and nothing else
        data["stages"][stage] = {**entry, "written": [m["path"] for m in moves]}
        data["updated"] = _now()
        journal = self.root / f"promote-{stage}.json"
        _write_journal(journal, f"promote:{stage}", scratch, self.shadow, moves, data, self.run_dir)
        self._finish_promotion(self.run_dir, journal, verify=False)
        self.manifest = Manifest(self.shadow, data)

    @staticmethod
    def _finish_promotion(run_dir: Path, journal: Path, verify: bool) -> None:
        j = _apply(run_dir, journal, verify)
        _record_promoted(run_dir, j["fault"].split(":", 1)[1])
        _trash(run_dir / j["src"], run_dir)
        journal.unlink()

    def commit(self, history: dict[str, Any]) -> Manifest:
        """Make the shadow the run folder: move every new file over the old one, then write the manifest."""
        data = copy.deepcopy(self.manifest.data)
        data["history"] = (list(data.get("history", [])) + [{"committed": _now(), **history}])[-HISTORY_KEEP:]
        data["updated"] = _now()
        committed = Manifest.load(self.run_dir, must_exist=False).data
        deletes = retired_files(self.run_dir, committed, data, _promoted(self.run_dir))
        # a retired file linked (or, without hard links, copied) into the shadow is not moved back in:
        # a roll-forward would then look for a moved file that the deletes removed
        retired = set(deletes)
        moves = [m for m in _moves_from(self.shadow, self.run_dir, skip_same_file=True) if m["path"] not in retired]
        _write_journal(self.root / COMMIT_JOURNAL, "commit", self.shadow, self.run_dir, moves, data, self.run_dir,
                       deletes=deletes)
        finish_commit(self.run_dir, verify=False)
        return Manifest.load(self.run_dir)


PROMOTED_FILE = "promoted.json"  # the stages this command promoted (resumed ones included)


def _promoted(run_dir: Path) -> set[str]:
    path = staging_root(run_dir) / PROMOTED_FILE
    return set(json.loads(path.read_text())) if path.is_file() else set()


def _record_promoted(run_dir: Path, stage: str) -> None:
    """Add ``stage`` to the staged work's record, before its promote journal is removed (so a kill loses nothing)."""
    done = _promoted(run_dir)
    if stage not in done:
        atomic_write_json(staging_root(run_dir) / PROMOTED_FILE, sorted(done | {stage}))


def _link_artifacts(committed: Manifest, shadow: Path) -> None:
    """Hard-link every committed artifact inside the run folder into the shadow (copy where links fail)."""
    for entry in committed.data.get("stages", {}).values():
        for rec in (entry.get("artifacts") or {}).values():
            rel = Path(rec["path"])
            src = committed.run_dir / rel
            if rel.is_absolute() or not src.is_file():
                continue  # outside the run folder, or gone: the stage's check will re-run it
            dst = shadow / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:  # a file system without hard links: a copy is slower but equal
                shutil.copy2(src, dst)
