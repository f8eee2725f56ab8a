"""Does the ONNX file compute what the torch model computes?

fp32: every logit within ``atol + rtol * max|logit of that image|`` (float rounding scales with
the logits, so an absolute bound alone fails on another CPU's kernels). int8: top-1 agreement on
the images that are not near-ties, plus logits within a bound derived from the quantization scales
(see :mod:`.qnoise`). A failure names the first diverging layer (the divergence finder).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..batching import map_batches
from ..progress import bar, track
from ..errors import ArtifactError, ParityError
from ..deploy.runtime.session import make_session, onnx_logits
from .qnoise import int8_noise_bounds

# Defaults shared with edgekd.config.ExportConfig (whose comments say why each has its value).
FP32_RTOL = 1e-4
FP32_ATOL = 1e-4


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


def fp32_bound(ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Per-image allowed |Δ logit|: ``atol + rtol * max_j |ref[i, j]|`` (shape [N, 1], broadcasts over classes).

    Per image, not per batch: each image's rounding error scales with its own logits, and a
    batch-wide max would let one large-logit image hide a wrong small-logit one.
    """
    return atol + rtol * np.max(np.abs(ref.astype(np.float64)), axis=1, keepdims=True)


def divergence_text(model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray) -> str:
    """The divergence finder's one-line verdict; never raises (a failure to map layers is reported instead)."""
    from .divergence import find_divergence

    try:
        return str(find_divergence(model, onnx_path, images[:32])["summary"])
    except (ArtifactError, RuntimeError, ValueError) as exc:
        return f"the divergence finder could not map layers ({exc})"


def _worst(ref: np.ndarray, got: np.ndarray, bound: np.ndarray, bs: int) -> dict[str, Any]:
    err = np.abs(got.astype(np.float64) - ref)
    ratio = err / bound
    rel = err / (np.max(np.abs(ref), axis=1, keepdims=True) + 1e-30)
    img, cls = np.unravel_index(int(ratio.argmax()), ratio.shape)
    return {"max_abs_diff": float(err.max()), "max_rel_diff": float(rel.max()), "max_ratio": float(ratio.max()),
            "batch_size": bs, "image": int(img),
            "class": int(cls), "torch": float(ref[img, cls]), "onnx": float(got[img, cls]),
            "bound": float(bound[img, 0]), "logit_scale": float(np.max(np.abs(ref[img])))}


def parity_fp32(torch_model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                batch_sizes: Sequence[int] = (1, 64), rtol: float = FP32_RTOL, atol: float = FP32_ATOL) -> dict[str, Any]:
    """Torch vs onnxruntime logits per batch size; ``ParityError`` where ``|Δ| > atol + rtol * max|logit|``.

    Returns ``max_abs_diff`` (kept for reports), ``max_rel_diff`` (|Δ| / the image's max |logit|),
    ``max_bound_ratio`` (worst |Δ| / allowed; ≤ 1 passes), ``per_batch_size`` (max |Δ| per batch size),
    ``worst`` (where the ratio peaks), ``rtol``, ``atol`` and ``images``.
    """
    ref = torch_logits(torch_model, images).astype(np.float64)
    bound = fp32_bound(ref, rtol, atol)
    sess = make_session(onnx_path, threads=1)
    per_bs: dict[str, float] = {}
    worst: dict[str, Any] = {}
    rel = 0.0
    for bs in track(batch_sizes, f"parity {Path(onnx_path).name}", unit="batch size"):
        w = _worst(ref, onnx_logits(sess, images, bs), bound, bs)
        per_bs[str(bs)] = w["max_abs_diff"]
        rel = max(rel, w["max_rel_diff"])
        if not worst or w["max_ratio"] > worst["max_ratio"]:
            worst = w
    result = {"max_abs_diff": max(per_bs.values()), "max_rel_diff": rel, "max_bound_ratio": worst["max_ratio"],
              "per_batch_size": per_bs, "worst": worst, "images": int(len(images)), "rtol": rtol, "atol": atol}
    if not worst["max_ratio"] <= 1.0:
        raise _fp32_error(torch_model, onnx_path, images, per_bs, worst, rtol, atol)
    return result


def _fp32_error(model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                per_bs: dict[str, float], worst: dict[str, Any], rtol: float, atol: float) -> ParityError:
    lines = ", ".join(f"batch {b}: {v:.3g}" for b, v in per_bs.items())
    where = divergence_text(model, onnx_path, images)
    return ParityError(
        f"fp32 ONNX disagrees with torch: |Δ logit| {worst['max_abs_diff']:.3g} > allowed {worst['bound']:.3g} "
        f"(= {atol:g} + {rtol:g} x max|logit| {worst['logit_scale']:.4g}) at batch size {worst['batch_size']}, "
        f"image {worst['image']}, class {worst['class']}: torch {worst['torch']:.6g} vs onnx {worst['onnx']:.6g} "
        f"(max |Δ| per batch size: {lines}); divergence: {where}",
        "the exported graph computes something else than the torch model: inspect the named layer in the ONNX file "
        "(its weights, its folded BatchNorm, the normalization before it), re-export with export.simplify: false to "
        "rule out onnxsim; if only the last bits differ on this CPU, raise export.fp32_rtol")


def parity_int8(qat_model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                min_agreement: float = 0.99, batch_size: int = 64, noise_steps: float = 3.0) -> dict[str, Any]:
    """The INT8 file in onnxruntime vs the QAT model in torch, robust to near-ties.

    The int8 kernels may round an activation one step (``scale``) away from torch's fake quant; the
    last layer turns that into a logit error of at most ``noise_steps * s * ||W_j||_1`` (``.qnoise``).
    Two checks, each on at least ``min_agreement`` of the images:

    - top-1 agreement on *decided* images, whose torch top-2 margin exceeds the margin bound
      (an image closer to a tie can flip without the file being wrong: counted as ``near_ties``);
    - every logit of an image within its per-class bound (``logits_within_bound``).

    ``agreement`` is the first fraction (key kept for reports), ``agreement_all`` the raw one.
    """
    with bar(3, f"parity {Path(onnx_path).name}", unit="step") as steps:  # torch, onnxruntime, noise bound
        ref = torch_logits(qat_model, images).astype(np.float64)
        steps.update(1)
        got = onnx_logits(make_session(onnx_path, threads=1), images, batch_size).astype(np.float64)
        steps.update(1)
        noise = int8_noise_bounds(qat_model, images[:1], noise_steps)
        steps.update(1)
    if noise["logit_bound"].shape[0] != ref.shape[1]:
        raise ArtifactError(f"the last layer {noise['layer']} has {noise['logit_bound'].shape[0]} outputs, the model "
                            f"{ref.shape[1]} logits", "end the model with a Linear (or 1x1 Conv) classifier layer")
    result = int8_agreement(ref, got, noise["logit_bound"], noise["margin_bound"])
    result.update({"min_agreement": min_agreement, "noise_steps": noise_steps, "last_layer": noise["layer"],
                   "last_input_scale": noise["input_scale"]})
    failed = [k for k in ("agreement", "logits_within_bound") if result[k] < min_agreement]
    if failed:
        raise _int8_error(qat_model, onnx_path, images, result, failed)
    return result


def int8_agreement(ref: np.ndarray, got: np.ndarray, logit_bound: np.ndarray, margin_bound: np.ndarray) -> dict[str, Any]:
    """Agreement statistics of int8 logits ``got`` vs torch ``ref`` given the noise bounds.

    ``logit_bound`` is per class [C]; ``margin_bound`` [C, C] bounds the change of ``logit_a - logit_b``.
    """
    n = len(ref)
    order = np.argsort(-ref, axis=1)
    top1, top2 = order[:, 0], order[:, 1]
    margin = ref[np.arange(n), top1] - ref[np.arange(n), top2]
    decided = margin > margin_bound[top1, top2]
    agree = got.argmax(1) == top1
    err = np.abs(got - ref)
    within = np.all(err <= logit_bound[None, :], axis=1)
    n_dec = int(decided.sum())
    return {"agreement": float(agree[decided].mean()) if n_dec else 1.0, "agreement_all": float(agree.mean()),
            "images": int(n), "decided_images": n_dec, "near_ties": int(n - n_dec),
            "near_tie_flips": int((~agree & ~decided).sum()), "logits_within_bound": float(within.mean()),
            "max_abs_diff": float(err.max()), "max_bound_ratio": float(np.max(err / logit_bound[None, :])),
            "logit_bound_max": float(logit_bound.max())}


def _int8_error(qat_model: torch.nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray,
                r: dict[str, Any], failed: list[str]) -> ParityError:
    where = divergence_text(qat_model, onnx_path, images)
    return ParityError(
        f"INT8 ONNX disagrees with the QAT model on {r['images']} images: top-1 agreement {r['agreement']:.2%} on the "
        f"{r['decided_images']} images whose top-2 margin exceeds the quantization noise ({r['near_ties']} near-ties "
        f"not counted), logits within the scale-derived bound on {r['logits_within_bound']:.2%} (max |Δ logit| "
        f"{r['max_abs_diff']:.3g}, {r['max_bound_ratio']:.3g}x the bound); each must be >= {r['min_agreement']:.2%} "
        f"(failed: {', '.join(failed)}); divergence: {where}",
        "re-export from the frozen QAT model (freeze observers before export) and do not re-quantize or edit the "
        "file; if a layer is named, compare its scales and int8 weights in the file with the QAT model's")
