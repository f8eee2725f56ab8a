"""Does the ONNX file compute what the torch model computes? fp32: max |Δ logit|; int8: top-1 agreement."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..batching import map_batches
from ..errors import ParityError
from ..runtime.session import make_session, predict_logits


@torch.no_grad()
def torch_logits(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` (eval) on float32 NCHW [0, 1] ``images``, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = map_batches(lambda b: model(torch.from_numpy(np.ascontiguousarray(b)).to(device)).float().cpu().numpy(),
                      images, batch_size)
    model.train(was_training)
    return out


def parity_fp32(torch_model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                batch_sizes: Sequence[int] = (1, 64), tol: float = 1e-4) -> dict[str, Any]:
    """Max |Δ logit| between torch and onnxruntime per batch size; ``ParityError`` above ``tol``."""
    ref = torch_logits(torch_model, images)
    sess = make_session(onnx_path, threads=1)
    per_bs: dict[str, float] = {}
    worst: dict[str, Any] = {}
    for bs in batch_sizes:
        got = predict_logits(sess, images, bs)
        err = np.abs(got.astype(np.float64) - ref)
        per_bs[str(bs)] = float(err.max())
        if not worst or err.max() > worst["max_abs_diff"]:
            img, cls = np.unravel_index(int(err.argmax()), err.shape)
            worst = {"max_abs_diff": float(err.max()), "batch_size": bs, "image": int(img), "class": int(cls),
                     "torch": float(ref[img, cls]), "onnx": float(got[img, cls])}
    result = {"max_abs_diff": worst["max_abs_diff"], "per_batch_size": per_bs, "worst": worst,
              "images": int(len(images)), "tolerance": tol}
    if not worst["max_abs_diff"] <= tol:
        lines = ", ".join(f"batch {b}: {v:.3g}" for b, v in per_bs.items())
        raise ParityError(
            f"fp32 ONNX disagrees with torch: max |Δ logit| {worst['max_abs_diff']:.3g} > {tol:g} ({lines}); worst at "
            f"batch size {worst['batch_size']}, image {worst['image']}, class {worst['class']}: "
            f"torch {worst['torch']:.6g} vs onnx {worst['onnx']:.6g}",
            "run edgekd.export_onnx.find_divergence(model, path, images) to find the first diverging layer")
    return result


def parity_int8(qat_model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                min_agreement: float = 0.99, batch_size: int = 64) -> dict[str, Any]:
    """Top-1 agreement (and max |Δ logit|) of the INT8 file in onnxruntime vs the QAT model in torch.

    Below ``min_agreement`` raises ``ParityError`` that includes the divergence finder's verdict.
    """
    ref = torch_logits(qat_model, images)
    got = predict_logits(make_session(onnx_path, threads=1), images, batch_size)
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    result = {"agreement": agreement, "max_abs_diff": float(np.max(np.abs(got.astype(np.float64) - ref))),
              "images": int(len(images)), "min_agreement": min_agreement}
    if agreement < min_agreement:
        from .divergence import find_divergence

        where = find_divergence(qat_model, onnx_path, images[:32])
        raise ParityError(
            f"INT8 ONNX top-1 agrees with the QAT model on {agreement:.2%} of {len(images)} images "
            f"(< {min_agreement:.2%}); max |Δ logit| {result['max_abs_diff']:.3g}; divergence: {where['summary']}",
            "check that observers were frozen before export and that the file was not re-quantized")
    return result
