"""benchmarks/methods.py's bookkeeping: reusing a verified teacher, resuming a table over several sittings.

A default-budget cell is ~30 min on 2 cores, so the table is filled over several sittings; what can go
wrong there (a teacher of another config, cells of another budget mixed in, a cell run twice) is
checked here without training anything.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekd.config import load_config
from edgekd.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("methods_bench", ROOT / "benchmarks" / "methods.py")
mb = importlib.util.module_from_spec(_spec)
sys.modules["methods_bench"] = mb
_spec.loader.exec_module(mb)

BASE = load_config(ROOT / "configs" / "fashion_mnist.yaml", mb.BUDGETS["default"]).to_dict()


def teacher_run(tmp_path: Path, **changes) -> Path:
    """A run folder whose teacher stage was configured like BASE, except ``changes`` ('section.key': value)."""
    run = tmp_path / "run"
    (run / "stages" / "teacher").mkdir(parents=True)
    (run / "stages" / "teacher" / "teacher.pt").write_bytes(b"weights")
    used = {"seed": BASE["seed"], "data": dict(BASE["data"]), "teacher": dict(BASE["teacher"])}
    for dotted, value in changes.items():
        sec, _, key = dotted.partition(".")
        if key:
            used[sec][key] = value
        else:
            used[sec] = value
    m = Manifest(run)
    m.record_stage("teacher", {"weights": run / "stages" / "teacher" / "teacher.pt"},
                   metrics={"val_accuracy": 0.93, "test_accuracy": 0.92}, extra={"config": used})
    return run


def test_teacher_run_of_the_same_config_is_reused_with_its_accuracy(tmp_path):
    t = mb.teacher_from_run(BASE, str(teacher_run(tmp_path)))
    assert t.weights.read_bytes() == b"weights"
    assert (t.arch, t.val_accuracy, t.trained) == ("resnet18", 0.93, False)


@pytest.mark.parametrize("change, named", [
    ({"teacher.width": 0.5}, "teacher.width: run 0.5"),
    ({"data.val_size": 300}, "data.val_size: run 300"),
    ({"seed": 1}, "seed: run 1"),
])
def test_teacher_run_of_another_config_is_refused_naming_the_difference(tmp_path, change, named):
    with pytest.raises(SystemExit) as e:
        mb.teacher_from_run(BASE, str(teacher_run(tmp_path, **change)))
    assert named in str(e.value) and "drop --teacher-run" in str(e.value)


def test_teacher_run_whose_weights_changed_is_refused(tmp_path):
    run = teacher_run(tmp_path)
    (run / "stages" / "teacher" / "teacher.pt").write_bytes(b"other")
    with pytest.raises(Exception, match="does not match its sha256"):
        mb.teacher_from_run(BASE, str(run))


def row(seed: int, clean: float) -> dict:
    return {**{k: 0.5 for k in mb.COLUMNS}, "clean": clean, "seed": seed}


def write_table(out: Path, runs: dict, overrides: list[str], sha: str, seconds: float = 100.0) -> None:
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", seeds=[0, 1, 2],
                        methods=list(runs))
    teacher = SimpleNamespace(arch="resnet18", val_accuracy=0.93)
    mb.write(out, "methods", a, overrides, teacher, sha, runs, [], seconds, complete=False)


def test_resume_keeps_every_measured_cell_and_the_earlier_wall_time(tmp_path):
    budget = mb.BUDGETS["default"]
    write_table(tmp_path, {"ce": [row(0, 0.91)], "hinton": [row(0, 0.92), row(1, 0.93)], "dkd": [row(0, 0.90)]},
                budget, "abc", seconds=3600.0)
    runs, seconds = mb.resumed(tmp_path / "methods.json", budget, "abc", ["ce", "hinton", "augmix_kd"])
    assert seconds == 3600.0
    # the requested methods first; an earlier sitting's other method stays on the table
    assert list(runs) == ["ce", "hinton", "augmix_kd", "dkd"]
    assert [r["seed"] for r in runs["hinton"]] == [0, 1] and runs["augmix_kd"] == []
    assert runs["dkd"][0]["clean"] == 0.90
    # the markdown of a partial table says it is partial
    assert "Incomplete" in (tmp_path / "methods.md").read_text()


@pytest.mark.parametrize("overrides, sha", [(["data.train_subset=2000"], "abc"), (None, "another-teacher")])
def test_resume_refuses_cells_of_another_budget_or_teacher(tmp_path, overrides, sha):
    budget = mb.BUDGETS["default"]
    write_table(tmp_path, {"ce": [row(0, 0.91)]}, budget, "abc")
    with pytest.raises(SystemExit, match="other overrides or another teacher"):
        mb.resumed(tmp_path / "methods.json", overrides or budget, sha, ["ce"])


def test_resume_without_a_table_starts_empty(tmp_path):
    runs, seconds = mb.resumed(tmp_path / "methods.json", mb.BUDGETS["default"], "abc", ["ce", "hinton"])
    assert runs == {"ce": [], "hinton": []} and seconds == 0.0


def test_beats_needs_more_than_the_larger_seed_std():
    table = mb.summarize({"hinton": [row(0, 0.90), row(1, 0.92)], "dkd": [row(0, 0.93), row(1, 0.95)],
                          "ce": [row(0, 0.92), row(1, 0.93)]})
    # dkd: +0.03 mean, stds 0.014 -> beats; ce: +0.015 vs hinton's std 0.0141 -> beats barely
    assert mb.beats(table, "dkd", "clean")
    assert table["hinton"]["clean"][1] == pytest.approx(0.0141421, rel=1e-5)
    table["ce"]["clean"][0] = 0.9141  # +0.0141 < 0.01414: inside the spread
    assert not mb.beats(table, "ce", "clean")
