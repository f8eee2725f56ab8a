"""Staged, journaled writes (edgekd.staging): nothing is visible before success, and a kill at any
rename is finished by the next reader. Plus reproducible weight hashes and umask-respecting files.

The pipeline-level versions of these guarantees (a real ``edgekd run`` killed and resumed, a
failed export leaving a finished run unchanged) are in tests/test_kill_resume.py.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgekd.errors import ArtifactError
from edgekd.io import atomic_write_bytes, sha256_file
from edgekd.manifest import Manifest
from edgekd.staging import COMMIT_JOURNAL, STAGING_DIR, Transaction, commit_pending

ROOT = Path(__file__).resolve().parents[1]


def _quiet(msg: str) -> None:
    pass


def _stage_files(txn: Transaction, stage: str, files: dict[str, bytes]) -> dict[str, Path]:
    """What a stage does: write its outputs into its scratch folder."""
    out = {}
    for rel, data in files.items():
        atomic_write_bytes(txn.scratch(stage) / rel, data)
        out[Path(rel).stem] = txn.scratch(stage) / rel
    return out


def _promote(txn: Transaction, stage: str, files: dict[str, bytes]) -> None:
    arts = _stage_files(txn, stage, files)
    txn.promote(stage, txn.manifest.make_entry(arts, {"n": len(files)}, files_root=txn.scratch(stage)))


@pytest.fixture
def committed_run(tmp_path: Path) -> Path:
    """A run folder with one committed stage ('export': a.onnx, b.onnx) and a config.yaml."""
    run_dir = tmp_path / "run"
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    txn.set_run_config({"config": {"v": 1}}, "v: 1\n")
    _promote(txn, "export", {"a.onnx": b"A1", "b.onnx": b"B1"})
    txn.commit({"ran": ["export"]})
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in (STAGING_DIR, "failed")}


def test_commit_makes_staged_files_visible_only_at_the_end(committed_run: Path) -> None:
    m = Manifest.load(committed_run)
    assert m.artifact("export", "a").read_bytes() == b"A1" and (committed_run / "config.yaml").read_text() == "v: 1\n"
    before = _snapshot(committed_run)
    txn = Transaction.open(committed_run, resume=False, log=_quiet)
    assert os.path.samefile(txn.shadow / "a.onnx", committed_run / "a.onnx")  # linked, not copied
    txn.set_run_config({"config": {"v": 2}}, "v: 2\n")
    _promote(txn, "export", {"a.onnx": b"A2", "b.onnx": b"B2"})
    _promote(txn, "check", {})
    assert Manifest.load(txn.shadow).artifact("export", "a").read_bytes() == b"A2"  # later stages read this
    assert _snapshot(committed_run) == before  # nothing visible yet
    final = txn.commit({"ran": ["export", "check"]})
    assert final.artifact("export", "a").read_bytes() == b"A2" and final.artifact("export", "b").read_bytes() == b"B2"
    assert final.data["config"] == {"v": 2} and (committed_run / "config.yaml").read_text() == "v: 2\n"
    assert [h["ran"] for h in final.data["history"]] == [["export"], ["export", "check"]]
    assert not (committed_run / STAGING_DIR).exists()


def test_plain_open_drops_staged_work_resume_keeps_it(committed_run: Path) -> None:
    txn = Transaction.open(committed_run, resume=False, log=_quiet)
    _promote(txn, "export", {"a.onnx": b"A2", "b.onnx": b"B2"})
    kept = Transaction.open(committed_run, resume=True, log=_quiet)  # e.g. after a crash or a failed stage
    assert kept.manifest.artifact("export", "a").read_bytes() == b"A2"
    fresh = Transaction.open(committed_run, resume=False, log=_quiet)
    assert fresh.manifest.artifact("export", "a").read_bytes() == b"A1"
    assert Manifest.load(committed_run).artifact("export", "a").read_bytes() == b"A1"


KILLED_WRITER = r"""
import sys
from edgekd.io import atomic_write_bytes
from edgekd.staging import Transaction
run_dir, stage, commit = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
txn = Transaction.open(run_dir, resume=True, log=lambda m: None)
files = {"a.onnx": b"A2", "b.onnx": b"B2", "sub/c.onnx": b"C2"}
arts = {}
for rel, data in files.items():
    atomic_write_bytes(txn.scratch(stage) / rel, data)
    arts[rel.split("/")[-1].split(".")[0]] = txn.scratch(stage) / rel
txn.promote(stage, txn.manifest.make_entry(arts, files_root=txn.scratch(stage)))
if commit:
    txn.commit({"ran": [stage]})
"""


def _killed(run_dir: Path, fault: str, commit: bool) -> None:
    env = {**os.environ, "EDGEKD_FAULT_AT": fault}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run_dir), "export", "1" if commit else "0"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_between_commit_renames_is_finished_by_the_next_reader(committed_run: Path) -> None:
    _killed(committed_run, "commit:move:0", commit=True)  # a.onnx moved; b.onnx and sub/c.onnx not yet
    assert commit_pending(committed_run)
    assert (committed_run / "a.onnx").read_bytes() == b"A2" and (committed_run / "b.onnx").read_bytes() == b"B1"
    m = Manifest.load(committed_run)  # what `edgekd gate` does first: it finishes the decided commit
    assert not commit_pending(committed_run) and not (committed_run / STAGING_DIR).exists()
    assert {k: m.artifact("export", k).read_bytes() for k in ("a", "b", "c")} == {"a": b"A2", "b": b"B2", "c": b"C2"}


def test_kill_between_promotion_renames_is_finished_on_resume(committed_run: Path) -> None:
    before = _snapshot(committed_run)
    _killed(committed_run, "promote:export:move:1", commit=False)
    assert _snapshot(committed_run) == before  # promotion happens in the shadow only
    txn = Transaction.open(committed_run, resume=True, log=_quiet)
    assert txn.manifest.artifact("export", "c").read_bytes() == b"C2"
    assert not list((committed_run / STAGING_DIR).glob("promote-*.json"))
    txn.commit({"ran": ["export"]})
    assert Manifest.load(committed_run).artifact("export", "b").read_bytes() == b"B2"


def _promote_with_extra(txn: Transaction, stage: str, files: dict[str, bytes], extra: dict[str, bytes]) -> None:
    """A stage writing artifacts plus files it keeps for inspection (raw exports, unscaled files)."""
    for rel, data in extra.items():
        atomic_write_bytes(txn.scratch(stage) / rel, data)
    _promote(txn, stage, files)


@pytest.fixture
def run_with_extras(tmp_path: Path) -> Path:
    """export: artifacts a.onnx, b.onnx + stages/export/{raw,old.unscaled}.onnx; teacher: t.pt + its log."""
    run_dir = tmp_path / "run"
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote_with_extra(txn, "teacher", {"stages/teacher/t.pt": b"T"}, {"stages/teacher/metrics.jsonl": b"{}"})
    _promote_with_extra(txn, "export", {"a.onnx": b"A1", "b.onnx": b"B1"},
                        {"stages/export/raw.onnx": b"R1", "stages/export/old.unscaled.onnx": b"U1"})
    txn.commit({"ran": ["teacher", "export"]})
    return run_dir


def test_commit_deletes_what_a_rerun_stage_no_longer_writes(run_with_extras: Path) -> None:
    """Re-running export without b.onnx and the unscaled file leaves neither; the skipped teacher keeps its log."""
    run_dir = run_with_extras
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote_with_extra(txn, "export", {"a.onnx": b"A2"}, {"stages/export/raw.onnx": b"R2"})
    assert (run_dir / "b.onnx").exists()  # nothing is deleted before the commit
    txn.commit({"ran": ["export"]})
    assert _snapshot(run_dir) == {"a.onnx": b"A2", "manifest.json": (run_dir / "manifest.json").read_bytes(),
                                  "stages/export/raw.onnx": b"R2", "stages/teacher/metrics.jsonl": b"{}",
                                  "stages/teacher/t.pt": b"T"}
    # a command that re-runs nothing deletes nothing
    before = _snapshot(run_dir)
    Transaction.open(run_dir, resume=False, log=_quiet).commit({"ran": []})
    assert {k: v for k, v in _snapshot(run_dir).items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}


def test_commit_never_deletes_what_the_stage_did_not_write(run_with_extras: Path, tmp_path: Path) -> None:
    """A user's file in a stage folder, a file the config names, and anything behind a symlinked folder stay."""
    run_dir = run_with_extras
    (run_dir / "stages" / "export" / "mine.onnx").write_bytes(b"M")  # put there by hand
    shared = tmp_path / "shared_teachers"  # stages/teacher is a link to a shared folder
    shared.mkdir()
    (shared / "other_arch.pt").write_bytes(b"O")
    for name in ("t.pt", "metrics.jsonl"):
        os.replace(run_dir / "stages" / "teacher" / name, shared / name)
    (run_dir / "stages" / "teacher").rmdir()
    (run_dir / "stages" / "teacher").symlink_to(shared)
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    txn.set_run_config({"config": {"teacher": {"weights": str(run_dir / "b.onnx")}}}, "v: 3\n")  # names b.onnx
    _promote(txn, "teacher", {"stages/teacher/t.pt": b"T2"})  # no metrics.jsonl this time
    _promote(txn, "export", {"a.onnx": b"A2"})
    txn.commit({"ran": ["teacher", "export"]})
    assert (run_dir / "stages" / "export" / "mine.onnx").read_bytes() == b"M"
    assert (run_dir / "b.onnx").read_bytes() == b"B1"  # not written again, but the config reads it
    assert sorted(p.name for p in shared.iterdir()) == ["metrics.jsonl", "other_arch.pt", "t.pt"]
    assert not (run_dir / "stages" / "export" / "raw.onnx").exists()  # really written last time, not now


def test_commit_removes_the_folders_its_deletes_emptied(run_with_extras: Path) -> None:
    """stages/export/ held only retired files: it goes; stages/ (the teacher's) and a user's empty folder stay."""
    run_dir = run_with_extras
    (run_dir / "notes").mkdir()  # a user's empty folder
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote(txn, "export", {"a.onnx": b"A2", "b.onnx": b"B2"})  # no extras this time
    txn.commit({"ran": ["export"]})
    assert not (run_dir / "stages" / "export").exists()
    assert (run_dir / "stages" / "teacher" / "t.pt").read_bytes() == b"T"
    assert (run_dir / "notes").is_dir()
    # a folder that still holds a user's file stays, with the file
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote_with_extra(txn, "export", {"a.onnx": b"A3"}, {"stages/export/deep/raw.onnx": b"R3"})
    txn.commit({"ran": ["export"]})
    (run_dir / "stages" / "export" / "mine.txt").write_bytes(b"M")
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote(txn, "export", {"a.onnx": b"A4"})
    txn.commit({"ran": ["export"]})
    assert not (run_dir / "stages" / "export" / "deep").exists()
    assert (run_dir / "stages" / "export" / "mine.txt").read_bytes() == b"M"
    # a folder the config names stays even when emptied
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    _promote_with_extra(txn, "export", {"a.onnx": b"A5"}, {"stages/export/calib/raw.onnx": b"R5"})
    txn.commit({"ran": ["export"]})
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    txn.set_run_config({"config": {"qat": {"calibration_dir": str(run_dir / "stages/export/calib")}}}, "v: 4\n")
    _promote(txn, "export", {"a.onnx": b"A6"})
    txn.commit({"ran": ["export"]})
    assert (run_dir / "stages" / "export" / "calib").is_dir()
    assert not (run_dir / "stages" / "export" / "calib" / "raw.onnx").exists()


def test_a_stage_missing_from_the_shadow_keeps_its_files(run_with_extras: Path) -> None:
    """A stage recorded in the run folder while this command ran (edgekd sensitivity) was not re-run here."""
    run_dir = run_with_extras
    txn = Transaction.open(run_dir, resume=False, log=_quiet)
    m = Manifest.load(run_dir)
    atomic_write_bytes(run_dir / "sensitivity.json", b"S")
    m.data["stages"]["sensitivity"] = m.make_entry({"sensitivity": run_dir / "sensitivity.json"})
    m.save()
    _promote(txn, "export", {"a.onnx": b"A2", "b.onnx": b"B2"})
    txn.commit({"ran": ["export"]})
    assert (run_dir / "sensitivity.json").read_bytes() == b"S"


def test_retired_files_without_hard_links(run_with_extras: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.link fails the shadow holds copies; the stale file is still retired, and not moved back first."""
    def no_links(*a, **k):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    txn = Transaction.open(run_with_extras, resume=False, log=_quiet)
    assert (txn.shadow / "b.onnx").is_file()  # copied in
    _promote(txn, "export", {"a.onnx": b"A2"})
    txn.commit({"ran": ["export"]})
    assert not (run_with_extras / "b.onnx").exists() and (run_with_extras / "a.onnx").read_bytes() == b"A2"


def _kill_after_first_delete(run_dir: Path) -> None:
    """Re-run export (a.onnx only) in a subprocess killed right after the commit's first delete."""
    code = ("import sys; from edgekd.io import atomic_write_bytes; from edgekd.staging import Transaction\n"
            "txn = Transaction.open(sys.argv[1], resume=False, log=lambda m: None)\n"
            "atomic_write_bytes(txn.scratch('export') / 'a.onnx', b'A2')\n"
            "txn.promote('export', txn.manifest.make_entry({'a': txn.scratch('export') / 'a.onnx'}, "
            "files_root=txn.scratch('export')))\n"
            "txn.commit({'ran': ['export']})\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EDGEKD_FAULT_AT": "commit:delete:0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_between_commit_deletes_is_finished_by_the_next_reader(run_with_extras: Path) -> None:
    _kill_after_first_delete(run_with_extras)
    assert commit_pending(run_with_extras)
    gone = [p for p in ("b.onnx", "stages/export/old.unscaled.onnx", "stages/export/raw.onnx")
            if not (run_with_extras / p).exists()]
    assert len(gone) == 1  # killed right after the first delete
    m = Manifest.load(run_with_extras)  # finishes the decided commit
    assert not commit_pending(run_with_extras) and m.artifact("export", "a").read_bytes() == b"A2"
    assert sorted(p.relative_to(run_with_extras).as_posix() for p in run_with_extras.rglob("*") if p.is_file()) == \
        ["a.onnx", "manifest.json", "stages/teacher/metrics.jsonl", "stages/teacher/t.pt"]
    assert not (run_with_extras / "stages" / "export").exists()  # emptied by the roll-forward's deletes


def test_roll_forward_does_not_follow_a_symlink_made_after_the_commit_was_decided(run_with_extras: Path,
                                                                                 tmp_path: Path) -> None:
    """Killed after the first delete; stages/export is then swapped for a link to a shared folder: the
    roll-forward deletes nothing behind the link (so prunes nothing there either)."""
    _kill_after_first_delete(run_with_extras)
    shared = tmp_path / "shared_export"
    os.replace(run_with_extras / "stages" / "export", shared)
    (run_with_extras / "stages" / "export").symlink_to(shared)
    Manifest.load(run_with_extras)  # finishes the decided commit
    assert not commit_pending(run_with_extras)
    assert sorted(p.name for p in shared.iterdir()) == ["old.unscaled.onnx", "raw.onnx"]


def test_roll_forward_refuses_a_changed_destination(committed_run: Path) -> None:
    _killed(committed_run, "commit:move:0", commit=True)
    (committed_run / "a.onnx").write_bytes(b"tampered")  # moved already; then changed behind our back
    with pytest.raises(ArtifactError, match="cannot finish"):
        Manifest.load(committed_run)
    assert (committed_run / STAGING_DIR / COMMIT_JOURNAL).is_file()  # the journal stays for a later retry


def test_kill_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    atomic_write_bytes(target, b"old")
    code = ("import sys; from edgekd.io import atomic_write_bytes; "
            "atomic_write_bytes(sys.argv[1], b'new' * 100000, fault='teacher:weights-write')")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, timeout=60,
                          env={**os.environ, "EDGEKD_FAULT_AT": "teacher:weights-write"})
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"


# ------------------------------------------------------------------ hashes and modes


def test_equal_weights_give_equal_sha256(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from edgekd.train.checkpoint import save_checkpoint
    from edgekd.stages.common import save_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    a = save_weights(model, tmp_path / "a" / "teacher.pt", {"stage": "teacher"})
    b = save_weights(model, tmp_path / "b" / "teacher.pt", {"stage": "teacher"})
    assert sha256_file(a) == sha256_file(b)  # the temp file names differed; the bytes must not
    c1 = save_checkpoint(tmp_path / "c1" / "checkpoint.pt", {"model": model.state_dict(), "epoch": 0})
    c2 = save_checkpoint(tmp_path / "c2" / "checkpoint.pt", {"model": model.state_dict(), "epoch": 0})
    assert sha256_file(c1) == sha256_file(c2)
    data = torch.load(a, weights_only=True)
    assert torch.equal(data["state_dict"]["0.weight"], model[0].weight)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_artifacts_respect_the_umask(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    path = atomic_write_bytes(tmp_path / "model.onnx", b"x")
    assert stat.S_IMODE(path.stat().st_mode) == mode


# ------------------------------------------------------------------ the pipeline's failure path


def test_failed_stage_leaves_the_run_and_its_config_unchanged(committed_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime failure (here the gate stage raising) records a note and changes no committed byte."""
    import edgekd.stages.gate as gate_stage
    from edgekd.errors import EdgekdError
    from edgekd.pipeline import run

    def boom(ctx):  # a stage failing at runtime after it started
        raise EdgekdError("gate exploded", "do not do that")

    monkeypatch.setattr(gate_stage, "run", boom)
    before = _snapshot(committed_run)
    with pytest.raises(EdgekdError, match="gate exploded"):
        run({"name": committed_run.name, "budgets": {"max_size_mb": 0.5}}, out=committed_run.parent,
            stages=["gate"], overrides=["seed=3"], log=_quiet)
    assert _snapshot(committed_run) == before  # config.yaml, manifest, artifacts
    (note,) = (committed_run / "failed").glob("*.json")
    record = json.loads(note.read_text())
    assert record["stage"] == "gate" and record["message"] == "gate exploded" and record["overrides"] == ["seed=3"]
