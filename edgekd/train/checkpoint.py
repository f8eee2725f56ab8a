"""Epoch checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture, and checks with a fix.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load`` never
has to unpickle an arbitrary object. RNG states are stored as tensors/lists for the same reason.
"""
from __future__ import annotations

import io
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_write_bytes

FORMAT_VERSION = 1


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (safe to keep while training continues)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ RNG


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states, weights_only-serializable."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------ save / load


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` into memory.

    Saving to a file name embeds that name (the zip archive's record prefix) in the bytes, so a
    temp file's random name made equal weights hash differently on every run; an in-memory buffer
    always uses the same prefix, so equal tensors give equal bytes and equal sha256.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash leaves the previous file (or none), never half of one."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    # fault point for the kill tests: the work folder is named after the stage (stages/<stage>/)
    fault = f"{Path(path).parent.name}:checkpoint-write:{payload.get('epoch')}"
    atomic_write_bytes(path, torch_bytes(payload), fault=fault)
    return path


# Errors torch.load raises for an unreadable, truncated or foreign file.
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError)
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\s+Please\b|\n|$)", re.S)
_UNSAFE_HINT = re.compile(r"weights_only|trusted source|trust the source|safe_globals", re.I)


def describe_load_error(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in words safe to show a user.

    torch's own message advises retrying with ``weights_only=False`` (or allow-listing globals),
    which would unpickle arbitrary code from the file; edgekd never passes that advice on, so only
    the concrete reason is kept (e.g. the unsupported Python object the file holds).
    """
    text = str(e).strip()
    if isinstance(e, EOFError) or not text:
        return f"{type(e).__name__}: the file is empty or ends early"
    if isinstance(e, pickle.UnpicklingError):
        m = _UNPICKLER_DETAIL.search(text)
        detail = m.group(1).strip() if m else "unsupported content"
        if _UNSAFE_HINT.search(detail):
            detail = "unsupported content"
        return ("it is not a plain tensor file: it holds Python objects other than tensors, or is not a torch file "
                f"at all ({detail})")
    first = text.splitlines()[0]
    first = first.split(". ")[0] if _UNSAFE_HINT.search(first) is None else "the file is not a valid torch archive"
    return f"{type(e).__name__}: {first[:200]}"


def load_tensors_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, without torch's pickle-protocol warnings (noise for a user)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def resume_fix(path: Path) -> str:
    return f"delete {path} to start this stage over, or run without --resume"


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load an epoch checkpoint (model, optimizer, RNG, epoch: what ``--resume`` needs) with ``weights_only=True``.

    Unreadable or foreign files raise CheckpointError. A deployable weights file is read with
    ``edgekd.models.weights.read_weights_file`` instead.
    """
    try:
        data = load_tensors_only(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist", "train without --resume first") from None
    except LOAD_ERRORS as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({describe_load_error(e)})",
                              resume_fix(path)) from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or "model" not in data:
        raise CheckpointError(f"{path} is not an edgekd epoch checkpoint (format {FORMAT_VERSION})", resume_fix(path))
    return data


def check_meta(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """The checkpoint must come from the same config: every differing key is named."""
    keys = sorted(set(saved) | set(expected))
    diff = [k for k in keys if saved.get(k) != expected.get(k)]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {_short(saved.get(k))} vs now {_short(expected.get(k))}" for k in diff)
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({detail})", resume_fix(path))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, fix: str) -> None:
    """The stored weights must fit ``model`` exactly; else CheckpointError listing (a few of) the missing,
    unexpected and mis-shaped keys. ``source`` names the file ("weights file x.pt"); ``fix`` is the advice.

    The one fit check: epoch checkpoints (engine resume) and weights files (edgekd.models.weights) both use it.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = [_listing(t, ks) for t, ks in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if ks]
        raise CheckpointError(f"{source} does not fit the {type(model).__name__} model: " + "; ".join(parts), fix)


_SHOW = 5  # keys listed per category in an error message


def _listing(title: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{title} ({len(keys)}): {', '.join(keys[:_SHOW])}{more}"
