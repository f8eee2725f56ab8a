"""Devices and torch.distributed: which device and precision to train with, seeding, and the DDP plumbing.

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; everything here reads
them, so loaders can be sharded before the process group exists. Outside torchrun every helper
answers as a single process (rank 0 of 1) and no collective is ever called.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..validation import SWITCHES
from ..hardware import CpuFeatures, cpu_bf16_is_fast, detect_cpu_features


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (maybe single-process) run."""

    is_distributed: bool
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer",
                          f"unset {name} or launch with torchrun, which sets it") from None


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size): from the process group when it exists, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def distributed_context() -> DistContext:
    """The current process's rank, world size and local rank."""
    rank, world = rank_and_world()
    return DistContext(is_distributed=world > 1, rank=rank, world_size=world, local_rank=_env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    return distributed_context().is_main


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device.

    ``auto`` and ``cuda`` pick ``cuda:LOCAL_RANK`` under torchrun, so each process gets its own GPU.
    Asking for CUDA where there is none is a ConfigError, not a late crash.
    """
    spec = (spec or "auto").strip().lower()
    local = distributed_context().local_rank
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N", "set device to one of those")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise ConfigError(
            f"device {spec!r} was requested but no CUDA GPU is usable (torch {torch.__version__}, {build})",
            "set device: cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA build of torch",
        )
    n = torch.cuda.device_count()
    idx = int(index) if index else local
    if idx >= n:
        raise ConfigError(f"device {spec!r} does not exist: this machine has {n} CUDA device(s)",
                          f"use cuda:0 .. cuda:{n - 1}, or cuda / auto")
    return torch.device("cuda", idx)


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    Idempotent; returns whether the run is distributed. The group is destroyed at interpreter exit.
    """
    ctx = distributed_context()
    if not ctx.is_distributed:
        return False
    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed",
                          "launch a single process, or install a torch build with distributed support")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish_distributed() -> None:
    """Leave the process group together: a barrier, then ``destroy_process_group`` on every rank.

    Call it where every rank has finished its work (the pipeline does at its end). Without the
    barrier a rank that finishes first tears gloo down while its peer still writes files, and under
    load gloo's teardown then aborted it ("terminate called without an active exception", SIGABRT).
    The atexit fallback cannot take a barrier: after an error the peers are elsewhere.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all ranks (identity outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_strided(local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble rows computed rank by rank: rank r holds rows ``r, r + world, r + 2*world, ...`` of ``total``.

    Every rank gets the whole ``[total, ...]`` tensor (on ``local``'s device), in row order. The
    shards may differ in length by one; they are padded to equal length for ``all_gather`` (which
    needs equal shapes) and the padding is dropped. Outside a process group ``local`` is returned.
    """
    rank, world = rank_and_world()
    if not (dist.is_available() and dist.is_initialized()) or world == 1:
        assert local.shape[0] == total, f"a single process must hold all {total} rows, got {local.shape[0]}"
        return local
    per_rank = -(-total // world)
    assert local.shape[0] == len(range(rank, total, world)), "rank r must hold rows r::world"
    padded = local.new_zeros((per_rank, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    out = local.new_empty((total, *local.shape[1:]))
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))]
    return out


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running stats) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step of an epoch each rank
    holds stats from its own last batch; syncing before validation and checkpointing keeps every
    rank's model identical.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when in a process group; else ``model`` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ------------------------------------------------------------------ precision and seeding


@dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means full fp32; ``scaler`` is the fp16 GradScaler.

    ``reason`` says why this precision was picked (for the manifest); it takes no part in equality.
    """

    dtype: torch.dtype | None = None
    scaler: bool = False
    reason: str = field(default="", compare=False)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        """``float32`` | ``bfloat16`` | ``float16``: what the manifest records."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.name, "grad_scaler": self.scaler, "reason": self.reason}

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def _amp_mode(mode: str | bool) -> str:
    """Normalize ``amp`` (YAML may hand a bool for on/off); config load (edgekd.validation) checked the value."""
    if isinstance(mode, bool):
        return "on" if mode else "off"
    mode = str(mode).strip().lower()
    assert mode in SWITCHES, f"amp {mode!r} is not one of {SWITCHES}"
    return mode


def cuda_bf16_supported() -> bool:
    """Native bf16 on the current GPU (Ampere and later).

    torch >= 2.4 answers True for bf16 *emulated* on older GPUs unless asked not to; emulated bf16 is
    slower than fp16, so ask for native support (older torch has no such argument).
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def _cuda_precision(mode: str) -> Precision:
    if cuda_bf16_supported():
        return Precision(torch.bfloat16, scaler=False,
                         reason=f"cuda, amp {mode}: native bf16 (same range as fp32, no GradScaler needed)")
    return Precision(torch.float16, scaler=True,
                     reason=f"cuda, amp {mode}: no native bf16 on this GPU, so fp16 with a GradScaler against underflow")


def _cpu_precision(mode: str, cpu_features: CpuFeatures | None) -> Precision:
    fast, why = cpu_bf16_is_fast(cpu_features if cpu_features is not None else detect_cpu_features())
    if mode == "on":  # an explicit request wins, even where bf16 is emulated; the reason says so
        note = "" if fast else " (requested; this CPU emulates bf16, amp auto would pick fp32)"
        return Precision(torch.bfloat16, scaler=False, reason=f"cpu, amp on: bf16 autocast{note}")
    return Precision(torch.bfloat16, reason=f"amp auto, {why}") if fast else Precision(reason=f"amp auto, {why}")


def resolve_amp(mode: str | bool, device: torch.device | str,
                cpu_features: CpuFeatures | None = None) -> Precision:
    """``auto`` | ``on`` | ``off`` (or a bool) on ``device`` -> Precision: the one place precision is decided.

    - off: fp32 everywhere.
    - CUDA, auto or on: bf16 autocast where the GPU has native bf16 (no scaler needed), else fp16 +
      GradScaler.
    - CPU, auto: bf16 autocast only where it is faster than fp32, i.e. the CPU has AMX-BF16 or
      AVX512-BF16 and ONEDNN_MAX_CPU_ISA lets oneDNN use it (edgekd.hardware.cpu_bf16_is_fast);
      else fp32. CPU, on: bf16 autocast regardless.
    - other devices (mps, ...): fp32, never measured there.

    ``cpu_features`` replaces this machine's (tests play other CPUs with it); the CUDA branch
    reads ``torch.cuda.is_bf16_supported``, which tests may monkeypatch.
    """
    mode = _amp_mode(mode)
    device = torch.device(device)
    if mode == "off":
        return Precision(reason="amp off: fp32")
    if device.type == "cuda":
        return _cuda_precision(mode)
    if device.type == "cpu":
        return _cpu_precision(mode, cpu_features)
    return Precision(reason=f"{device.type}: autocast not supported by edgekd here: fp32")


def resolve_channels_last(mode: str, device: torch.device) -> bool:
    """``auto`` turns channels_last on for CPU and CUDA (measured +45% for MobileNetV2 on the AMX CPU)."""
    assert mode in SWITCHES, f"channels_last {mode!r} is not one of {SWITCHES} (checked at config load)"
    return mode == "on" or (mode == "auto" and device.type in ("cpu", "cuda"))


@dataclass(frozen=True)
class Determinism:
    """Whether training picks reproducible kernels, and why (recorded in the manifest's environment)."""

    enabled: bool
    reason: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"deterministic": self.enabled, "cudnn_benchmark": not self.enabled, "reason": self.reason}


def resolve_deterministic(mode: str | bool, device: torch.device | str) -> Determinism:
    """``auto`` | ``on`` | ``off`` (or a bool) on ``device`` -> Determinism: the one place it is decided.

    - auto on CPU: on. Deterministic CPU kernels cost nothing measurable here and make a resumed
      run bit-exact, which the kill/resume tests rely on.
    - auto on CUDA: off, so ``cudnn.benchmark`` picks the fastest convolution per shape (the
      shapes are fixed: drop_last batches) and TF32 matmuls are allowed; runs then repeat to float
      rounding, not bit for bit.
    - on / off: as asked, on any device.
    """
    mode = _amp_mode(mode)  # same switch spelling as amp (YAML true/false arrive as on/off)
    kind = torch.device(device).type
    if mode != "auto":
        return Determinism(mode == "on", f"deterministic {mode}: as configured ({kind})")
    if kind == "cuda":
        return Determinism(False, "deterministic auto on cuda: off, cudnn.benchmark on (fastest kernels; "
                                  "results repeat to float rounding, not bitwise)")
    return Determinism(True, f"deterministic auto on {kind}: on (reproducible kernels, bit-exact resume)")


def resolve_compile(mode: str | bool, device: torch.device | str) -> bool:
    """``auto`` | ``on`` | ``off``: whether the engine wraps the training model in ``torch.compile``.

    auto compiles on CUDA only: there the step is launch-bound and fusing kernels pays back the
    compile time (tens of seconds) within an epoch; on a CPU the inductor's C++ build costs more than
    a short CPU schedule gains, so the CPU path stays eager unless ``on`` is asked for.
    """
    mode = _amp_mode(mode)
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def seed_everything(seed: int, deterministic: bool | str = True, device: torch.device | None = None) -> None:
    """Seed python, numpy and torch; with ``deterministic``, pick reproducible kernels.

    ``deterministic`` is a bool or a config switch (``auto`` | ``on`` | ``off``, see
    :func:`resolve_deterministic`). CPU: ``torch.use_deterministic_algorithms(True, warn_only=True)``.
    CUDA: deterministic cuDNN and ``CUBLAS_WORKSPACE_CONFIG`` (it only takes effect if cuBLAS was not
    used before this call); not deterministic on CUDA: ``cudnn.benchmark`` and TF32 matmuls.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    is_cuda = device is not None and device.type == "cuda"
    if isinstance(deterministic, str):
        deterministic = resolve_deterministic(deterministic, device or torch.device("cpu")).enabled
    if deterministic:
        if is_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        else:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif is_cuda:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts (QAT, the heads); cuDNN convs already are
    else:
        torch.use_deterministic_algorithms(False)  # undo an earlier deterministic stage in this process
