"""Robustness evaluation of one model: corruption, adversarial, calibration, OOD.

``evaluate_robustness`` produces the ``robustness`` sub-dict of the check metrics schema
(docs/ARCHITECTURE.md). The model under test is a numpy ``predict_fn(images) -> logits``
(an onnxruntime session), so the deployed INT8 file itself is measured; an optional torch
model adds white-box PGD/FGSM and is the source of transfer attacks. torch is imported only
when a torch model is given, so the ONNX-only path runs where torch is not installed.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Optional

import numpy as np

from ..batching import map_batches
from ..config import RobustnessEvalConfig
from ..errors import ConfigError
from ..pixels import to_float
from ..progress import track
from .blackbox import square_attack
from .corruptions import CORRUPTIONS, apply_corruption
from .metrics import (auroc, ece, energy_score, fit_temperature, mce, msp_score, nll, reliability, softmax,
                      temperature_at_bound)
from .ood import make_ood

PredictFn = Callable[[np.ndarray], np.ndarray]


def eps_key(epsilon: float) -> str:
    """Dictionary key of an epsilon in the metrics schema, e.g. ``0.0314``."""
    return f"{epsilon:.4f}"


def _seed(seed: int, *parts: object) -> np.random.Generator:
    # one independent stream per (seed, name, severity): results do not depend on list order
    return np.random.default_rng([seed] + [zlib.crc32(str(p).encode()) for p in parts])


def predict_fn_logits(predict_fn: PredictFn, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``predict_fn`` over ``images`` in batches, as float32 [N, K]."""
    return map_batches(lambda batch: np.asarray(predict_fn(batch), dtype=np.float32), images, batch_size)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


# ------------------------------------------------------------------ sections


def corruption_accuracy(
    predict_fn: PredictFn, images: np.ndarray, labels: np.ndarray, names: list[str], severities: list[int], seed: int,
    batch_size: int = 256, desc: str = "robustness",
) -> dict[str, Any]:
    """Accuracy per corruption and severity, plus the errors mCE needs (``desc`` labels the progress bar)."""
    clean_acc = _accuracy(predict_fn_logits(predict_fn, images, batch_size), labels)
    by_corruption: dict[str, list[float]] = {name: [] for name in names}
    for name, s in track([(n, s) for n in names for s in severities], f"{desc}: corruptions", unit="set"):
        corrupted = apply_corruption(name, images, s, _seed(seed, name, s))
        by_corruption[name].append(_accuracy(predict_fn_logits(predict_fn, corrupted, batch_size), labels))
    accs = [a for v in by_corruption.values() for a in v]
    return {
        "mean_accuracy": float(np.mean(accs)) if accs else float("nan"),
        "clean_accuracy": clean_acc,
        "severities": list(severities),
        "by_corruption": by_corruption,
        "clean_error": 1.0 - clean_acc,
        "corruption_errors": {k: [1.0 - a for a in v] for k, v in by_corruption.items()},
    }


def calibration(
    test_logits: np.ndarray, test_labels: np.ndarray,
    val_logits: Optional[np.ndarray], val_labels: Optional[np.ndarray],
    temperature_scaling: bool, n_bins: int = 15,
) -> dict[str, Any]:
    """ECE and reliability on the test logits; temperature fitted on validation logits when given."""
    probs = softmax(test_logits)
    out: dict[str, Any] = {
        "ece": ece(probs, test_labels, n_bins),
        "nll": nll(test_logits, test_labels),
        "ece_temperature_scaled": None,
        "nll_temperature_scaled": None,
        "temperature": None,
        "reliability": reliability(probs, test_labels, n_bins),
    }
    if temperature_scaling and val_logits is not None and val_labels is not None:
        t = fit_temperature(val_logits, val_labels)
        out["temperature"] = t
        if temperature_at_bound(t):  # no calibration to report: the split cannot fit T (the export refuses it too)
            out["temperature_at_search_bound"] = True
        else:
            out["ece_temperature_scaled"] = ece(softmax(test_logits, t), test_labels, n_bins)
            out["nll_temperature_scaled"] = nll(test_logits, test_labels, t)
    return out


def ood_detection(
    predict_fn: PredictFn, images: np.ndarray, in_logits: np.ndarray, names: list[str], seed: int,
    folder: Optional[str] = None, batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """AUROC of MSP and energy scores separating ``images`` from each outlier set."""
    out = {}
    for name in names:
        outliers = make_ood(name, images, _seed(seed, "ood", name), folder=folder)
        z = predict_fn_logits(predict_fn, outliers, batch_size)
        out[name] = {
            "auroc_msp": auroc(msp_score(in_logits), msp_score(z)),
            "auroc_energy": auroc(energy_score(in_logits), energy_score(z)),
            "images": int(len(outliers)),
        }
    return out


def white_box(
    model: Any, attack: str, images: np.ndarray, labels: np.ndarray, epsilon: float, steps: int, seed: int,
    device: str = "cpu", batch_size: int = 256,
) -> np.ndarray:
    """Adversarial images from attack ``attack`` (``ATTACKS``) on a torch model in eval mode."""
    import torch

    from .attacks import ATTACKS

    fn = ATTACKS.get(attack)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).to(device)
            y = torch.from_numpy(labels[i : i + batch_size]).to(device)
            out.append(fn(model, x, y, epsilon, steps=steps, generator=gen).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def torch_predict_fn(model: Any, device: str = "cpu") -> PredictFn:
    """A numpy ``predict_fn`` over a torch model (eval mode, no grad)."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float().cpu().numpy()

    return predict


def transfer_attack(
    source_model: Any, predict_fn: PredictFn, images: np.ndarray, labels: np.ndarray, epsilon: float, steps: int,
    seed: int, device: str = "cpu", batch_size: int = 256,
) -> tuple[float, np.ndarray]:
    """PGD images crafted on the torch ``source_model``, scored on ``predict_fn`` -> (accuracy, images)."""
    x_adv = white_box(source_model, "pgd", images, labels, epsilon, steps, seed, device, batch_size)
    return _accuracy(predict_fn_logits(predict_fn, x_adv, batch_size), labels), x_adv


def square_p_init(height: int, width: int) -> float:
    """Initial square fraction: the authors use 0.05 on ImageNet and 0.3 on MNIST; small images need big squares."""
    return 0.3 if max(height, width) <= 32 else 0.05


def adversarial(
    predict_fn: PredictFn, images: np.ndarray, labels: np.ndarray, cfg: RobustnessEvalConfig, seed: int,
    torch_model: Any = None, device: str = "cpu", batch_size: int = 256, desc: str = "robustness",
) -> dict[str, dict[str, float]]:
    """Accuracy under square (black-box on ``predict_fn``), and with a torch model pgd, fgsm, transfer."""
    out: dict[str, dict[str, float]] = {"square": {}} if cfg.square_queries > 0 else {}
    square_eps = cfg.epsilons if cfg.square_queries > 0 else []  # square_queries: 0 turns the black-box attack off
    for eps in track(square_eps, f"{desc}: square attack", unit="ε"):
        x_adv = square_attack(predict_fn, images, labels, eps, cfg.square_queries, _seed(seed, "square", eps_key(eps)),
                              p_init=square_p_init(*images.shape[-2:]), batch_size=batch_size)
        out["square"][eps_key(eps)] = _accuracy(predict_fn_logits(predict_fn, x_adv, batch_size), labels)
    if torch_model is None:
        return out
    torch_fn = torch_predict_fn(torch_model, device)
    out.update(pgd={}, fgsm={}, transfer={})
    was_training = torch_model.training
    torch_model.eval()
    try:
        for eps in track(cfg.epsilons, f"{desc}: PGD/FGSM/transfer", unit="ε"):
            k = eps_key(eps)
            x_pgd = white_box(torch_model, "pgd", images, labels, eps, cfg.pgd_steps, seed, device, batch_size)
            out["pgd"][k] = _accuracy(predict_fn_logits(torch_fn, x_pgd, batch_size), labels)
            out["transfer"][k] = _accuracy(predict_fn_logits(predict_fn, x_pgd, batch_size), labels)
            x_fgsm = white_box(torch_model, "fgsm", images, labels, eps, 1, seed, device, batch_size)
            out["fgsm"][k] = _accuracy(predict_fn_logits(torch_fn, x_fgsm, batch_size), labels)
    finally:
        torch_model.train(was_training)
    return out


# ------------------------------------------------------------------ entry points


def evaluate_robustness(
    predict_fn: PredictFn,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: RobustnessEvalConfig,
    seed: int,
    val: Optional[tuple[np.ndarray, np.ndarray]] = None,
    torch_model: Any = None,
    device: str = "cpu",
    batch_size: int = 256,
    desc: str = "robustness",
) -> dict[str, Any]:
    """The ``robustness`` metrics of one model (see the check metrics schema).

    ``images``: test images [N,C,H,W] (uint8 or float in [0,1]); ``labels``: int [N].
    ``val``: (images, labels) of the validation split for temperature scaling.
    ``torch_model``: optional torch model over [0,1] inputs for white-box PGD/FGSM and as the
    transfer-attack source (its adversarial images are scored on ``predict_fn``).
    A seeded subset of ``cfg.images`` test images is used for corruptions, calibration and OOD,
    and its first ``cfg.adversarial_images`` for attacks. mCE needs a reference: see ``add_mce``.
    ``desc`` labels the progress bars (edgekd.progress: drawn on a terminal only).
    """
    x_all, y_all = to_float(images), np.asarray(labels, dtype=np.int64)
    if len(x_all) != len(y_all) or x_all.ndim != 4:
        raise ConfigError(f"robustness needs images [N,C,H,W] and labels [N]; got {x_all.shape}, {y_all.shape}")
    pick = np.sort(_seed(seed, "subset").permutation(len(x_all))[: cfg.images])
    x, y = x_all[pick], y_all[pick]
    names = list(cfg.corruptions) or CORRUPTIONS.names()
    for name in names:
        CORRUPTIONS.get(name)  # fail early, naming the valid corruptions
    logits = predict_fn_logits(predict_fn, x, batch_size)

    val_logits = val_labels = None
    if val is not None:
        val_logits = predict_fn_logits(predict_fn, to_float(val[0]), batch_size)
        val_labels = np.asarray(val[1], dtype=np.int64)
    ood_names = list(cfg.ood) + (["folder"] if cfg.ood_folder and "folder" not in cfg.ood else [])
    n_adv = min(cfg.adversarial_images, len(x))
    return {
        "corruption": corruption_accuracy(predict_fn, x, y, names, list(cfg.severities), seed, batch_size, desc),
        "adversarial": adversarial(predict_fn, x[:n_adv], y[:n_adv], cfg, seed, torch_model, device, batch_size, desc),
        "calibration": calibration(logits, y, val_logits, val_labels, cfg.temperature_scaling),
        "ood": ood_detection(predict_fn, x, logits, ood_names, seed, cfg.ood_folder, batch_size),
        "settings": {
            "seed": seed, "images": int(len(x)), "adversarial_images": int(n_adv), "pgd_steps": cfg.pgd_steps,
            "square_queries": cfg.square_queries, "epsilons": list(cfg.epsilons), "white_box": torch_model is not None,
            "white_box_device": str(device) if torch_model is not None else None,
        },
    }


def add_mce(result: dict[str, Any], reference_result: dict[str, Any]) -> dict[str, Any]:
    """Add ``mce`` and ``relative_mce`` to ``result["corruption"]`` against a reference's robustness dict.

    Both dicts are ``evaluate_robustness`` outputs (the reference is the teacher by default);
    ``result`` is updated in place and returned.
    """
    cur, ref = result["corruption"], reference_result["corruption"]
    m, rel = mce(cur["corruption_errors"], ref["corruption_errors"], cur["clean_error"], ref["clean_error"])
    cur["mce"], cur["relative_mce"] = m, rel
    return result
