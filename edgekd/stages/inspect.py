"""Diagnostics on a finished run that need its torch models (not a stage): ``edgekd divergence RUN``.

The divergence finder compares an exported file with the torch model it came from, layer by layer,
at the onnxruntime optimization level the check stage measures with; here both come from the run
folder: the INT8 file with the trained QAT model, or the FP32 file with the distilled student.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..errors import ConfigError
from ..manifest import Manifest
from .base import StageContext

MODELS = {"int8": "student_int8", "fp32": "student_fp32"}


def run_divergence(run_dir: str | Path, model: str = "int8", images: int = 32, threshold: float = 0.05,
                   optimization: str = "all") -> dict[str, Any]:
    """:func:`edgekd.exporting.find_divergence` on a run's exported ``model`` ("int8" or "fp32").

    ``images`` test images of the run (seeded, stratified) are compared; see ``find_divergence`` for
    the result. Bad arguments raise ConfigError; a missing or changed file ArtifactError.
    """
    import torch

    from ..deploy.sensitivity import eval_subset
    from ..exporting import find_divergence
    from ..pixels import to_float
    from .common import load_student
    from .qat import load_qat_student

    if model not in MODELS:
        raise ConfigError(f"unknown model '{model}'; valid: {', '.join(MODELS)}", "pass --model int8 or --model fp32")
    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}", "pass a positive number of test images")
    if not threshold > 0:
        raise ConfigError(f"--threshold must be > 0, got {threshold}", "pass a relative error such as 0.05")
    m = Manifest.load(run_dir)
    path = m.artifact("export", MODELS[model])
    if not isinstance(m.data.get("config"), dict):
        raise ConfigError(f"the manifest of {m.run_dir} records no config", "re-run the pipeline to rewrite it")
    ctx = StageContext(cfg=config_from_dict(m.data["config"]), run_dir=m.run_dir, manifest=m)
    cpu = torch.device("cpu")
    torch_model = load_qat_student(ctx, cpu) if model == "int8" else load_student(ctx, cpu).eval()
    x, _ = eval_subset(m.run_dir, images, m)
    result = find_divergence(torch_model, path, to_float(x), threshold=threshold, max_images=images,
                             optimization=optimization)
    result["file"] = path.name
    return result


def format_divergence(result: dict[str, Any], rows: int = 8) -> str:
    """The verdict, then the layers with the largest relative errors."""
    worst = sorted(result["layers"], key=lambda r: -r["relative_error"])[:rows]
    lines = [f"{result.get('file', 'model')}: {result['summary']}",
             f"largest relative errors ({result['observed']}, onnxruntime optimization '{result['optimization']}'):"]
    # ONNX node names: what edgekd sensitivity and qat.keep_float call the layers
    lines += [f"  #{r['index']:<3} {r['onnx_node']:<36} {r['relative_error']:.3g}" for r in worst]
    return "\n".join(lines)
