"""edgekd tune: the real CLI on a tiny config (Optuna study, cached teacher, trial 0 = the config as given,
Pareto table and plot, chosen.yaml that edgekd run accepts), the Pareto/choice logic, failed and resumed
trials, and bad inputs (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import requires_fashion_mnist
from helpers import tiny_run_config

import edgekd
from edgekd.losses import KD_LOSSES
from edgekd.tuning import pareto
from edgekd.tuning.space import default_params, search_space

optuna = pytest.importorskip("optuna", reason="edgekd tune needs the optional extra: pip install 'edgekd[tune]'")

ROOT = Path(__file__).resolve().parents[1]
EDGEKD = [sys.executable, "-m", "edgekd"]
STEPS = {"epochs": 1, "max_steps_per_epoch": 2}
KD_NAMES = KD_LOSSES.names()


def tiny_tune_config(tmp: Path) -> Path:
    """The seconds-long whole chain, plus a two-method search space at the config's own width."""
    d = tiny_run_config("tiny", 32, STEPS, STEPS, {**STEPS, "lr": 0.002})
    d["tune"] = {"methods": ["hinton", "ce"], "student_widths": [0.5], "latency_runs": 5}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEKD, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "EDGEKD_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})})


# ------------------------------------------------------------------ the real CLI, end to end


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tune")
    config = tiny_tune_config(tmp)
    proc = cli("tune", "-c", str(config), "--trials", "2", "--out", str(tmp / "tune"))
    assert proc.returncode == 0, (proc.stderr + proc.stdout)[-4000:]
    return {"config": config, "dir": tmp / "tune", "tmp": tmp, "proc": proc}


@requires_fashion_mnist
@pytest.mark.slow
def test_tune_smoke_through_the_cli(tuned: dict[str, Any]) -> None:
    d: Path = tuned["dir"]
    summary = json.loads((d / "summary.json").read_text())
    rows = summary["trials"]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], rows
    # trial 0 is the config as given, enqueued before the sampler chose anything
    base = edgekd.load_config(tuned["config"])
    assert rows[0]["default"] is True and summary["default"] == 0
    assert {k: rows[0][k] for k in default_params(base)} == default_params(base)
    assert rows[1]["method"] in ("hinton", "ce") and "default" not in rows[1]
    for r in rows:  # measured numbers, not placeholders: accuracy a fraction of the 64 val images
        assert 0.0 <= r["val_accuracy"] <= 1.0 and abs(r["val_accuracy"] * 64 - round(r["val_accuracy"] * 64)) < 1e-6
        assert r["latency_ms"] > 0 and r["size_mb"] > 0
    # the chosen trial is the most accurate (no budget), so it is never worse than trial 0
    chosen = rows[summary["chosen"]]
    assert chosen["val_accuracy"] == max(r["val_accuracy"] for r in rows) >= rows[0]["val_accuracy"]
    assert summary["pareto"] == [r["number"] for r in pareto.pareto_front(rows)]
    # the Pareto table lists exactly the front; the plot exists and the report shows it
    table = (d / "pareto.md").read_text().splitlines()
    assert table[0].startswith("| number | state | method | teacher |") and len(table) == 2 + len(summary["pareto"])
    assert (d / "plots" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    report = (d / "report.md").read_text()
    assert "## Pareto front" in report and "](plots/pareto.png)" in report and "## Teacher selection" in report
    # one teacher, trained once and reused: both trials loaded the same cached weights file; the teacher
    # table counts only the trials that learned from it (a ce trial did not)
    taught = sum(r["method"] != "ce" for r in rows)
    assert [t["teacher"] for t in summary["teachers"]] == ["resnet18"] and summary["teachers"][0]["trials"] == taught
    for r in rows:
        cfg = json.loads((Path(r["run_dir"]) / "manifest.json").read_text())["config"]
        assert cfg["teacher_train"]["epochs"] == 0 and cfg["teacher"]["weights"].startswith(str(d / "teachers"))
    # the study is resumable: the same call again finds 2 finished trials and runs none
    again = cli("tune", "-c", str(tuned["config"]), "--trials", "2", "--out", str(d))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tune: trial" not in again.stderr and "teacher: up to date, skipped" in again.stderr
    assert len(json.loads((d / "summary.json").read_text())["trials"]) == 2


@requires_fashion_mnist
@pytest.mark.slow
def test_chosen_yaml_loads_and_runs(tuned: dict[str, Any]) -> None:
    d: Path = tuned["dir"]
    summary = json.loads((d / "summary.json").read_text())
    chosen = summary["trials"][summary["chosen"]]
    cfg = edgekd.load_config(d / "chosen.yaml")  # edgekd's own loader: every key valid
    assert (cfg.distill.loss, cfg.teacher.arch, cfg.student.width) == (chosen["method"], chosen["teacher"],
                                                                       chosen["student_width"])
    assert cfg.distill.temperature == pytest.approx(chosen["temperature"], rel=1e-12)  # YAML round trip of a float
    assert cfg.tune.source == str(d.resolve())
    out = tuned["tmp"] / "runs"
    proc = cli("run", "--config", str(d / "chosen.yaml"), "--out", str(out))
    assert proc.returncode == 0, (proc.stderr + proc.stdout)[-4000:]
    report = (out / "tiny-tuned" / "report.md").read_text()
    assert "## Pareto front" in report and (out / "tiny-tuned" / "plots" / "pareto.png").is_file()


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials must be a whole number >= 1"),
    (["--trials", "1", "--set", "tune.methods=[hinton,nope]"], "tune.methods[1]"),
    (["--trials", "1", "--set", "tune.teachers=[resnet9000]"], "tune.teachers[0]"),
    (["--trials", "1", "--set", "tune.alpha=[0.9,0.1]"], "low <= high"),
])
def test_bad_tune_inputs_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = cli("tune", "-c", "smoke", "--out", str(tmp_path / "t"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_optuna_says_how_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "optuna"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\")\n")  # optuna absent
    proc = cli("tune", "-c", "smoke", "--trials", "1", "--out", str(tmp_path / "t"),
               env={"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs optuna" in proc.stderr and "pip install 'edgekd[tune]'" in proc.stderr
    assert not (tmp_path / "t").exists()  # nothing written before the check


# ------------------------------------------------------------------ logic, without training


def row(n: int, acc: float, ms: float, state: str = "COMPLETE", teacher: str = "a") -> dict[str, Any]:
    return {"number": n, "state": state, "val_accuracy": acc, "latency_ms": ms, "teacher": teacher}


def test_pareto_front_and_choice_under_a_budget() -> None:
    rows = [row(0, 0.90, 2.0), row(1, 0.92, 3.0), row(2, 0.89, 2.5), row(3, 0.95, 9.0), row(4, 0.99, 1.0, "FAIL")]
    assert [r["number"] for r in pareto.pareto_front(rows)] == [0, 1, 3]  # 2 is beaten by 0; 4 failed
    assert pareto.choose(rows, None)["number"] == 3
    assert pareto.choose(rows, 5.0)["number"] == 1  # 3 is more accurate but over budget
    assert pareto.choose(rows, 1.5) is None  # nothing within budget: never an over-budget pick


def test_teacher_selection_by_student_not_by_teacher_accuracy() -> None:
    rows = [row(0, 0.80, 1.0, teacher="big"), row(1, 0.85, 1.0, teacher="small"), row(2, 0.70, 1.0, teacher="big")]
    compared = pareto.taught(rows, None, ())
    table = pareto.teacher_table(compared, {"big": 0.95, "small": 0.90})
    assert [t["teacher"] for t in table] == ["small", "big"]
    assert table[1]["mean_student_val_accuracy"] == pytest.approx(0.75, rel=1e-12)
    assert pareto.teacher_selection(table, compared, pareto.choose(rows, None)) == {
        "most_accurate_teacher": "big", "best_student_teacher": "small", "most_accurate_compared": True,
        "differ": True, "chosen_learns_from_one_teacher": True}


def test_teacher_selection_counts_only_in_budget_trials_that_learned_from_the_teacher() -> None:
    """A CE-only trial's teacher taught nothing, and an over-budget student cannot be shipped: neither may
    make its teacher the selected one (the chosen config's teacher would then disagree with the report)."""
    rows = [{**row(0, 0.99, 1.0, teacher="big"), "method": "ce"},  # best overall, learns from no teacher
            {**row(1, 0.95, 9.0, teacher="big"), "method": "hinton"},  # over the 2 ms budget
            {**row(2, 0.90, 1.0, teacher="small"), "method": "hinton"},
            {**row(3, 0.88, 1.5, teacher="big"), "method": "dkd"}]
    compared = pareto.taught(rows, 2.0, {"ce", "self_distill"})
    assert [r["number"] for r in compared] == [2, 3]
    table = pareto.teacher_table(compared, {"big": 0.95, "small": 0.90})
    assert [(t["teacher"], t["trials"], t["best_student_val_accuracy"]) for t in table] == [
        ("small", 1, 0.90), ("big", 1, 0.88)]
    chosen = pareto.choose(rows, 2.0)
    assert chosen["number"] == 0  # the ce trial: most accurate within the budget
    sel = pareto.teacher_selection(table, compared, chosen)
    assert sel == {"most_accurate_teacher": "big", "best_student_teacher": "small", "most_accurate_compared": True,
                   "differ": True, "chosen_learns_from_one_teacher": False}
    from edgekd.deploy.report.tune_report import _selection_text

    assert "does not learn from one teacher" in _selection_text(sel) and "chosen config uses" not in _selection_text(sel)
    sel_taught = pareto.teacher_selection(table, compared, rows[2])
    assert _selection_text(sel_taught).endswith("The chosen config uses small.")


def test_selection_leaves_out_ensembles_and_calls_a_tie_no_difference() -> None:
    """A multi_teacher student learned from an ensemble: it says nothing about its sampled teacher. Two
    teachers whose best students tie on accuracy are not a case where selection differs."""
    from edgekd.deploy.report.tune_report import _selection_text
    from edgekd.tuning.outputs import methods_without_one_teacher

    assert methods_without_one_teacher() == {"ce", "self_distill", "multi_teacher"}
    rows = [{**row(0, 0.99, 1.0, teacher="small"), "method": "multi_teacher"},
            {**row(1, 0.90, 2.0, teacher="big"), "method": "hinton"},
            {**row(2, 0.90, 1.0, teacher="small"), "method": "dkd"}]
    compared = pareto.taught(rows, None, methods_without_one_teacher())
    table = pareto.teacher_table(compared, {"big": 0.95, "small": 0.90})
    assert [t["teacher"] for t in table] == ["small", "big"]  # the tie goes to the faster student, as choose does
    sel = pareto.teacher_selection(table, compared, pareto.choose(rows, None))
    assert sel["best_student_teacher"] == "small" and sel["differ"] is False
    assert sel["chosen_learns_from_one_teacher"] is False  # the multi_teacher trial is chosen
    text = _selection_text(sel)
    assert "a tie: no case where they differ" in text and "does not learn from one teacher" in text


def test_a_most_accurate_teacher_without_a_counted_student_is_not_called_a_difference() -> None:
    """Its trials all failed (or ran over budget): nothing was compared, so it is no case of selection differing."""
    from edgekd.deploy.report.tune_report import _selection_text

    rows = [{**row(0, 0.80, 1.0, teacher="small"), "method": "hinton"},
            {**row(1, 0.0, 1.0, "FAIL", teacher="big"), "method": "dkd"}]
    compared = pareto.taught(rows, None, ())
    table = pareto.teacher_table(compared, {"big": 0.95, "small": 0.90})
    sel = pareto.teacher_selection(table, compared, pareto.choose(rows, None))
    assert sel["differ"] is False and sel["most_accurate_compared"] is False
    assert "taught no student that counts, so the two were not compared" in _selection_text(sel)


def test_a_summary_from_before_the_selection_rule_is_described_as_it_was() -> None:
    """An older tune folder's summary has no chosen_* key: its table counted every finished trial, so the
    re-rendered report neither claims the budget rule nor says anything about the chosen config."""
    from edgekd.deploy.report.tune_report import _selection_text

    old = {"most_accurate_teacher": "resnet18", "best_student_teacher": "resnet18", "differ": False}
    assert _selection_text(old) == ("resnet18 is both the most accurate teacher and the one whose student scored "
                                    "best in this study (no case where they differ).")


def _space_base(tmp: Path, *overrides: str) -> dict[str, Any]:
    """The shipped Fashion-MNIST config (teacher logits cached) as the base of a tune, plus overrides."""
    return edgekd.load_config("fashion_mnist", [f"out_dir={tmp}", *overrides]).to_dict()


@pytest.mark.parametrize("method", KD_NAMES)
def test_every_method_of_the_space_runs_from_one_base_config(method: str, tmp_path: Path) -> None:
    """Each method gets the settings it depends on: a trial config (and chosen.yaml) loads for every
    registered loss from a base config that caches teacher logits and lists an extra teacher."""
    from edgekd.config import config_from_dict
    from edgekd.tuning.space import chosen_config, trial_config
    from edgekd.validation import uncacheable_losses

    weights = {a: tmp_path / f"{a}.pt" for a in ("resnet18", "wrn16_4", "resnet34")}
    for w in weights.values():
        w.write_bytes(b"")
    extra = f"distill.teachers=[{{arch: resnet34, weights: {weights['resnet34']}}}]"
    own_extra = _space_base(tmp_path, extra, "distill.loss=multi_teacher", "distill.teacher_weighting=fixed",
                            "distill.teacher_weights=[1,2]")
    for base in (_space_base(tmp_path), own_extra):
        params = {"method": method, "teacher": "wrn16_4", "temperature": 3.0, "alpha": 0.8, "student_width": 0.5}
        candidates = {a: str(w) for a, w in weights.items() if a != "resnet34"}
        for d in (trial_config(base, params, str(weights["wrn16_4"]), "t", candidates),
                  chosen_config(base, params, str(tmp_path), candidates)):
            cfg = config_from_dict(d)  # the run's own config check
            assert cfg.distill.loss == method and cfg.teacher.arch == "wrn16_4"
            assert cfg.distill.cache_teacher_logits == (method not in uncacheable_losses())
            extras = [(t.arch, t.weights) for t in cfg.distill.teachers]
            if method != "multi_teacher":
                assert extras == [] and cfg.distill.teacher_weights == []
            elif base["distill"]["teachers"]:  # the config's own extra teachers win
                assert extras == [("resnet34", str(weights["resnet34"]))] and cfg.distill.teacher_weights == [1, 2]
            else:  # else the other candidate teachers, built like the base teacher
                assert extras == [("resnet18", str(weights["resnet18"]))]
                assert cfg.distill.teachers[0].stem_stride == base["teacher"]["stem_stride"]


def test_multi_teacher_candidates_fit_a_fixed_weighting_and_leave_a_multi_teacher_base_as_given(tmp_path: Path) -> None:
    """Candidates added to a base whose fixed weights were given for one teacher switch it to the mean
    (else the config check refuses the trial); a multi_teacher base config keeps its own (empty) teacher
    list, so trial 0 is the config as given."""
    from edgekd.config import config_from_dict
    from edgekd.tuning.space import default_params, trial_config

    weights = {a: str(tmp_path / f"{a}.pt") for a in ("resnet18", "wrn16_4", "resnet34")}
    params = {"method": "multi_teacher", "teacher": "resnet18", "temperature": 3.0, "alpha": 0.8, "student_width": 0.5}
    fixed = _space_base(tmp_path, "distill.teacher_weighting=fixed", "distill.teacher_weights=[1]")
    cfg = config_from_dict(trial_config(fixed, params, weights["resnet18"], "t", weights))
    assert [t.arch for t in cfg.distill.teachers] == ["wrn16_4", "resnet34"]
    assert (cfg.distill.teacher_weighting, cfg.distill.teacher_weights) == ("mean", [])
    own = _space_base(tmp_path, "distill.loss=multi_teacher")
    trial0 = trial_config(own, default_params(config_from_dict(own)), weights["resnet18"], "t", weights)
    assert trial0["distill"]["teachers"] == [] and trial0["distill"]["loss"] == "multi_teacher"


def test_chosen_config_trains_a_teacher_of_another_arch_from_scratch(tmp_path: Path) -> None:
    """The base teacher.weights fit the base arch only; the tuner's cached teacher of another arch was
    trained from scratch, so chosen.yaml must not pair that arch with the base weights."""
    from edgekd.tuning.space import chosen_config

    base = _space_base(tmp_path, f"teacher.weights={tmp_path / 'resnet18.pt'}")
    params = {"method": "hinton", "temperature": 3.0, "alpha": 0.8, "student_width": 0.5}
    other = chosen_config(base, {**params, "teacher": "wrn16_4"}, str(tmp_path))
    same = chosen_config(base, {**params, "teacher": "resnet18"}, str(tmp_path))
    assert (other["teacher"]["arch"], other["teacher"]["weights"]) == ("wrn16_4", None)
    assert same["teacher"]["weights"] == str(tmp_path / "resnet18.pt")


def test_search_space_always_holds_the_config_itself() -> None:
    cfg = edgekd.load_config("smoke", ["tune.methods=[ce]", "tune.student_widths=[0.35]", "tune.temperature=[1,2]",
                                       "distill.temperature=4", "tune.teachers=[wrn16_4]"])
    space = search_space(cfg)
    assert cfg.distill.loss in space.methods and "ce" in space.methods
    assert space.temperature == (1.0, 4.0) and cfg.student.width in space.widths and 0.35 in space.widths
    assert space.teachers == ("wrn16_4", cfg.teacher.arch)


def test_empty_methods_means_every_registered_loss() -> None:
    from edgekd.losses import KD_LOSSES

    assert set(search_space(edgekd.load_config("smoke")).methods) == set(KD_LOSSES.names())


def test_failed_trial_is_recorded_and_the_study_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial that raises is a FAIL row with its error (the study goes on); a second call continues the study."""
    from edgekd.tuning import study as study_mod
    from edgekd.tuning.teachers import CachedTeacher

    def fake_teacher(base: dict, arch: str, folder: Path, log: Any = None) -> CachedTeacher:
        return CachedTeacher(arch, folder / "t.pt", 0.9, 0.9, True)

    def fake_trial(base: dict, params: dict, weights: Path, folder: Path, data: Any, latency: Any, log: Any = None,
                   candidates: dict | None = None):
        if params["method"] == "ce":
            raise RuntimeError("boom in ce")
        return {"val_accuracy": params["alpha"], "latency_ms": 1.0 + params["temperature"], "test_accuracy": 0.5,
                "size_mb": 1.0, "train_seconds": 1.0, "run_dir": str(folder)}

    monkeypatch.setattr(study_mod, "cached_teacher", fake_teacher)
    monkeypatch.setattr(study_mod, "run_trial", fake_trial)
    monkeypatch.setattr("edgekd.data.build_dataset", lambda cfg, seed: None)
    cfg = edgekd.load_config("smoke", ["tune.methods=[hinton,ce]", "distill.loss=ce"])
    with pytest.raises(edgekd.EdgekdError, match="every trial .* failed .*boom in ce"):
        study_mod.tune(cfg, 1, out=tmp_path, log=lambda m: None)  # trial 0 (ce) fails: recorded, then named
    rows = json.loads((tmp_path / "summary.json").read_text())["trials"]
    assert rows[0]["state"] == "FAIL" and "boom in ce" in rows[0]["error"]
    result = study_mod.tune(cfg, 6, out=tmp_path, log=lambda m: None)  # continues the same study to 6
    rows = result.summary["trials"]
    assert len(rows) == 6 and rows[0]["state"] == "FAIL"
    assert all((r["state"] == "FAIL") == (r["method"] == "ce") for r in rows)
    assert result.summary["failed"] == [r["number"] for r in rows if r["method"] == "ce"]
    assert "boom in ce" in (tmp_path / "trials.md").read_text()
    # a trial left RUNNING by a killed process is closed, marked, and its parameters run again
    study = optuna.load_study(study_name=study_mod.STUDY_NAME, storage=f"sqlite:///{tmp_path / 'study.db'}")
    killed = study.ask()
    params = study_mod._suggest(killed, search_space(cfg))
    result = study_mod.tune(cfg, 7, out=tmp_path, log=lambda m: None)
    rows = result.summary["trials"]
    assert rows[killed.number]["state"] == "FAIL" and "interrupted" in rows[killed.number]["error"]
    rerun = rows[killed.number + 1]
    assert rerun["resumes_trial"] == killed.number and {k: rerun[k] for k in params} == params
    assert sum(1 for r in rows if "interrupted" not in str(r.get("error"))) == 7


def test_a_knob_the_trials_method_ignores_shows_as_a_dash() -> None:
    """Optuna samples temperature and alpha for every trial; for ce and rslad neither does anything (dkd's
    alpha is distill.dkd.alpha), so the trial tables must not present them as the trial's settings."""
    from edgekd.deploy.report.tune_report import _row
    from edgekd.tuning.outputs import markdown_table
    from edgekd.tuning.study import ignored_knobs

    rows = [{"number": i, "state": "COMPLETE", "method": m, "teacher": "resnet18", "temperature": 2.5,
             "alpha": 0.75, "student_width": 0.5, "val_accuracy": 0.9, "latency_ms": 1.0} for i, m in
            enumerate(["hinton", "ce", "rslad", "dkd"])]
    assert [ignored_knobs(r) for r in rows] == [[], ["temperature", "alpha"], ["temperature", "alpha"], ["alpha"]]
    for r in rows:
        r["unused"] = ignored_knobs(r)
    table = markdown_table(rows).splitlines()[2:]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table]
    assert [(c[4], c[5]) for c in cells] == [("2.500", "0.750"), ("—", "—"), ("—", "—"), ("2.500", "—")]
    assert [(_row(r)[3], _row(r)[4]) for r in rows] == [(_row(rows[0])[3], _row(rows[0])[4]), ("—", "—"), ("—", "—"),
                                                         (_row(rows[0])[3], "—")]
    assert _row(rows[0])[3] != "—" and _row(rows[0])[4] != "—"
