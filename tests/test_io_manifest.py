"""Atomic writes survive a real kill mid-write; the manifest verifies every artifact's sha256."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekd.errors import ArtifactError
from edgekd.io import atomic_write_bytes, atomic_write_json, sha256_file
from edgekd.manifest import Manifest

WRITER = r"""
import sys, time
from edgekd.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as fh:
        for _ in range(10_000):
            fh.write(b"new" * 1000)
            fh.flush()
            print("writing", flush=True)
            time.sleep(0.01)
"""


def test_killed_writer_leaves_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    atomic_write_bytes(target, b"old contents")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(5):  # the child is now mid-write
        assert proc.stdout.readline().startswith("writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old contents"
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.onnx"]
    assert all(p.name.endswith(".tmp") for p in leftovers)  # only a stray temp file, never the final name


def test_exception_inside_atomic_write_keeps_old_file(tmp_path: Path) -> None:
    from edgekd.io import atomic_path

    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_manifest_records_and_verifies_artifacts(tmp_path: Path) -> None:
    art = tmp_path / "model.onnx"
    art.write_bytes(b"\x08\x07onnx-bytes")
    m = Manifest(tmp_path)
    entry = m.record_stage("export", {"student_fp32": art}, metrics={"nodes": 3}, config_hash="abc")
    assert entry["artifacts"]["student_fp32"] == {"path": "model.onnx", "sha256": sha256_file(art), "bytes": 12}
    again = Manifest.load(tmp_path)
    assert again.artifact("export", "student_fp32") == art
    assert again.metrics("export") == {"nodes": 3}
    art.write_bytes(b"\x08\x07onnx-byte")  # truncated after the stage wrote it
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        again.artifact("export", "student_fp32")
    art.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        again.artifact("export", "student_fp32")
    with pytest.raises(ArtifactError, match="run the 'qat' stage first"):
        again.artifact("qat", "weights")


def test_manifest_paths_with_a_relative_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = Path("export") / "run"
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "w.pt").write_bytes(b"weights")
    m = Manifest(run)
    entry = m.record_stage("teacher", {"weights": run / "stages" / "w.pt"})
    assert entry["artifacts"]["weights"]["path"] == "stages/w.pt"
    assert Manifest.load(run).artifact("teacher", "weights").read_bytes() == b"weights"


def test_manifest_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)
