"""Your device (issue 12): ORT-format files, the second-runtime portability check, ARM in the doctor, providers.

One tiny real chain (Fashion-MNIST subset, teacher -> distill -> qat -> export with ``export.ort_format``)
is shared by the ORT and portability tests; the doctor and provider tests need no run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import requires_fashion_mnist
from edgekd.config import config_from_dict
from edgekd.errors import ConfigError
from edgekd.hardware import int8_support, parse_cpuinfo_flags
from edgekd.io import sha256_file
from edgekd.pixels import to_float
from helpers import tiny_run_config

_ONE = {"epochs": 1, "lr": 0.05, "amp": "off", "max_steps_per_epoch": 3, "schedule": "cosine", "warmup_fraction": 0.0}

# /proc/cpuinfo of aarch64 boards, cut to what the doctor reads: a Cortex-A76 (Raspberry Pi 5: ARMv8.2, dot
# products), a Neoverse-V1 (Graviton3: i8mm, bf16) and a Cortex-A72 (Raspberry Pi 4: plain NEON).
A76 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""
NEOVERSE_V1 = A76.replace("asimddp", "asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp "
                                     "sve2 sveaes svei8mm svebf16 i8mm bf16 dgh rng")
A72 = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A real tiny run through export, with ORT-format files (about a minute on 2 busy cores)."""
    import edgekd

    cfg = tiny_run_config("ort", 16, _ONE, _ONE, {**_ONE, "lr": 0.002, "max_steps_per_epoch": 2})
    cfg["stages"] = ["teacher", "distill", "qat", "export"]
    cfg["export"].update(ort_format=True, ort_target_platform="arm")
    out = tmp_path_factory.mktemp("runs")
    run = edgekd.run(cfg, out=out)
    from edgekd.data import build_dataset

    bundle = build_dataset(config_from_dict(cfg).data, 0)
    return {"run": run, "images": to_float(bundle.test.images), "labels": bundle.test.labels}


@requires_fashion_mnist
def test_ort_files_are_recorded_and_give_the_onnx_top1(exported: dict) -> None:
    from edgekd.deploy.runtime.ort_format import compare_top1

    run = exported["run"]
    metrics = run.metrics("export")["ort_format"]
    for key, onnx_key in (("student_fp32_ort", "student_fp32"), ("student_int8_ort", "student_int8")):
        path = run.manifest.artifact("export", key)  # exists and matches its recorded sha256
        assert path.suffix == ".ort" and run.manifest.artifact_sha("export", key) == sha256_file(path)
        assert metrics[onnx_key]["top1_agreement"] >= 0.99 and metrics[onnx_key]["target_platform"] == "arm"
        # the target: on the whole test subset the .ort file scores the ONNX file's top-1 accuracy
        result = compare_top1(run.manifest.artifact("export", onnx_key), path, exported["images"], exported["labels"])
        assert result["images"] == len(exported["labels"]) == 64
        assert result["accuracy_ort"] == result["accuracy_onnx"], result
        assert result["top1_agreement"] == 1.0, result
    ops = run.manifest.artifact("export", "ort_operators").read_text()
    assert "# model.int8.ort" in ops and "ai.onnx;" in ops and "Conv" in ops  # the minimal-build operator list


@requires_fashion_mnist
def test_turning_ort_export_off_leaves_no_ort_file_behind(exported: dict, tmp_path: Path) -> None:
    """The re-run export stage no longer writes .ort files: the commit deletes the earlier ones (edgekd.staging)."""
    import shutil

    import edgekd
    from edgekd.deploy.runtime.ort_format import OPERATORS_FILE

    run_dir = shutil.copytree(exported["run"].run_dir, tmp_path / exported["run"].run_dir.name)
    old = sorted(p.name for p in run_dir.rglob("*.ort"))
    assert old == ["model.fp32.ort", "model.int8.ort"] and (run_dir / OPERATORS_FILE).is_file()
    run = edgekd.run(str(run_dir / "config.yaml"), overrides=["export.ort_format=false"], out=tmp_path, stages=["export"])
    assert run.run_dir == run_dir and "ort_format" not in run.metrics("export")
    assert not list(run_dir.rglob("*.ort")) and not (run_dir / OPERATORS_FILE).exists()
    assert run.manifest.artifact("export", "student_int8").is_file()


@requires_fashion_mnist
def test_portability_check_reports_agreement_or_a_stated_skip(exported: dict) -> None:
    from edgekd.deploy.runtime.portability import format_portability, portability_check

    run = exported["run"]
    files = {k: run.manifest.artifact("export", k) for k in ("student_fp32", "student_int8")}
    result = portability_check(files, exported["images"], exported["labels"], runtimes=("opencv", "openvino"))
    if importlib.util.find_spec("openvino") is None:
        assert result["openvino"] == {"skipped": result["openvino"]["skipped"]}
        assert "openvino is not installed" in result["openvino"]["skipped"] and "pip install" in result["openvino"]["skipped"]
    if importlib.util.find_spec("cv2") is None:
        pytest.skip("opencv-python-headless is not installed (pip install 'edgekd[portability]'; the dev extra has it)")
    cv = result["opencv"]["models"]
    # fp32: the same float math up to summation order; int8: OpenCV requantizes with its own rounding
    # (measured max |d logit| ~1e-3), so a near-tie image may flip: 0.95 leaves room for 3 of 64
    assert cv["student_fp32"]["top1_agreement"] == 1.0, cv
    assert cv["student_int8"]["top1_agreement"] >= 0.95, cv
    assert any("opencv: student_int8: top-1 agreement" in line for line in format_portability(result))


def test_arm_cpuinfo_is_read_and_explained() -> None:
    a76 = parse_cpuinfo_flags(A76)
    assert a76 is not None and {"asimd", "asimddp"} <= a76
    r = int8_support(a76, "aarch64")
    assert r["arch"] == "arm" and r["level"] == "ok" and r["isa"] == "asimddp" and "SDOT/UDOT" in r["text"]
    v1 = int8_support(parse_cpuinfo_flags(NEOVERSE_V1), "aarch64")
    assert v1["isa"] == "i8mm" and "bf16" in v1["text"] and "float (not int8)" in v1["text"]
    old = int8_support(parse_cpuinfo_flags(A72), "")  # no machine name: ARM is known by its asimd flag
    assert old["arch"] == "arm" and old["level"] == "warn" and "asimddp" in old["text"] and "AVX2" not in old["text"]
    x86 = int8_support(frozenset({"avx2", "fma"}), "x86_64")
    assert x86["arch"] == "x86" and "lacks VNNI" in x86["text"]


def test_doctor_says_what_int8_needs_on_arm() -> None:
    """The doctor's CPU finding and verdict come from int8_support: ARM words on ARM, never "AVX2 nor VNNI"."""
    from edgekd.deploy.doctor import rule_isa, verdict

    d = {"qdq": {"original": {"QuantizeLinear": 3, "DequantizeLinear": 5}}, "int8_kernels": {"QLinearConv": 2},
         "compute": {"Conv": {"total": 2, "int8": 2, "float": 0}}, "float_compute": [], "provider": "CPUExecutionProvider",
         "cpu": {"machine": "aarch64", "isa": {}, "int8": int8_support(parse_cpuinfo_flags(A72), "aarch64")}}
    finding = rule_isa(d)
    assert finding["level"] == "warn" and "dot-product" in finding["text"] and "VNNI" not in finding["text"]
    assert "the ARM CPU lacks dot-product instructions (asimddp)" in verdict(d)
    d["cpu"]["int8"] = int8_support(parse_cpuinfo_flags(A76), "aarch64")
    assert rule_isa(d)["level"] == "ok" and "ARM CPU has dot products (asimddp)" in verdict(d)


def test_providers_by_name() -> None:
    from edgekd.ort_providers import known_provider, resolve_provider

    assert known_provider("xnnpack") == "XnnpackExecutionProvider" and known_provider("CUDA") == "CUDAExecutionProvider"
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match=r"'foo' is not an onnxruntime execution provider; available here: .*CPU"):
        config_from_dict({"check": {"latency": {"provider": "foo"}}})
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match=r"'OpenVINOExecutionProvider' is not available.*available here: .*CPU") as e:
            resolve_provider("openvino")
        assert "onnxruntime-openvino" in str(e.value)
    # a known name loads (availability is a fact of the machine that measures, checked when sessions open)
    assert config_from_dict({"check": {"latency": {"provider": "openvino"}}}).check.latency.provider == "openvino"
