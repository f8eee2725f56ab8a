"""CPU features that decide precision, and the rule that turns them into "bf16 is fast here".

Imports no torch (the manifest's environment block uses it on the deploy side too); when torch is
already imported, its view of the CPU is added for the record.

Why a feature rule and not a timing probe: a probe on a shared 2-core machine is noisy, and a
precision that flips with the load would change the trained weights from one run to the next. The
rule below is backed by measurements (ResNet-18 train steps, 28x28, batch 128, channels_last):
bf16 autocast is x1.4 faster with AMX (Intel) and x1.3-1.6 with AVX512-BF16 (AMD EPYC), and slower
than fp32 where neither exists, because oneDNN then emulates bf16 (benchmarks/amp_probe.py
measures it on any machine).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

# oneDNN's cpu_isa values are bit masks: a cap admits an ISA when it holds all of the ISA's bits
# (oneDNN dnnl_cpu_isa_t). AVX2_VNNI_2 has bf16 conversions but not AVX-512 BF16's dot products.
ONEDNN_ISA_BITS: dict[str, int] = {
    "SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF, "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF, "AVX512_CORE_AMX_FP16": 0x1FEF,
}
NO_CAP = ("", "ALL", "DEFAULT")  # ONEDNN_MAX_CPU_ISA values that leave every ISA available

# CPU flags (Linux /proc/cpuinfo names) that decide or explain the precision choice.
PRECISION_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


@dataclass(frozen=True)
class CpuFeatures:
    """What the precision rule looks at; tests build one by hand to play any machine."""

    flags: frozenset[str] = field(default_factory=frozenset)
    onednn_max_cpu_isa: str | None = None  # the ONEDNN_MAX_CPU_ISA environment variable, as set
    torch_capability: str | None = None  # torch.backends.cpu.get_cpu_capability(), for the record
    source: str = "injected"  # where ``flags`` came from: /proc/cpuinfo, torch (cpuinfo), injected

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every precision flag as a bool, plus the ISA cap and torch's capability."""
        return {
            "flags": {f: f in self.flags for f in PRECISION_FLAGS},
            "onednn_max_cpu_isa": self.onednn_max_cpu_isa,
            "torch_cpu_capability": self.torch_capability,
            "source": self.source,
        }


def parse_cpuinfo_flags(text: str) -> frozenset[str] | None:
    """The first ``flags`` (x86) or ``Features`` (aarch64) line of /proc/cpuinfo text, or None."""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return None


def _proc_cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU flags of /proc/cpuinfo (Linux, x86 or ARM), or None where there are none."""
    try:
        with open(path) as fh:
            return parse_cpuinfo_flags(fh.read())
    except OSError:
        return None


def _torch_flags(torch: Any) -> frozenset[str]:
    """Flags from torch's cpuinfo probes: works where /proc/cpuinfo does not (macOS, Windows)."""
    probes = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "avx512f": "_is_avx512_supported", "avx512_vnni": "_is_vnni_supported", "avx2": "_is_avx2_supported"}
    flags = set()
    for flag, name in probes.items():
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                flags.add(flag)
        except Exception:  # a private probe may change between torch releases: treat as absent
            pass
    if "amx_tile" in flags:
        flags.add("amx_bf16")  # every AMX CPU so far (Sapphire Rapids on) has AMX-BF16 with AMX-TILE
    return frozenset(flags)


def _torch_capability(torch: Any) -> str | None:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch or a build without the query
        return None


def detect_cpu_features(environ: dict[str, str] | None = None) -> CpuFeatures:
    """This machine's features: /proc/cpuinfo flags (else torch's probes), ONEDNN_MAX_CPU_ISA, torch's capability.

    torch is consulted only when already imported, so the deploy side stays torch-free.
    """
    env = os.environ if environ is None else environ
    torch = sys.modules.get("torch")
    flags, source = _proc_cpuinfo_flags(), "/proc/cpuinfo"
    if flags is None:
        flags, source = (_torch_flags(torch), "torch") if torch is not None else (frozenset(), "unknown")
    cap = env.get("ONEDNN_MAX_CPU_ISA") or None
    return CpuFeatures(flags=flags, onednn_max_cpu_isa=cap,
                       torch_capability=_torch_capability(torch) if torch is not None else None, source=source)


def onednn_allows(cap: str | None, isa: str) -> bool | None:
    """Whether ONEDNN_MAX_CPU_ISA=``cap`` lets oneDNN use ``isa``; None for a cap oneDNN does not know."""
    name = (cap or "").strip().upper()
    if name in NO_CAP:
        return True
    bits = ONEDNN_ISA_BITS.get(name)
    if bits is None:
        return None
    need = ONEDNN_ISA_BITS[isa]
    return bits & need == need


def cpu_bf16_is_fast(features: CpuFeatures) -> tuple[bool, str]:
    """(use bf16 autocast on this CPU?, why): yes only with AMX-BF16 or AVX512-BF16 that oneDNN may use."""
    native = [(flag, isa) for flag, isa in (("amx_bf16", "AVX512_CORE_AMX"), ("avx512_bf16", "AVX512_CORE_BF16"))
              if flag in features.flags]
    if not native:
        return False, "cpu: no AMX-BF16 or AVX512-BF16, so bf16 would be emulated (slower than fp32): fp32"
    cap = features.onednn_max_cpu_isa
    for flag, isa in native:
        allowed = onednn_allows(cap, isa)
        if allowed is None:
            return False, f"cpu: ONEDNN_MAX_CPU_ISA={cap} is not an ISA edgekd knows, so bf16 speed is unknown: fp32"
        if allowed:
            capped = f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else ""
            return True, f"cpu: {flag} usable by oneDNN{capped}: bf16 autocast (measured x1.3-1.6 over fp32)"
    have = ", ".join(flag for flag, _ in native)
    return False, f"cpu: {have} present but ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off it, so bf16 would be emulated: fp32"


# aarch64 /proc/cpuinfo features that decide int8 speed in onnxruntime's MLAS kernels.
ARM_INT8_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


def is_arm(flags: frozenset[str], machine: str = "") -> bool:
    """aarch64: by the machine name, else by ARM-only features (``asimd``) in the flags."""
    return machine.lower() in ("aarch64", "arm64") or "asimd" in flags


def int8_support(flags: frozenset[str], machine: str = "") -> dict[str, str]:
    """What this CPU offers int8 inference: ``{"level": ok|warn, "arch": x86|arm, "isa", "phrase", "text"}``.

    x86: VNNI (AVX-512 or AVX) makes an int8 dot product one instruction; AVX2 emulates it. aarch64:
    ``asimddp`` (ARMv8.2 SDOT/UDOT) is what onnxruntime's int8 GEMMs need to beat fp32 clearly, ``i8mm``
    (ARMv8.6 SMMLA/UMMLA) is faster still; plain NEON (``asimd`` only, e.g. Cortex-A53/A72) widens
    8-bit products to 16 bits, so INT8 gains mostly size. ``bf16`` speeds float, not int8, GEMMs.
    """
    if is_arm(flags, machine):
        have = [f for f in ARM_INT8_FLAGS if f in flags]
        extra = " It also has bf16, which speeds float (not int8) math." if "bf16" in flags else ""
        if "i8mm" in flags:
            return {"level": "ok", "arch": "arm", "isa": "i8mm", "phrase": "the ARM CPU has i8mm and dot products",
                    "text": "The ARM CPU has i8mm (SMMLA/UMMLA) and dot-product instructions: onnxruntime's int8 "
                            f"matrix kernels use them, so INT8 should be clearly faster than fp32.{extra}"}
        if "asimddp" in flags:
            return {"level": "ok", "arch": "arm", "isa": "asimddp", "phrase": "the ARM CPU has dot products (asimddp)",
                    "text": "The ARM CPU has the dot-product instructions (asimddp: SDOT/UDOT, ARMv8.2): int8 dot "
                            f"products are single instructions; i8mm (ARMv8.6) would be faster still.{extra}"}
        return {"level": "warn", "arch": "arm", "isa": "neon" if "asimd" in flags else "none",
                "phrase": "the ARM CPU lacks dot-product instructions (asimddp), which INT8 needs to be fast",
                "text": "The ARM CPU lacks the dot-product instructions (no asimddp in /proc/cpuinfo; features: "
                        f"{', '.join(have) or 'none listed'}): INT8 needs ARMv8.2 dot products (asimddp) or i8mm to be "
                        "clearly faster than fp32; with plain NEON it gains mostly size (4x smaller)."}
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        kind = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI"
        amx = " It also has AMX (amx_int8)." if "amx_int8" in flags else ""
        return {"level": "ok", "arch": "x86", "isa": kind, "phrase": f"the CPU has {kind}",
                "text": f"The CPU has {kind}: int8 dot products are single instructions.{amx}"}
    if "avx2" in flags:
        return {"level": "warn", "arch": "x86", "isa": "AVX2", "phrase": "the CPU has AVX2 but no VNNI",
                "text": "The CPU lacks VNNI: int8 dot products are emulated with AVX2 (pmaddubsw + pmaddwd), "
                        "still faster than fp32 but by less."}
    return {"level": "warn", "arch": "x86" if flags else "unknown", "isa": "none",
            "phrase": "the CPU has neither AVX2/VNNI nor ARM dot products",
            "text": "The CPU reports neither AVX2 nor VNNI (x86) nor dot-product instructions (ARM asimddp): "
                    "int8 kernels may not beat fp32 here."}


def thread_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Thread counts that shape CPU speed: the OMP/MKL variables and, when torch is imported, its pools."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {k: env.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    return out


__all__ = ["ARM_INT8_FLAGS", "CpuFeatures", "ONEDNN_ISA_BITS", "PRECISION_FLAGS", "cpu_bf16_is_fast",
           "detect_cpu_features", "int8_support", "is_arm", "onednn_allows", "parse_cpuinfo_flags", "thread_settings"]
