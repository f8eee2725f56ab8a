"""Precision chosen by the hardware, and the CUDA paths' decision logic, all testable on a CPU.

``resolve_amp`` is the one place precision is decided. CPU machines are played by injecting
``CpuFeatures``; a GPU by monkeypatching ``torch.cuda``. Nothing here needs a GPU: the tests that
do live in test_engine.py / test_data.py and skip with a reason where none exists.
"""
from __future__ import annotations

import os
import types

import pytest
import torch

import edgekd.train.distributed as D
from edgekd.config import config_from_dict, load_config
from edgekd.train.distributed import Precision, resolve_amp, resolve_device, seed_everything, wrap_ddp
from edgekd.environment import environment, training_precision
from edgekd.errors import ConfigError
from edgekd.hardware import CpuFeatures, _proc_cpuinfo_flags, _torch_flags, cpu_bf16_is_fast, detect_cpu_features, \
    onednn_allows, thread_settings

CPU = torch.device("cpu")
# The machines edgekd has met (shared/DESIGN.md), by the flags that matter here.
INTEL_AMX = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"})
AMD_EPYC = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
XEON_VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})  # no bf16 at all: emulated
AVX2_ONLY = frozenset({"avx2", "fma"})


def cpu(flags: frozenset[str], cap: str | None = None) -> CpuFeatures:
    return CpuFeatures(flags=flags, onednn_max_cpu_isa=cap)


# ---------------------------------------------------------------- the CPU rule


@pytest.mark.parametrize("flags, cap, fast", [
    (INTEL_AMX, None, True),
    (AMD_EPYC, None, True),
    (XEON_VNNI, None, False),
    (AVX2_ONLY, None, False),
    (frozenset(), None, False),
    (INTEL_AMX, "AVX2", False),  # the cap hides AMX and AVX512-BF16 from oneDNN: emulated
    (INTEL_AMX, "avx512_core_vnni", False),  # case-insensitive, like oneDNN
    (INTEL_AMX, "AVX512_CORE_BF16", True),  # AMX hidden, AVX512-BF16 still usable
    (frozenset({"amx_tile", "amx_bf16"}), "AVX512_CORE_BF16", False),  # AMX only, and hidden
    (AMD_EPYC, "AVX2_VNNI_2", False),  # not a superset of AVX512_CORE_BF16's bits
    (AMD_EPYC, "AVX512_CORE_AMX", True),  # a cap above the CPU's ISA changes nothing
    (INTEL_AMX, "ALL", True),
    (INTEL_AMX, "default", True),
    (INTEL_AMX, "AVX9000", False),  # unknown cap: speed unknown, stay fp32
])
def test_cpu_bf16_rule(flags, cap, fast):
    use, why = cpu_bf16_is_fast(cpu(flags, cap))
    assert use is fast and why.startswith("cpu: ") and why.endswith("bf16 autocast (measured x1.3-1.6 over fp32)" if fast else "fp32")
    if cap and not fast and (flags & {"amx_bf16", "avx512_bf16"}):
        assert "ONEDNN_MAX_CPU_ISA" in why  # the reason names what ruled bf16 out


def test_onednn_cap_is_a_bit_mask():
    assert onednn_allows(None, "AVX512_CORE_AMX") and onednn_allows("", "AVX512_CORE_BF16")
    assert onednn_allows("AVX512_CORE_AMX_FP16", "AVX512_CORE_AMX")
    assert onednn_allows("AVX10_1_512", "AVX512_CORE_BF16") and not onednn_allows("AVX10_1_512", "AVX512_CORE_AMX")
    assert onednn_allows("nonsense", "AVX512_CORE_BF16") is None


@pytest.mark.parametrize("flags, cap, dtype", [
    (INTEL_AMX, None, torch.bfloat16), (AMD_EPYC, None, torch.bfloat16),
    (XEON_VNNI, None, None), (INTEL_AMX, "AVX2", None),
])
def test_resolve_amp_auto_on_cpu_follows_the_features(flags, cap, dtype):
    p = resolve_amp("auto", CPU, cpu_features=cpu(flags, cap))
    assert p.dtype == dtype and not p.scaler and p.reason.startswith("amp auto, cpu: ")


def test_resolve_amp_on_and_off_on_cpu():
    for flags in (INTEL_AMX, XEON_VNNI):
        p = resolve_amp("on", CPU, cpu_features=cpu(flags))
        assert p == Precision(torch.bfloat16) and ("emulates" in p.reason) == (flags is XEON_VNNI)
        assert resolve_amp("off", CPU, cpu_features=cpu(flags)) == Precision()
    assert resolve_amp(True, "cpu", cpu_features=cpu(AMD_EPYC)).dtype == torch.bfloat16  # YAML bools
    assert not resolve_amp(False, "cpu", cpu_features=cpu(AMD_EPYC)).enabled
    assert resolve_amp(" Auto ", CPU, cpu_features=cpu(AMD_EPYC)).enabled
    for key in ("amp", "channels_last"):  # checked once, at config load; resolve_amp only asserts it
        with pytest.raises(ConfigError, match="valid: auto, on, off"):
            config_from_dict({"teacher_train": {key: "bf16"}})


def test_resolve_amp_on_this_machine_matches_the_rule():
    fast, why = cpu_bf16_is_fast(detect_cpu_features())
    p = resolve_amp("auto", CPU)
    assert p.enabled is fast and why in p.reason


def test_other_devices_stay_fp32():
    p = resolve_amp("on", torch.device("mps"))
    assert not p.enabled and "mps" in p.reason


def test_precision_record():
    assert Precision(torch.bfloat16, reason="a") == Precision(torch.bfloat16, reason="b")  # reason is not identity
    assert Precision().to_dict() == {"dtype": "float32", "grad_scaler": False, "reason": ""}
    assert Precision(torch.float16, scaler=True).name == "float16"


# ---------------------------------------------------------------- feature detection


def test_detect_reads_cap_and_flags(tmp_path, monkeypatch):
    f = detect_cpu_features({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert f.onednn_max_cpu_isa == "AVX2" and detect_cpu_features({}).onednn_max_cpu_isa is None
    assert f.torch_capability  # torch is imported here, so its capability is recorded
    if os.path.exists("/proc/cpuinfo") and f.source == "/proc/cpuinfo":
        assert f.flags == _proc_cpuinfo_flags()
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\nflags\t\t: other\n")
    assert _proc_cpuinfo_flags(str(fake)) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert _proc_cpuinfo_flags(str(tmp_path / "missing")) is None


def test_torch_probes_stand_in_for_proc_cpuinfo():
    """macOS/Windows have no /proc/cpuinfo: torch's cpuinfo probes give the flags; a broken probe counts as absent."""
    def boom() -> bool:
        raise RuntimeError("private API changed")

    fake = types.SimpleNamespace(cpu=types.SimpleNamespace(_is_amx_tile_supported=lambda: True,
                                                           _is_avx512_bf16_supported=boom))
    flags = _torch_flags(fake)
    assert flags == {"amx_tile", "amx_bf16"} and cpu_bf16_is_fast(cpu(flags))[0]


def test_features_record_is_json_ready():
    d = cpu(AMD_EPYC, "AVX2").to_dict()
    assert d["flags"]["avx512_bf16"] and not d["flags"]["amx_bf16"] and d["onednn_max_cpu_isa"] == "AVX2"


def test_thread_settings():
    t = thread_settings({"OMP_NUM_THREADS": "1"})
    assert t["OMP_NUM_THREADS"] == "1" and t["MKL_NUM_THREADS"] is None and t["torch_threads"] == torch.get_num_threads()


# ---------------------------------------------------------------- the manifest's environment block


def test_environment_records_precision_per_training_stage():
    cfg = load_config("configs/smoke.yaml")
    env = environment(cfg)
    fast = cpu_bf16_is_fast(detect_cpu_features())[0]
    assert set(env["precision"]) == {"teacher", "distill", "qat"}
    for stage, rec in env["precision"].items():
        assert rec["device"] == "cpu" and rec["reason"]
        if rec["amp"] == "off":
            assert rec["dtype"] == "float32"
        elif rec["amp"] == "auto":
            assert rec["dtype"] == ("bfloat16" if fast else "float32")
    assert env["cpu_features"]["flags"].keys() >= {"amx_bf16", "avx512_bf16"}
    assert "OMP_NUM_THREADS" in env["threads"] and "torch_threads" in env["threads"]
    assert "precision" not in environment()  # without a config there is no stage to describe


def test_environment_precision_for_an_unusable_device_is_recorded_not_raised(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("configs/smoke.yaml", ["device=cuda"])
    assert "no CUDA GPU" in training_precision(cfg)["error"]


# ---------------------------------------------------------------- CUDA decision logic, played on a CPU


def test_cuda_amp_picks_native_bf16_and_asks_without_emulation(monkeypatch):
    calls = []

    def supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return not including_emulation or True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for mode in ("auto", "on", True):
        p = resolve_amp(mode, torch.device("cuda", 0))
        assert p.dtype == torch.bfloat16 and not p.scaler and "native bf16" in p.reason
    assert calls and all(c is False for c in calls)  # emulated bf16 (pre-Ampere) must not count
    assert resolve_amp("off", "cuda") == Precision()


def test_cuda_amp_without_bf16_uses_fp16_and_a_grad_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    p = resolve_amp("auto", torch.device("cuda"))  # an emulating GPU (V100/T4): native answer is False
    assert p.dtype == torch.float16 and p.scaler and "GradScaler" in p.reason


def test_cuda_amp_with_an_older_torch_signature(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # no including_emulation argument
    assert resolve_amp("on", "cuda").dtype == torch.bfloat16


def test_cuda_device_placement_logic(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)  # torchrun: one GPU per local rank
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("CPU") == CPU


def test_cuda_seeding_sets_cublas_and_cudnn_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    used = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: used.append(a))
    seed_everything(0, deterministic=True, device=torch.device("cuda", 0))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark and not used
    seed_everything(0, deterministic=False, device=torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark  # fixed input sizes: cuDNN may pick its fastest kernels
    seed_everything(0, deterministic=True, device=CPU)
    assert used == [(True,)]  # the CPU path asks torch for deterministic kernels instead


def _fake_process_group(monkeypatch, world: int) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(D.dist, "is_available", lambda: True)
    monkeypatch.setattr(D.dist, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(D.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **k: calls.append(k))
    monkeypatch.setattr(D.atexit, "register", lambda fn: None)  # no real group to destroy at exit
    return calls


@pytest.mark.parametrize("device, backend", [(torch.device("cuda", 1), "nccl"), (CPU, "gloo")])
def test_process_group_backend_follows_the_device(monkeypatch, device, backend):
    calls = _fake_process_group(monkeypatch, world=2)
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pinned.append(d))
    assert D.init_distributed(device) is True
    assert calls == [{"backend": backend, "init_method": "env://"}]
    assert pinned == ([device] if device.type == "cuda" else [])  # nccl needs each rank on its own GPU first


@pytest.mark.parametrize("device, ids", [(torch.device("cuda", 1), [1]), (CPU, None)])
def test_ddp_wrapper_device_ids(monkeypatch, device, ids):
    calls = _fake_process_group(monkeypatch, world=2)
    calls.append({})  # "initialized"
    seen = {}

    class FakeDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            seen["device_ids"] = device_ids

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    assert isinstance(wrap_ddp(torch.nn.Linear(2, 2), device), FakeDDP) and seen["device_ids"] == ids
