"""ORT format (``.ort``) files for ONNX Runtime Mobile, and the check that they predict like the ONNX file.

The conversion is onnxruntime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``, the
"fixed" optimization style): the graph is optimized once and saved in the flatbuffer format that
ORT Mobile's minimal build loads. ``target_platform`` picks the fusions baked into the file:
``arm`` (phones and boards) allows int8 QDQ fusions for ARM kernels and no x86 NCHWc layouts;
``amd64`` allows the x86 layouts. The tool also writes ``required_operators.config``, the operator
list a custom minimal ORT build (``--include_ops_by_config``) needs; it is kept beside the files.

Imports no torch.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError, ConfigError
from ...io import atomic_path
from ...validation import ORT_TARGET_PLATFORMS
from .session import make_session, onnx_logits


def convert_to_ort(onnx_path: Path, ort_path: Path, target_platform: str = "arm") -> dict[str, Any]:
    """Convert ``onnx_path`` to ``ort_path`` (written atomically); returns the operator config text and sizes."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    if target_platform not in ORT_TARGET_PLATFORMS:
        raise ConfigError(f"ORT target platform '{target_platform}' is not one of {', '.join(ORT_TARGET_PLATFORMS)}",
                          "set export.ort_target_platform to arm (phones, boards) or amd64 (x86 PCs)")
    src = Path(onnx_path)
    if not src.is_file():
        raise ArtifactError(f"ONNX model {src} does not exist", "run the export stage first")
    with tempfile.TemporaryDirectory(prefix="edgekd-ort-") as tmp:
        work = Path(tmp)
        shutil.copyfile(src, work / "model.onnx")  # the tool converts every .onnx in a folder: give it one
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):  # the tool prints progress; keep the run's log readable
                convert_onnx_models_to_ort(work / "model.onnx", output_dir=work / "out",
                                           optimization_styles=[OptimizationStyle.Fixed], target_platform=target_platform)
        except Exception as e:  # onnxruntime raises its own types; report them as a failed artifact
            raise ArtifactError(f"onnxruntime could not convert {src} to the ORT format: {e}",
                                "check the file loads in onnxruntime (edgekd doctor), then re-export") from e
        converted = sorted((work / "out").glob("*.ort"))  # the tool returns nothing: read what it wrote
        if len(converted) != 1:
            raise ArtifactError(f"the ORT converter wrote {[c.name for c in converted]} for {src}; expected one .ort "
                                f"file ({log.getvalue().strip().splitlines()[-1:] or 'no output'})",
                                f"run python -m onnxruntime.tools.convert_onnx_models_to_ort {src} to see why")
        with atomic_path(ort_path) as tmp_out:
            shutil.copyfile(converted[0], tmp_out)
        configs = sorted((work / "out").glob("*.config"))
        ops = configs[0].read_text() if configs else ""
    return {"file": Path(ort_path).name, "target_platform": target_platform, "size_bytes": Path(ort_path).stat().st_size,
            "optimization_style": "fixed", "required_operators": ops}


def compare_top1(onnx_path: Path, ort_path: Path, images: np.ndarray, labels: np.ndarray | None = None,
                 provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """Load both files in onnxruntime and compare their top-1 on ``images`` (float32 [0, 1] NCHW).

    Returns ``{"images", "top1_agreement", "max_abs_logit_diff", "accuracy_onnx", "accuracy_ort"}``
    (the accuracies only with ``labels``).
    """
    a = onnx_logits(make_session(onnx_path, provider=provider, threads=1), images)
    b = onnx_logits(make_session(ort_path, provider=provider, threads=1), images)
    pa, pb = a.argmax(1), b.argmax(1)
    out: dict[str, Any] = {"images": int(len(images)), "top1_agreement": float((pa == pb).mean()),
                           "max_abs_logit_diff": float(np.abs(a - b).max()) if len(a) else 0.0}
    if labels is not None:
        y = np.asarray(labels)
        out["accuracy_onnx"] = float((pa == y).mean())
        out["accuracy_ort"] = float((pb == y).mean())
    return out


ORT_FILES = {"student_fp32": "model.fp32.ort", "student_int8": "model.int8.ort"}
OPERATORS_FILE = "model.required_operators.config"


def write_ort_files(run_dir: Path, onnx_files: dict[str, Path], images: np.ndarray, labels: np.ndarray,
                    target_platform: str, min_agreement: float) -> tuple[dict[str, Path], dict[str, Any]]:
    """The export stage's ORT step: ``.ort`` twins of the student files, each checked against its ONNX file.

    Returns (artifacts ``{"<key>_ort": path, "ort_operators": path}``, metrics ``{key: {...}}``). A file
    whose top-1 agrees with the ONNX file on fewer than ``min_agreement`` of ``images`` raises ParityError.
    """
    from ...errors import ParityError
    from ...io import atomic_write_text

    artifacts: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    operators: list[str] = []
    for key, name in ORT_FILES.items():
        ort_path = Path(run_dir) / name
        info = convert_to_ort(onnx_files[key], ort_path, target_platform)
        operators.append(f"# {name}\n{info.pop('required_operators')}")
        info.update(compare_top1(onnx_files[key], ort_path, images, labels))
        if info["top1_agreement"] < min_agreement:
            raise ParityError(f"{name} agrees with {onnx_files[key].name} on top-1 for only "
                              f"{info['top1_agreement']:.2%} of {info['images']} images (need {min_agreement:.0%})",
                              "report it with both files attached; meanwhile set export.ort_format: false")
        artifacts[f"{key}_ort"] = ort_path
        metrics[key] = info
    ops_path = Path(run_dir) / OPERATORS_FILE
    atomic_write_text(ops_path, "\n".join(operators))
    artifacts["ort_operators"] = ops_path
    return artifacts, metrics


__all__ = ["ORT_FILES", "write_ort_files", "compare_top1", "convert_to_ort"]
