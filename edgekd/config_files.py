"""The files a config names by path, hashed for the stage fingerprints (``StageSpec.files``).

A path in the config does not change when the file behind it is retrained or rewritten in place, so
a stage's fingerprint also holds the sha256 of each file it reads by path: weights files (or the teacher
of a run folder given as weights), TorchScript archs (``torchscript:PATH``), the QAT stage's
sensitivity ranking, and the check stage's mCE reference run (its check metrics). Replace one, and the
stages that read it re-run instead of reporting results of the old file.

Torch-free (the pipeline's ground floor). A name that is not a file (``resnet18:DEFAULT``, ``timm:…``), or
a path that does not exist, contributes nothing: the stage itself loads it, or reports it missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .arch_names import split_arch
from .config import stable_hash
from .errors import ConfigError
from .io import sha256_file
from .manifest import Manifest
from .sensitivity_file import SENSITIVITY_FILE
from .stage_specs import config_value


def _existing_file(path: Path) -> Optional[str]:
    return sha256_file(path) if path.is_file() else None


def _weights(path: Path) -> Optional[str]:
    """A weights file's sha256, or the teacher a run folder's manifest records (verified when loaded)."""
    if path.is_dir():
        return Manifest.load(path, must_exist=False).artifact_sha("teacher", "weights")
    return _existing_file(path)


def _sensitivity(path: Path) -> Optional[str]:
    """``qat.sensitivity``: a ``sensitivity.json``, or a run folder holding one."""
    return _existing_file(path / SENSITIVITY_FILE if path.is_dir() else path)


def _reference_run(path: Path) -> Optional[str]:
    """``check.robustness.reference_run``: the hash of that run's check metrics (its mCE reference)."""
    entry = Manifest.load(path, must_exist=False).stage("check")
    return stable_hash(entry["metrics"]) if entry and "metrics" in entry else None


# the kind of file behind each config key a StageSpec may list in ``files`` (an arch: its TorchScript file)
HASHERS: dict[str, Callable[[Path], Optional[str]]] = {
    "weights": _weights, "arch": _existing_file, "sensitivity": _sensitivity, "reference_run": _reference_run,
}


def named_paths(cfg: Any, keys: tuple[str, ...]) -> Iterator[tuple[str, str, Path]]:
    """``(name, kind, path)`` of each file or folder the config keys name; a list of models
    (``distill.teachers``) gives each element's weights and arch; an arch counts only as ``torchscript:PATH``."""
    for key in keys:
        value = config_value(cfg, key)
        named = ([(f"{key}[{i}].{kind}", kind, getattr(m, kind)) for i, m in enumerate(value) for kind in ("weights", "arch")]
                 if isinstance(value, (list, tuple)) else [(key, key.rsplit(".", 1)[-1], value)])
        for name, kind, v in named:
            if not v:
                continue
            if kind == "arch":
                source, v = split_arch(str(v))
                if source != "torchscript":
                    continue
            yield name, kind, Path(str(v)).expanduser()


def refuse_paths_inside_the_run(cfg: Any, keys: tuple[str, ...], run_dir: Path) -> None:
    """ConfigError when a file the config names lies in the run's own folder: a stage would rewrite what it
    reads (with its new fingerprint inside), so the run would never be up to date — and a run is no mCE
    reference for itself."""
    own = run_dir.expanduser().resolve()
    for name, _, path in named_paths(cfg, keys):
        resolved = path.resolve()
        if resolved == own or own in resolved.parents:
            raise ConfigError(f"{name} ({path}) is inside this run's own folder {run_dir}: the run would rewrite "
                              "what it reads and never be up to date",
                              f"copy it out of {run_dir} (e.g. cp {path} {run_dir.parent / (run_dir.name + '_' + path.name)}) "
                              f"and point {name} there, or give this run another name")


def config_file_inputs(cfg: Any, keys: tuple[str, ...]) -> dict[str, str]:
    """``{"file:<name>": sha256}`` of each file the config keys name (``StageSpec.files``), for the stage's
    fingerprint and its manifest ``inputs``; the prefix keeps them apart from the stage-artifact inputs
    (``teacher.weights`` there is the teacher stage's file)."""
    out: dict[str, str] = {}
    for name, kind, path in named_paths(cfg, keys):
        sha = HASHERS[kind](path)
        if sha is not None:
            out[f"file:{name}"] = sha
    return out
