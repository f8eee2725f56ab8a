"""benchmarks/gpu_check.py's CPU-side logic: arguments, the override lists, the JSON it writes.

The GPU machine gives a few minutes per task, so everything that can break before a GPU is
involved is checked here: the --short overrides must validate against the real config, the
summary must read a manifest's shape, and a failing stage must still leave a JSON behind.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc
_spec.loader.exec_module(gc)


def fake_manifest(gate_passed: bool = True) -> dict:
    hist = [{"epoch": 0, "images_per_second": 9000.0}, {"epoch": 1, "images_per_second": 15000.0},
            {"epoch": 2, "images_per_second": 16000.0}]
    train = {"val_accuracy": 0.93, "test_accuracy": 0.92, "best_epoch": 2, "epochs": 3, "train_seconds": 12.5,
             "history": hist}
    return {
        "environment": {"precision": {"teacher": {"amp": "auto", "dtype": "bfloat16"}}},
        "stages": {
            "teacher": {"status": "done", "seconds": 14.0, "metrics": train},
            "distill": {"status": "done", "seconds": 20.0, "metrics": {**train, "history": hist[:1]}},
            "check": {"status": "done", "seconds": 30.0, "metrics": {"models": {"student_int8": {
                "accuracy": 0.91, "size_mb": 0.6, "latency": [{"batch": 1, "threads": 1, "median_ms": 0.8}]}}}},
            "gate": {"status": "done", "seconds": 0.1, "metrics": {"passed": gate_passed, "checks": []}},
        },
    }


def test_arguments_and_out_from_env(monkeypatch):
    monkeypatch.setenv("OUT", "/tmp/somewhere")
    a = gc.parse_args([])
    assert a.out == "/tmp/somewhere" and a.device == "cuda" and not a.short and a.config.endswith("fashion_mnist_gpu.yaml")
    a = gc.parse_args(["--device", "cpu", "--short", "--set", "seed=3", "--set", "data.batch_size=32", "--out", "x"])
    assert a.out == "x" and a.short and a.overrides == ["seed=3", "data.batch_size=32"]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_short_overrides_validate_against_the_gpu_config(device):
    overrides = gc.build_overrides(device, short=True, extra=["seed=7"])
    assert overrides[0] == f"device={device}" and overrides[-1] == "seed=7"
    cfg = load_config(gc.DEFAULT_CONFIG, overrides)  # a typo in a key fails here, not on the GPU machine
    full = load_config(gc.DEFAULT_CONFIG)
    assert cfg.device == device and cfg.seed == 7
    assert cfg.teacher_train.epochs < full.teacher_train.epochs and cfg.distill.train.epochs < full.distill.train.epochs
    assert cfg.qat.train.epochs <= full.qat.train.epochs and cfg.qat.freeze_observers_epoch < max(cfg.qat.train.epochs, 1)
    if device == "cpu":  # the dry run: tiny data and a few steps a stage
        assert cfg.data.train_subset and cfg.teacher_train.max_steps_per_epoch and cfg.check.latency.runs <= 10
    else:  # the GPU run keeps the full data and whole epochs
        assert cfg.data.train_subset is None and cfg.teacher_train.max_steps_per_epoch is None
    assert gc.build_overrides("cuda", short=False) == ["device=cuda"]


def test_pytest_summary_parsing():
    text = "....\n==== 3 passed, 2 skipped, 251 deselected, 1 error in 9.12s ====\n"
    assert gc.parse_pytest_summary(text) == {"passed": 3, "skipped": 2, "deselected": 251, "errors": 1}
    assert gc.parse_pytest_summary("1 failed, 2 passed in 1s") == {"failed": 1, "passed": 2}
    assert gc.parse_pytest_summary("no tests ran") == {}


def test_summary_and_json_writer(tmp_path):
    s = gc.summarize(fake_manifest())
    t = s["stages"]["teacher"]
    assert t["seconds"] == 14.0 and t["images_per_second_median"] == 15000.0 and t["images_per_second_max"] == 16000.0
    assert t["images_per_second_first_epoch"] == 9000.0 and t["test_accuracy"] == 0.92 and "history" not in t
    assert s["stages"]["check"]["models"]["student_int8"] == {"accuracy": 0.91, "size_mb": 0.6,
                                                              "latency_median_ms": {"b1_t1": 0.8}}
    assert s["gate_passed"] is True and s["precision"]["teacher"]["dtype"] == "bfloat16"
    path = gc.write_result(tmp_path / "out", {"device": {"device_name": "NVIDIA H200"}, **s})
    data = json.loads(path.read_text())
    assert path.name == "gpu_check.json" and data["stages"]["distill"]["images_per_second_median"] == 9000.0
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert gc.summarize({})["gate_passed"] is None  # an empty manifest (nothing ran) still summarizes


def test_exit_code():
    done = {"chain_completed": True, "gate_passed": False, "tests": {"passed_ok": True}}
    assert gc.exit_code(done, strict=False) == 0 and gc.exit_code(done, strict=True) == 1
    assert gc.exit_code({**done, "gate_passed": True}, strict=True) == 0
    assert gc.exit_code({**done, "tests": {"passed_ok": False}}, strict=False) == 1
    assert gc.exit_code({"chain_completed": False}, strict=False) == 1
    assert gc.exit_code({"chain_completed": True}, strict=False) == 0  # --skip-tests
    # --skip-chain (the benchmark-and-tests call): only the tests decide, --strict asks no gate of it
    assert gc.exit_code({"tests": {"passed_ok": True}}, strict=True, chain_ran=False) == 0
    assert gc.exit_code({"tests": {"passed_ok": False}}, strict=False, chain_ran=False) == 1


def test_skip_chain_runs_no_stage_and_records_the_tests(tmp_path, monkeypatch):
    """--skip-chain: edgekd.run is never called, the tests' result and the targets are in the JSON, rc 0."""
    import edgekd

    monkeypatch.setattr(edgekd, "run", lambda *a, **k: pytest.fail("--skip-chain ran a stage"))
    monkeypatch.setattr(gc, "run_cuda_tests", lambda timeout: {"passed_ok": True, "returncode": 0,
                                                                "counts": {"passed": 13}})
    rc = gc.main(["--device", "cpu", "--skip-chain", "--skip-benchmark", "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert rc == 0 and data["tests"]["counts"] == {"passed": 13}
    assert "chain_completed" not in data and data["targets"]["chain_seconds"]["measured"] is None


def test_main_runs_stage_by_stage_and_keeps_a_json_when_a_stage_fails(tmp_path, monkeypatch):
    """edgekd.run is replaced by a fake whose export stage fails: the JSON keeps teacher..qat and the error."""
    import edgekd

    manifest = {"stages": {}, "environment": {}}
    calls = []

    def fake_run(config, overrides, out, stages, log):
        (stage,) = stages
        calls.append((stage, list(overrides)))
        if stage == "export":
            raise RuntimeError("two nodes with same node name")
        manifest["stages"][stage] = {"status": "done", "seconds": 1.0,
                                     "metrics": {"history": [{"images_per_second": 100.0}], "test_accuracy": 0.5}}
        run_dir = Path(out) / "fashion_mnist_gpu"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        return SimpleNamespace(manifest=SimpleNamespace(data=dict(manifest)), run_dir=run_dir)

    monkeypatch.setattr(edgekd, "run", fake_run)
    rc = gc.main(["--device", "cpu", "--short", "--skip-tests", "--skip-benchmark", "--out", str(tmp_path / "out"),
                  "--run-dir", str(tmp_path / "runs")])
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert rc == 1 and [c[0] for c in calls] == ["teacher", "distill", "qat", "export"]
    assert all(c[1] == data["overrides"] for c in calls) and data["overrides"][0] == "device=cpu"
    assert set(data["stages"]) == {"teacher", "distill", "qat"} and data["chain_completed"] is False
    assert "same node name" in data["error"] and data["copied"] == ["manifest.json"]
    assert data["device"]["requested_device"] == "cpu" and data["device"]["torch"]
    assert data["precision"]["teacher"]["device"] == "cpu"  # planned by the script when the manifest has none


def test_planned_precision(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    plan = gc.planned_precision(str(gc.DEFAULT_CONFIG), gc.build_overrides("cuda", short=True))
    assert plan["teacher"]["dtype"] == plan["distill"]["dtype"] == "bfloat16" and plan["qat"]["dtype"] == "float32"
    assert "error" in gc.planned_precision(str(gc.DEFAULT_CONFIG), ["teacher_train.amp=fp8"])


def test_benchmark_commands_and_compile_fallback(tmp_path):
    """GPU: an eager run of every workload with a profile, then a compiled one; CPU: one tiny eager run."""
    gpu = gc.benchmark_commands("cuda", str(gc.DEFAULT_CONFIG), short=False, out=tmp_path)
    assert [t for t, _ in gpu] == ["eager", "compiled"]
    eager, compiled = (argv for _, argv in gpu)
    assert "--profile" in eager and "teacher_train.compile=off" in eager and "teacher_train.compile=off" not in compiled
    assert compiled[compiled.index("--workloads") + 1] == "teacher,kd_cached"
    (tag, cpu), = gc.benchmark_commands("cpu", str(gc.DEFAULT_CONFIG), short=True, out=tmp_path)
    assert tag == "eager" and cpu[cpu.index("--steps") + 1] == "1"
    ok = {"returncode": 0, "errors": {}}
    assert gc.compile_failed({}) is None and gc.compile_failed({"compiled": ok}) is None
    why = gc.compile_failed({"compiled": {"returncode": 1, "errors": {"teacher": "BackendCompilerFailed: no cc"}}})
    assert "no cc" in why


def test_cpu_benchmark_run_writes_its_rows(tmp_path):
    """The real benchmark child process on CPU (tiny): what the GPU call runs, minus the GPU."""
    (tag, argv), = gc.benchmark_commands("cpu", str(gc.DEFAULT_CONFIG), short=True, out=tmp_path)
    res = gc.run_benchmark(argv, tmp_path, tag, "cpu", timeout=300)
    assert res["returncode"] == 0, res["errors"]
    assert [r["workload"] for r in res["rows"]] == ["student", "kd_cached"] and res["kd_overhead"]["kd_cached_over_student"] > 0
    assert res["determinism"]["deterministic"] is True  # auto on CPU


def test_target_report_reads_the_benchmark_and_the_chain():
    bench = {"eager": {"rows": [{"workload": "teacher", "images_per_second": 40000.0},
                                {"workload": "kd_cached", "images_per_second": 31000.0},
                                {"workload": "qat", "images_per_second": 9000.0}],
                       "kd_overhead": {"kd_cached_over_student": 1.04}},
             "compiled": {"rows": [{"workload": "teacher", "images_per_second": 52000.0}], "kd_overhead": {}}}
    result = {"throughput": bench, "chain_completed": True, "chain_seconds": 310.0,
              "stages": {"check": {"models": {"teacher": {"accuracy": 0.957}, "student_int8": {"accuracy": 0.94}}}}}
    t = gc.target_report(result)
    assert t["teacher_images_per_second"] == {"target": 50000, "measured": 52000.0, "met": True}  # best of both runs
    assert t["kd_student_images_per_second"]["met"] and not t["qat_images_per_second"]["met"]
    assert t["kd_cached_overhead"]["met"] and not t["chain_seconds"]["met"]
    assert t["teacher_accuracy"]["met"] and not t["int8_accuracy"]["met"]
    assert gc.target_report({})["chain_seconds"] == {"target": 300, "measured": None, "met": None}
