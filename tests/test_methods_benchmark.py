"""benchmarks/methods.py's bookkeeping: reusing a verified teacher, resuming a table over several sittings.

A default-budget cell is ~30 min on 2 cores, so the table is filled over several sittings; what can go
wrong there (a teacher of another config, cells of another budget mixed in, a cell run twice) is
checked here without training anything.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
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
    with pytest.raises(mb.BenchInputError) as e:
        mb.teacher_from_run(BASE, str(teacher_run(tmp_path, **change)))
    assert named in str(e.value) and "drop --teacher-run" in str(e.value)


def test_teacher_run_whose_weights_changed_is_refused(tmp_path):
    run = teacher_run(tmp_path)
    (run / "stages" / "teacher" / "teacher.pt").write_bytes(b"other")
    with pytest.raises(mb.BenchInputError, match="does not match its sha256"):
        mb.teacher_from_run(BASE, str(run))


def test_a_missing_run_or_one_without_a_teacher_stage_is_named(tmp_path):
    with pytest.raises(mb.BenchInputError, match="does not exist"):
        mb.teacher_from_run(BASE, str(tmp_path / "nowhere"))
    Manifest(tmp_path / "empty").save()
    with pytest.raises(mb.BenchInputError, match="no finished teacher stage"):
        mb.teacher_from_run(BASE, str(tmp_path / "empty"))


def row(seed: int, clean: float) -> dict:
    return {**{k: 0.5 for k in mb.COLUMNS}, "clean": clean, "seed": seed}


STUDENT = "mobilenet_v2 x0.5"


def write_table(out: Path, runs: dict, overrides: list[str], sha: str, seconds: float = 100.0,
                failures: list | None = None, student: str = STUDENT) -> None:
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", seeds=[0],
                        methods=list(runs))
    teacher = SimpleNamespace(arch="resnet18", val_accuracy=0.93)
    mb.write(out, "methods", a, overrides, teacher, sha, student, runs, failures or [], seconds, complete=False)


def test_resume_keeps_every_measured_cell_and_the_earlier_wall_time(tmp_path):
    budget = mb.BUDGETS["default"]
    write_table(tmp_path, {"ce": [row(0, 0.91)], "hinton": [row(0, 0.92), row(1, 0.93)], "dkd": [row(0, 0.90)]},
                budget, "abc", seconds=3600.0)
    runs, failures, seconds = mb.resumed(tmp_path / "methods.json", budget, "abc", STUDENT, ["ce", "hinton", "augmix_kd"])
    assert seconds == 3600.0 and failures == []
    # the requested methods first; an earlier sitting's other method stays on the table
    assert list(runs) == ["ce", "hinton", "augmix_kd", "dkd"]
    assert [r["seed"] for r in runs["hinton"]] == [0, 1] and runs["augmix_kd"] == []
    assert runs["dkd"][0]["clean"] == 0.90
    # the markdown of a partial table says it is partial
    assert "Incomplete" in (tmp_path / "methods.md").read_text()


@pytest.mark.parametrize("overrides, sha, student, named", [
    (["data.train_subset=2000"], "abc", STUDENT, "another overrides"),
    (None, "another-teacher", STUDENT, "another teacher sha256"),
    (None, "abc", "mobilenet_v3_small x1.0", "another student"),
])
def test_resume_refuses_cells_of_another_budget_teacher_or_student(tmp_path, overrides, sha, student, named):
    budget = mb.BUDGETS["default"]
    write_table(tmp_path, {"ce": [row(0, 0.91)]}, budget, "abc")
    with pytest.raises(mb.BenchInputError, match=named):
        mb.resumed(tmp_path / "methods.json", overrides or budget, sha, student, ["ce"])


def test_resume_refuses_a_table_written_before_resume_existed(tmp_path):
    write_table(tmp_path, {"ce": [row(0, 0.91)]}, mb.BUDGETS["default"], "abc")
    data = json.loads((tmp_path / "methods.json").read_text())
    del data["meta"]["teacher_sha256"]
    (tmp_path / "methods.json").write_text(json.dumps(data))
    with pytest.raises(mb.BenchInputError, match="before --resume existed"):
        mb.resumed(tmp_path / "methods.json", mb.BUDGETS["default"], "abc", STUDENT, ["ce"])


def test_resume_without_a_table_starts_empty(tmp_path):
    runs, failures, seconds = mb.resumed(tmp_path / "methods.json", mb.BUDGETS["default"], "abc", STUDENT, ["ce", "hinton"])
    assert runs == {"ce": [], "hinton": []} and failures == [] and seconds == 0.0


def by_corruption(held_out: float = 0.6, other: float = 0.9) -> dict[str, list[float]]:
    """The check stage's per-corruption, per-severity accuracies: ``held_out`` on the held-out ones."""
    from edgekd.robustness.corruptions import CORRUPTIONS

    return {c: [held_out if c in mb.HELD_OUT_CORRUPTIONS else other] * 5 for c in CORRUPTIONS.names()}


class FakeRun:
    """What ``measure`` reads of a finished run: the check, distill and qat metrics."""

    def __init__(self, clean: float) -> None:
        rob = {"corruption": {"mean_accuracy": 0.7, "by_corruption": by_corruption()}, "calibration": {"ece": 0.02},
               "ood": {"uniform": {"auroc_msp": 0.9}, "blobs": {"auroc_msp": 0.8}}}
        teacher = {"corruption": {"mean_accuracy": 0.8, "by_corruption": by_corruption(held_out=0.7)}}
        self._m = {"check": {"models": {
            "teacher": {"accuracy": 0.93, "robustness": teacher},
            "student_fp32": {"accuracy": clean, "robustness": {"adversarial": {"pgd": {mb.EPS_KEY: 0.2}}}},
            "student_int8": {"accuracy": clean - 0.001, "robustness": rob}}},
            "distill": {"train_seconds": 10.0}, "qat": {"train_seconds": 2.0}}

    def metrics(self, stage: str) -> dict:
        return self._m[stage]


def test_a_second_sitting_runs_only_the_missing_requested_cells(tmp_path, monkeypatch):
    """Sitting 1 measured ce/hinton seed 0, dkd seed 0, and hinton seed 1 failed. Sitting 2 asks ce and hinton
    for seeds 0-1: only ce s1 and hinton s1 run (resumed), dkd is kept but not run, the old failure of
    hinton s1 is replaced by its result, and the table's seeds are every sitting's."""
    out = tmp_path / "results"
    run_dir = teacher_run(tmp_path)
    sha = mb.sha256_file(run_dir / "stages" / "teacher" / "teacher.pt")
    write_table(out, {"ce": [row(0, 0.91)], "hinton": [row(0, 0.92)], "dkd": [row(0, 0.90)]}, mb.BUDGETS["default"],
                sha, seconds=600.0, failures=[{"method": "hinton", "seed": 1, "error": "DivergenceError: x"}])
    calls = []

    def fake_run(config, overrides, out, resume):
        name = next(o for o in overrides if o.startswith("name="))[5:]
        calls.append((name, resume))
        return FakeRun(0.95 if name.startswith("ce") else 0.93)

    monkeypatch.setattr(mb.edgekd, "run", fake_run)
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=["ce", "hinton"], seeds=[0, 1], runs=str(tmp_path / "runs"),
                        teacher_run=str(run_dir), resume=True)
    assert mb.measure_table(a, out, "methods") == 0
    assert calls == [("ce_s1", True), ("hinton_s1", True)]
    data = json.loads((out / "methods.json").read_text())
    assert data["meta"]["methods"] == ["ce", "hinton", "dkd"] and data["meta"]["seeds"] == [0, 1]
    assert data["meta"]["seconds"] >= 600.0
    # this sitting finished, but dkd has no seed 1: the table is not complete, and its markdown says so
    assert data["meta"]["complete"] is False and "Incomplete" in (out / "methods.md").read_text()
    assert [r["seed"] for r in data["runs"]["hinton"]] == [0, 1] and data["failures"] == []
    assert data["summary"]["ce"]["clean"][0] == pytest.approx((0.91 + 0.95) / 2)


def test_the_cli_exits_2_with_one_line_for_a_bad_teacher_run(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "methods.py"), "--teacher-run",
                           str(tmp_path / "nowhere"), "--out", str(tmp_path), "--methods", "ce"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--teacher-run" in proc.stderr and "does not exist" in proc.stderr


def test_beats_needs_more_than_the_larger_seed_std():
    # hinton 0.91 ± 0.0141; ce's std 0.0071 is the smaller one
    table = mb.summarize({"hinton": [row(0, 0.90), row(1, 0.92)], "ce": [row(0, 0.925), row(1, 0.935)]})
    assert table["hinton"]["clean"][1] == pytest.approx(0.0141421, rel=1e-5)
    assert table["ce"]["clean"][1] == pytest.approx(0.0070711, rel=1e-5)
    assert mb.beats(table, "ce", "clean")  # +0.02 > 0.0141
    table["ce"]["clean"][0] = 0.92  # +0.01: above ce's own std, inside hinton's -> not a win
    assert not mb.beats(table, "ce", "clean")
    table["ce"]["ece"], table["hinton"]["ece"] = [0.01, 0.001], [0.03, 0.001]  # lower is better for ECE
    assert mb.beats(table, "ce", "ece") and not mb.beats(table, "hinton", "ece")


def overrides_of(methods: list[str], tmp_path: Path, monkeypatch) -> dict[str, list[str]]:
    """Run a fresh table of ``methods`` (seed 0) on fake runs; each cell's overrides, by run name."""
    seen = {}

    def fake_run(config, overrides, out, resume):
        seen[next(o for o in overrides if o.startswith("name="))[5:]] = overrides
        return FakeRun(0.9)

    monkeypatch.setattr(mb.edgekd, "run", fake_run)
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=methods, seeds=[0], runs=str(tmp_path / "runs"),
                        teacher_run=str(teacher_run(tmp_path)), resume=False)
    assert mb.measure_table(a, tmp_path / "out", "methods") == 0
    return seen


def test_a_variant_row_runs_its_loss_with_its_settings_and_they_validate(tmp_path, monkeypatch):
    overrides = overrides_of(["hinton_corrupt"], tmp_path, monkeypatch)["hinton_corrupt_s0"]
    assert "distill.loss=hinton" in overrides and "data.augment.corruption_prob=0.5" in overrides
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides)  # cached logits + student-only corruption
    assert cfg.distill.cache_teacher_logits and cfg.data.augment.corruption_prob == 0.5
    data = json.loads((tmp_path / "out" / "methods.json").read_text())
    assert list(data["runs"]) == ["hinton_corrupt"]


def test_self_distill_runs_at_its_own_kd_weight_and_the_others_at_the_base_one(tmp_path, monkeypatch):
    """self_distill learns from its own average: the table gives it alpha 0.5 (the base 0.9 leaves the labels
    almost no say); every other row keeps the base config's alpha."""
    seen = overrides_of(["self_distill", "ce", "hinton"], tmp_path, monkeypatch)
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", seen["self_distill_s0"])
    assert cfg.distill.loss == "self_distill" and cfg.distill.alpha == mb.SELF_DISTILL_ALPHA == 0.5
    assert not cfg.distill.cache_teacher_logits  # its teacher moves
    for name in ("ce_s0", "hinton_s0"):
        assert load_config(ROOT / "configs" / "fashion_mnist.yaml", seen[name]).distill.alpha == BASE["distill"]["alpha"]


def test_every_setting_beyond_the_base_config_is_named_in_the_table():
    """Each row that runs extra settings (extras, VARIANTS) has its note in the table, and only those do."""
    per_method = mb.extras(BASE, lambda: "w.pt")
    assert set(mb.SETTINGS_NOTES) == set(per_method) | set(mb.VARIANTS)
    line = mb.settings_line(["ce", "hinton", "self_distill", "at", "dkd"])
    assert "self_distill: α 0.5" in line and "self_distill, at: no cached teacher logits" in line
    assert "dkd" not in line and "hinton:" not in line
    assert mb.settings_line(["ce", "hinton", "dkd"]) == ""


def test_every_method_and_variant_validates_at_the_default_budget():
    """The default budget caches the teacher's logits; a feature loss or a moving teacher turns that off.
    (fitnets and at once failed all their cells on this, an hour after the table started.)"""
    from edgekd.losses import KD_LOSSES
    from edgekd.validation import UNCACHEABLE_LOSSES

    assert BASE["distill"]["cache_teacher_logits"]
    for method in KD_LOSSES.names() + list(mb.VARIANTS):
        loss, variant = mb.variant_overrides(method)
        cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", mb.BUDGETS["default"] + variant + [f"distill.loss={loss}"])
        assert cfg.distill.loss == loss and cfg.distill.cache_teacher_logits == (loss not in UNCACHEABLE_LOSSES), method


def test_a_method_whose_config_is_invalid_stops_the_table_before_any_cell_trains(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(mb.edgekd, "run", lambda *a, **k: trained.append(k) or FakeRun(0.9))
    real = mb.variant_overrides
    monkeypatch.setattr(mb, "variant_overrides", lambda m: (m, ["distill.temperature=-1"]) if m == "dkd" else real(m))
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=["hinton", "dkd"], seeds=[0], runs=str(tmp_path / "runs"),
                        teacher_run=str(teacher_run(tmp_path)), resume=False)
    with pytest.raises(mb.BenchInputError, match="method dkd: .*distill.temperature"):
        mb.measure_table(a, tmp_path / "out", "methods")
    assert trained == [] and not (tmp_path / "out").exists()


def test_a_method_without_a_measured_seed_says_whether_it_failed_or_has_not_run(tmp_path):
    write_table(tmp_path, {"ce": [row(0, 0.91)], "hinton": [], "augmix_kd": []}, mb.BUDGETS["default"], "abc",
                failures=[{"method": "augmix_kd", "seed": 0, "error": "DivergenceError: x"}])
    md = (tmp_path / "methods.md").read_text()
    assert "| hinton | 0 | not run yet |" in md and "| augmix_kd | 0 | failed |" in md


def test_a_one_seed_row_shows_no_spread_and_is_not_ranked_against_hinton(tmp_path):
    """One seed has no std: its cells show the mean alone, and the verdict does not call it a win or a loss."""
    write_table(tmp_path, {"hinton": [row(0, 0.90), row(1, 0.92)], "fitnets": [row(0, 0.99)],
                           "dkd": [row(0, 0.95), row(1, 0.97)]}, mb.BUDGETS["default"], "abc")
    md = (tmp_path / "methods.md").read_text()
    assert "| fitnets | 1 | 99.00 | 50.00 |" in md and "| dkd | 2 | 96.00 ± 1.41 |" in md
    assert "| fitnets | not ranked: 1 seed, no seed std |" in md
    assert "| dkd | clean acc (FP32) |" in md  # +5 pt beyond hinton's 1.41 std: ranked and a win
    write_table(tmp_path, {"hinton": [row(0, 0.90)], "dkd": [row(0, 0.95), row(1, 0.97)]}, mb.BUDGETS["default"], "abc")
    md = (tmp_path / "methods.md").read_text()
    assert "Hinton KD has 1 seed" in md and "| dkd | clean" not in md


def test_training_time_shows_the_fastest_and_the_slowest_seed(tmp_path):
    """Wall time on a shared CPU: a mean ± std would mix a paused seed into the method's cost."""
    rows = [{**row(s, 0.9), "train_seconds": t} for s, t in ((0, 2529.4), (1, 553.2), (2, 570.0))]
    write_table(tmp_path, {"hinton": rows, "ce": [{**row(0, 0.9), "train_seconds": 530.0}]}, mb.BUDGETS["default"], "abc")
    md = (tmp_path / "methods.md").read_text()
    assert "training time (s): fastest seed (slowest) |" in md.splitlines()[0]
    assert md.splitlines()[2].endswith("| 530 |") and md.splitlines()[3].endswith("| 553 (2529) |"), md  # ce first
    summary = json.loads((tmp_path / "methods.json").read_text())["summary"]["hinton"]["train_seconds"]
    assert summary[0] == pytest.approx((2529.4 + 553.2 + 570.0) / 3, rel=1e-12)  # the JSON keeps mean and std


def test_the_table_reads_the_same_from_a_sitting_and_from_its_json(tmp_path):
    """A sitting renders its runs in run order, --render reads the JSON (keys sorted): every list in the
    markdown follows the rows' order, so the two are the same text."""
    runs = {"rslad": [row(0, 0.90), row(1, 0.91)], "ce": [row(0, 0.91), row(1, 0.92)],
            "hinton": [row(0, 0.92), row(1, 0.93)], "at": [row(0, 0.92), row(1, 0.925)]}
    for r in (r for rows in runs.values() for r in rows):
        r.update(teacher_corruption_mean=0.8, teacher_corruption_heldout=0.7, code="abc1234")
    write_table(tmp_path, runs, mb.BUDGETS["default"], "abc")
    sitting = (tmp_path / "methods.md").read_text()
    data = json.loads((tmp_path / "methods.json").read_text())
    assert list(data["runs"]) != list(runs)  # the JSON did reorder them
    assert mb.render(data) == sitting
    assert sitting.index("| ce | nothing |") < sitting.index("| rslad |", sitting.index("beats Hinton"))


def test_a_table_is_complete_only_with_every_seed_of_every_method(tmp_path, monkeypatch):
    """A sitting that fills the last missing cell marks the table complete; a failed cell counts as tried.
    A correction recorded by hand in the JSON's meta survives the next sitting."""
    out = tmp_path / "results"
    run_dir = teacher_run(tmp_path)
    sha = mb.sha256_file(run_dir / "stages" / "teacher" / "teacher.pt")
    write_table(out, {"ce": [row(0, 0.91), row(1, 0.9)], "hinton": [row(0, 0.92)]}, mb.BUDGETS["default"], sha,
                failures=[{"method": "hinton", "seed": 2, "error": "DivergenceError: x"}])
    data = json.loads((out / "methods.json").read_text())
    data["meta"]["corrections"] = ["ce seed 1: a note"]
    (out / "methods.json").write_text(json.dumps(data))
    monkeypatch.setattr(mb.edgekd, "run", lambda config, overrides, out, resume: FakeRun(0.93))
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=["hinton"], seeds=[1], runs=str(tmp_path / "runs"), teacher_run=str(run_dir),
                        resume=True)
    assert mb.measure_table(a, out, "methods") == 0
    data = json.loads((out / "methods.json").read_text())
    assert data["meta"]["seeds"] == [0, 1, 2]
    assert data["meta"]["complete"] is False  # ce has no seed 2
    assert data["meta"]["corrections"] == ["ce seed 1: a note"]
    a.methods, a.seeds = ["ce"], [2]
    assert mb.measure_table(a, out, "methods") == 0
    data = json.loads((out / "methods.json").read_text())
    assert data["meta"]["complete"] is True and "Incomplete" not in (out / "methods.md").read_text()


def test_rerun_from_qat_re_measures_only_the_tables_cells_and_keeps_a_failed_ones_row(tmp_path, monkeypatch):
    """After a change to the quantization code, ``--rerun-from qat`` re-runs qat, export and check (forced) of
    the cells the table holds, replacing their rows with the code they ran; a cell not in the table is not
    trained, and a re-run that fails keeps the earlier row and says so."""
    out = tmp_path / "results"
    run_dir = teacher_run(tmp_path)
    sha = mb.sha256_file(run_dir / "stages" / "teacher" / "teacher.pt")
    write_table(out, {"ce": [row(0, 0.91)], "hinton": [row(0, 0.92), row(1, 0.93)]}, mb.BUDGETS["default"], sha)
    calls = []

    def fake_run(config, overrides, out, resume, stages=None, force=False):
        name = next(o for o in overrides if o.startswith("name="))[5:]
        calls.append((name, resume, stages, force))
        if name == "hinton_s1":
            raise RuntimeError("export refused")
        return FakeRun(0.80)

    monkeypatch.setattr(mb.edgekd, "run", fake_run)
    monkeypatch.setattr(mb, "code_version", lambda: "abc1234")
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=["ce", "hinton"], seeds=[0, 1], runs=str(tmp_path / "runs"),
                        teacher_run=str(run_dir), resume=True, rerun_from="qat")
    assert mb.measure_table(a, out, "methods") == 0
    stages = ["qat", "export", "check"]
    assert calls == [("ce_s0", True, stages, True), ("hinton_s0", True, stages, True), ("hinton_s1", True, stages, True)]
    data = json.loads((out / "methods.json").read_text())
    assert [(r["seed"], r["clean"], r.get("code"), r.get("rerun_from")) for r in data["runs"]["hinton"]] == [
        (0, 0.80, "abc1234", "qat"), (1, 0.93, None, None)]
    assert data["runs"]["ce"][0]["clean"] == 0.80 and [r["seed"] for r in data["runs"]["ce"]] == [0]
    assert data["failures"] == [{"method": "hinton", "seed": 1,
                                 "error": "RuntimeError: export refused (re-run from qat; the earlier row is kept)"}]
    md = (out / "methods.md").read_text()
    assert "abc1234: ce s0 (re-run from qat), hinton s0 (re-run from qat)" in md
    assert "not recorded (before cells recorded it): hinton s1" in md


def test_rerun_from_needs_resume_and_a_stage_after_distill():
    for argv, named in ([["--rerun-from", "qat"], "pass it with --resume"],
                        [["--rerun-from", "distill", "--resume"], "invalid choice: 'distill'"]):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "methods.py"), *argv],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and named in proc.stderr, proc.stderr


def test_heldout_mean_is_the_mean_over_the_held_out_corruptions_only():
    by = by_corruption(held_out=0.6, other=0.9)
    by["rotate"] = [0.9, 0.8, 0.7, 0.6, 0.5]  # severity mean 0.7: (5 * 0.6 + 0.7) / 6
    assert mb.heldout_mean({"by_corruption": by}) == pytest.approx((5 * 0.6 + 0.7) / 6, rel=1e-12)
    del by["contrast"]
    with pytest.raises(mb.BenchInputError, match="measured no contrast"):
        mb.heldout_mean({"by_corruption": by})


def test_corruption_trained_rows_never_train_on_the_held_out_corruptions(tmp_path, monkeypatch):
    """augmix_kd's views and hinton_corrupt's inputs draw from the registered corruptions minus the held-out
    ones, and the overrides validate as a config."""
    from edgekd.robustness.corruptions import CORRUPTIONS

    seen = overrides_of(["augmix_kd", "hinton_corrupt"], tmp_path, monkeypatch)
    trained = set(CORRUPTIONS.names()) - set(mb.HELD_OUT_CORRUPTIONS)
    assert len(trained) == len(CORRUPTIONS.names()) - 6 and set(mb.HELD_OUT_CORRUPTIONS) <= set(CORRUPTIONS.names())
    augmix = load_config(ROOT / "configs" / "fashion_mnist.yaml", seen["augmix_kd_s0"])
    corrupt = load_config(ROOT / "configs" / "fashion_mnist.yaml", seen["hinton_corrupt_s0"])
    assert set(augmix.distill.augmix.ops) == trained and set(corrupt.data.augment.corruptions) == trained
    data = json.loads((tmp_path / "out" / "methods.json").read_text())
    assert data["runs"]["augmix_kd"][0]["corruption_heldout"] == pytest.approx(0.6)


def test_rows_measured_before_the_held_out_column_gain_it_from_their_run_folder(tmp_path):
    """A row whose run folder is here gets the column from its check stage; one whose folder is not stays
    without it, and its method's cell says "not measured" (never a mean over fewer seeds)."""
    runs_dir = tmp_path / "runs" / "default"
    folder = runs_dir / "ce_s0"
    folder.mkdir(parents=True)
    m = Manifest(folder)
    m.record_stage("check", {}, {"models": {
        "student_int8": {"robustness": {"corruption": {"by_corruption": by_corruption(held_out=0.55)}}},
        "teacher": {"robustness": {"corruption": {"mean_accuracy": 0.8, "by_corruption": by_corruption(0.7)}}}}})
    old = {k: v for k, v in row(0, 0.91).items() if k != "corruption_heldout"}
    runs = {"ce": [dict(old)], "hinton": [dict(old, seed=0), dict(old, seed=1)]}
    assert mb.backfill(runs, runs_dir) == 1
    assert runs["ce"][0]["corruption_heldout"] == pytest.approx(0.55)
    assert runs["ce"][0]["teacher_corruption_heldout"] == pytest.approx(0.7)
    assert runs["ce"][0]["teacher_corruption_mean"] == 0.8
    assert all("corruption_heldout" not in r for r in runs["hinton"])
    out = tmp_path / "results"
    write_table(out, runs, mb.BUDGETS["default"], "abc")
    data = json.loads((out / "methods.json").read_text())
    assert data["summary"]["ce"]["corruption_heldout"] == [pytest.approx(0.55), 0.0]
    assert data["summary"]["hinton"]["corruption_heldout"] is None
    assert not mb.beats(data["summary"], "ce", "corruption_heldout")
    md = (out / "methods.md").read_text()
    assert "| hinton | 2 | 91.00 ± 0.00 | 50.00 ± 0.00 | 50.00 ± 0.00 | not measured |" in md
    # the per-corruption table: ce's row (its folder is here), not hinton's (no seed recorded it)
    assert runs["ce"][0]["by_corruption"]["contrast"] == pytest.approx(0.55)
    per = md[md.index("INT8 accuracy per corruption"):].splitlines()
    head = per[2].strip("| ").split(" | ")
    assert head[0] == "method" and head[-6:] == [f"{c} (held out)" for c in sorted(mb.HELD_OUT_CORRUPTIONS)]
    assert [ln.split(" | ")[0] for ln in per[4:6]] == ["| ce", "| teacher (seeds' draws [0])"]
    cells = per[4].strip("| ").split(" | ")
    assert cells[-1] == "55.00" and cells[1] == "90.00"  # a held-out one last, a trained-on one first


def test_the_per_corruption_table_averages_each_corruption_over_seeds(tmp_path):
    """Each method's cell is the mean over its seeds; the teacher's, over the seeds' draws, each seed once."""
    from edgekd.robustness.corruptions import CORRUPTIONS

    def cell_row(seed: int, contrast: float, teacher_contrast: float) -> dict:
        acc = {c: 0.9 for c in CORRUPTIONS.names()}
        return {**row(seed, 0.9), "by_corruption": {**acc, "contrast": contrast},
                "teacher_by_corruption": {**acc, "contrast": teacher_contrast}}

    runs = {"ce": [cell_row(0, 0.40, 0.60), cell_row(1, 0.50, 0.70)],
            "hinton": [cell_row(0, 0.60, 0.60), cell_row(1, 0.64, 0.70)]}
    table = mb.corruption_table(runs, mb.order_of_rows(list(runs)))
    lines = table.splitlines()
    col = lines[2].strip("| ").split(" | ").index("contrast (held out)")
    values = {ln.strip("| ").split(" | ")[0]: ln.strip("| ").split(" | ")[col] for ln in lines[4:]}
    assert values == {"ce": "45.00", "hinton": "62.00", "teacher (seeds' draws [0, 1])": "65.00"}


def test_the_teacher_line_compares_each_student_with_the_teacher_on_its_own_seeds_draw(tmp_path):
    """Seed 0 draws: teacher 0.80 / 0.70; seed 1: 0.82 / 0.72. hinton reaches the mean on seed 0 only
    (0.81 >= 0.80, 0.81 < 0.82), never the held-out one; ce on neither."""
    def cell(seed: int, corr: float, held: float) -> dict:
        t = {0: (0.80, 0.70), 1: (0.82, 0.72)}[seed]
        return {**row(seed, 0.9), "corruption_mean": corr, "corruption_heldout": held,
                "teacher_corruption_mean": t[0], "teacher_corruption_heldout": t[1]}
    runs = {"ce": [cell(0, 0.75, 0.6), cell(1, 0.75, 0.6)], "hinton": [cell(0, 0.81, 0.69), cell(1, 0.81, 0.71)]}
    line = mb.teacher_line(runs)
    assert "corruption mean 81.00 ± 1.41 % (seeds' draws [0, 1]); INT8 students at or above it on their seed's " \
           "draw: ce 0/2, hinton 1/2" in line
    assert "held-out corruptions 71.00 ± 1.41 %" in line and line.rstrip().endswith("ce 0/2, hinton 0/2.")
    assert mb.teacher_line({"ce": [row(0, 0.9)]}) is None  # rows from before the teacher was recorded
    write_table(tmp_path, runs, mb.BUDGETS["default"], "abc")
    assert "Teacher (the same file for every cell): corruption mean 81.00" in (tmp_path / "methods.md").read_text()


def cell_folder(runs: Path, name: str, overrides: list[str], extra_teachers: list[Path] = (),
                qat_overrides: list[str] | None = None) -> None:
    """A measured cell's run folder (replacing one there): the distill and QAT stages' manifest entries with
    the config sections they ran with (the cell's overrides; QAT's may differ, as after a re-run from QAT
    with other settings) and the extra teachers distill recorded."""
    import shutil

    folder = runs / "default" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "w.pt").write_bytes(b"w")
    m = Manifest(folder)
    for stage, ov in (("distill", overrides), ("qat", overrides if qat_overrides is None else qat_overrides)):
        d = load_config(ROOT / "configs" / "fashion_mnist.yaml", ov).to_dict()
        metrics = {"extra_teachers": [{"arch": "wrn16_4", "sha256": mb.sha256_file(p)} for p in extra_teachers]}
        m.record_stage(stage, {"weights": folder / "w.pt"}, metrics=metrics if stage == "distill" else {},
                       extra={"config": {k: d[k] for k in ("seed", "data", "student", "distill")}})


def resume_sitting(tmp_path: Path, monkeypatch, table: dict, methods: list[str], seeds: list[int],
                   rerun_from: str | None = None, overrides: list[str] = ()) -> list[str]:
    """A resumed sitting (in a fresh results folder) over ``table``, whose cells the run folders under
    ``tmp_path/runs`` hold; the names of the cells it ran."""
    run_dir = tmp_path / "run" if (tmp_path / "run").exists() else teacher_run(tmp_path)
    out = tmp_path / f"results{len(list(tmp_path.glob('results*')))}"
    table = {m: [{**mb.measure(FakeRun(r["clean"])), "seed": r["seed"]} for r in rows]  # rows as measured
             for m, rows in table.items()}
    budget = mb.BUDGETS["default"] + list(overrides)
    write_table(out, table, budget, mb.sha256_file(run_dir / "stages" / "teacher" / "teacher.pt"))
    calls = []

    def fake_run(config, overrides, out, resume, **rerun):
        calls.append(next(o for o in overrides if o.startswith("name="))[5:])
        return FakeRun(0.9)

    monkeypatch.setattr(mb.edgekd, "run", fake_run)
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=list(overrides),
                        methods=methods, seeds=seeds, runs=str(tmp_path / "runs"), teacher_run=str(run_dir),
                        resume=True, rerun_from=rerun_from)
    assert mb.measure_table(a, out, "methods") == 0
    return calls


def test_resume_adds_cells_to_a_row_only_if_its_kept_cells_ran_with_the_same_settings(tmp_path, monkeypatch):
    """A row is one configuration: a kept self_distill cell that ran at alpha 0.9 (before the table gave it
    0.5) must stop a sitting that would add seed 1 at 0.5, naming the cell, the key and both values."""
    runs = tmp_path / "runs"
    cell_folder(runs, "self_distill_s0", mb.method_overrides("self_distill") + ["distill.alpha=0.9"])
    cell_folder(runs, "hinton_s0", mb.method_overrides("hinton"))
    table = {"self_distill": [row(0, 0.91)], "hinton": [row(0, 0.92)]}
    with pytest.raises(mb.BenchInputError, match=r"self_distill s0: distill: distill\.alpha \(0\.9 there, 0\.5 now\)"):
        resume_sitting(tmp_path, monkeypatch, table, ["self_distill", "hinton"], [0, 1])
    # the cell run at the row's settings: the missing cells run
    cell_folder(runs, "self_distill_s0", mb.method_overrides("self_distill") + [f"distill.alpha={mb.SELF_DISTILL_ALPHA}"])
    assert resume_sitting(tmp_path, monkeypatch, table, ["self_distill", "hinton"], [0, 1]) == \
        ["self_distill_s1", "hinton_s1"]


def test_a_qat_rerun_with_other_settings_than_its_distillation_is_caught(tmp_path, monkeypatch):
    overrides = mb.method_overrides("hinton_corrupt")
    cell_folder(tmp_path / "runs", "hinton_corrupt_s0", overrides,
                qat_overrides=[o for o in overrides if not o.startswith("data.augment.corruption_prob")])
    with pytest.raises(mb.BenchInputError, match=r"qat: data\.augment\.corruption_prob \(0\.0 there, 0\.5 now\)"):
        resume_sitting(tmp_path, monkeypatch, {"hinton_corrupt": [row(0, 0.9)]}, ["hinton_corrupt"], [0],
                       rerun_from="check")


def test_multi_teacher_cells_are_checked_against_the_second_teachers_file(tmp_path, monkeypatch):
    """The second teacher is compared by sha256, and only when a cell of the row runs (the check must not
    train a teacher for a row that only keeps its cells); arch, weighting and loss are compared always."""
    import edgekd.tuning.teachers as teachers

    second = tmp_path / "wrn.pt"
    second.write_bytes(b"the second teacher")
    trained = []
    monkeypatch.setattr(teachers, "cached_teacher",
                        lambda base, arch, folder: trained.append(arch) or SimpleNamespace(weights=second))
    now = mb.method_overrides("multi_teacher") + mb.extras(BASE, lambda: str(second))["multi_teacher"]()
    cell_folder(tmp_path / "runs", "multi_teacher_s0", now, extra_teachers=[second])
    table = {"multi_teacher": [row(0, 0.9)]}
    assert resume_sitting(tmp_path, monkeypatch, table, ["multi_teacher"], [0]) == [] and trained == []
    assert resume_sitting(tmp_path, monkeypatch, table, ["multi_teacher"], [0, 1]) == ["multi_teacher_s1"]
    second.write_bytes(b"retrained in place")  # a new cell would learn from another second teacher
    with pytest.raises(mb.BenchInputError, match=r"multi_teacher s0: distill\.teachers weights \(sha256"):
        resume_sitting(tmp_path, monkeypatch, table, ["multi_teacher"], [0, 1])
    # a kept cell that ran with another weighting is caught with no cell to run, so no teacher trained
    trained.clear()
    cell_folder(tmp_path / "runs", "multi_teacher_s0", [o.replace("=confidence", "=mean") for o in now],
                extra_teachers=[second])
    with pytest.raises(mb.BenchInputError, match=r"teacher_weighting \('mean' there, 'confidence' now\)"):
        resume_sitting(tmp_path, monkeypatch, table, ["multi_teacher"], [0])
    assert trained == []


def test_a_kept_cell_without_its_run_folder_is_named_not_checked(tmp_path, monkeypatch, capsys):
    assert resume_sitting(tmp_path, monkeypatch, {"ce": [row(0, 0.9)]}, ["ce"], [0, 1]) == ["ce_s1"]
    assert "ce s0: settings not checked (no run folder" in capsys.readouterr().out


def test_a_kept_cell_of_another_tables_set_is_caught(tmp_path, monkeypatch):
    """Run folders are shared by every table of a budget: a cell another table (run with ``--set``) overwrote
    does not hold what this table measured."""
    cell_folder(tmp_path / "runs", "ce_s0", mb.method_overrides("ce") + ["distill.train.epochs=5"])
    with pytest.raises(mb.BenchInputError, match=r"ce s0: distill: distill\.train\.epochs \(5 there, 3 now\)"):
        resume_sitting(tmp_path, monkeypatch, {"ce": [row(0, 0.9)]}, ["ce"], [0, 1],
                       overrides=["distill.train.epochs=3"])


def test_an_unreadable_or_unrecorded_kept_manifest_is_named_without_a_traceback(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs" / "default"
    (runs / "ce_s0").mkdir(parents=True)
    (runs / "ce_s0" / "manifest.json").write_text("{not json")
    with pytest.raises(mb.BenchInputError, match=r"ce s0: its run folder cannot be read"):
        resume_sitting(tmp_path, monkeypatch, {"ce": [row(0, 0.9)]}, ["ce"], [0, 1])
    Manifest(runs / "ce_s0").save()  # a manifest with no stages: nothing to compare, said so
    assert resume_sitting(tmp_path, monkeypatch, {"ce": [row(0, 0.9)]}, ["ce"], [0, 1]) == ["ce_s1"]
    assert "ce s0: settings not checked (its manifest records no distill or QAT config)" in capsys.readouterr().out


def test_a_rerun_of_seeds_the_row_does_not_hold_trains_no_second_teacher(tmp_path, monkeypatch):
    import edgekd.tuning.teachers as teachers

    trained = []
    monkeypatch.setattr(teachers, "cached_teacher", lambda *a: trained.append(a) or SimpleNamespace(weights=tmp_path))
    second = tmp_path / "wrn.pt"
    second.write_bytes(b"w")
    now = mb.method_overrides("multi_teacher") + mb.extras(BASE, lambda: str(second))["multi_teacher"]()
    cell_folder(tmp_path / "runs", "multi_teacher_s0", now, extra_teachers=[second])
    assert resume_sitting(tmp_path, monkeypatch, {"multi_teacher": [row(0, 0.9)]}, ["multi_teacher"], [1],
                          rerun_from="check") == [] and trained == []


def test_a_failed_cell_records_the_errors_fix(tmp_path, monkeypatch):
    from edgekd.errors import CheckpointError

    def fail(*a, **k):
        raise CheckpointError("checkpoint x was written by a different configuration", "delete x")

    monkeypatch.setattr(mb.edgekd, "run", fail)
    a = SimpleNamespace(config=str(ROOT / "configs" / "fashion_mnist.yaml"), budget="default", overrides=[],
                        methods=["ce"], seeds=[0], runs=str(tmp_path / "runs"),
                        teacher_run=str(teacher_run(tmp_path)), resume=False)
    assert mb.measure_table(a, tmp_path / "out", "methods") == 0
    error = json.loads((tmp_path / "out" / "methods.json").read_text())["failures"][0]["error"]
    assert error == "CheckpointError: checkpoint x was written by a different configuration (fix: delete x)"
