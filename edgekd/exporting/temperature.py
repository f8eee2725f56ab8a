"""Ship calibrated probabilities: a softmax temperature fitted on validation, carried into the ONNX file.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar
``T > 0`` fitted to minimise the validation NLL of ``softmax(z / T)``. Dividing the logits by ``T``
changes no argmax (top-1 accuracy is untouched) but can lower the expected calibration error (ECE)
of the probabilities a device computes from the file's output. The check stage already fits ``T``
to *report* a calibrated ECE; ``export.temperature_scaling`` puts it into the shipped student files
as a final ``Mul`` by ``1 / T`` on the output (a ``Mul``, not a ``Div``: the doctor reads ``Sub``/``Div``
as the in-graph input normalization).

The temperature is fitted on the exported file's own validation logits (onnxruntime, the file that
ships), after the export parity check passed on the unscaled file; :func:`verify_scaled` then proves
the scaled file's outputs are the verified file's times ``1 / T``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..deploy.onnx_io import TEMPERATURE_NODE, fresh_name, load_model, tensor_names
from ..deploy.runtime.session import make_session, onnx_logits
from ..errors import ArtifactError
from ..io import atomic_path
from ..robustness.metrics import T_MAX, T_MIN, ece, fit_temperature, nll, softmax, temperature_at_bound

SCALE_NAME = "inverse_temperature"


def fit_file_temperature(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray,
                         batch_size: int = 256) -> dict[str, float]:
    """Fit ``T`` on ``path``'s logits for the validation ``images`` [N,C,H,W] float in [0, 1].

    Returns ``temperature`` and the validation NLL and ECE (15 bins) before and after scaling.
    """
    logits = onnx_logits(make_session(Path(path), threads=0), images, batch_size)
    y = np.asarray(labels, dtype=np.int64)
    t = fit_temperature(logits, y, T_MIN, T_MAX)
    if temperature_at_bound(t):  # shipping x1/T from such a fit would make the probabilities worse
        raise ArtifactError(f"the softmax temperature fitted on {len(y)} validation images of {Path(path).name} ran "
                            f"to the end of its search range (T = {t:.3g}, range {T_MIN:g}..{T_MAX:g}): the split "
                            "cannot calibrate this model", "use a larger data.val_size, or set "
                            "export.temperature_scaling: false")
    return {"temperature": float(t), "val_images": int(len(y)),
            "val_nll_before": nll(logits, y), "val_nll_after": nll(logits, y, t),
            "val_ece_before": ece(softmax(logits), y), "val_ece_after": ece(softmax(logits, t), y)}


def append_temperature(src: str | os.PathLike[str], dst: str | os.PathLike[str], temperature: float) -> None:
    """Write ``src`` with its (single) output multiplied by ``1 / temperature`` to ``dst``, atomically.

    The output keeps its name (``logits``): the tensor the last node produced is renamed and a
    ``Mul`` node named ``temperature_scaling`` writes the output.
    """
    if not (np.isfinite(temperature) and temperature > 0):
        raise ArtifactError(f"cannot scale logits by a temperature of {temperature!r}",
                            "the fitted temperature must be a positive number; check the validation split")
    model = load_model(src)
    graph = model.graph
    if len(graph.output) != 1:
        raise ArtifactError(f"{src} has {len(graph.output)} outputs; temperature scaling needs one logits output",
                            "set export.temperature_scaling: false for this model")
    out = graph.output[0].name
    if any(n.name == TEMPERATURE_NODE for n in graph.node):
        raise ArtifactError(f"{src} is already temperature-scaled (it has a node {TEMPERATURE_NODE!r})",
                            "scale the unscaled export, not a scaled file")
    taken = tensor_names(model)
    unscaled = fresh_name(f"{out}_unscaled", taken)
    for node in graph.node:  # the producer of the output, and any reader of it, now use the unscaled name
        node.output[:] = [unscaled if o == out else o for o in node.output]
        node.input[:] = [unscaled if i == out else i for i in node.input]
    scale = fresh_name(SCALE_NAME, taken)
    graph.initializer.append(numpy_helper.from_array(np.array(1.0 / temperature, dtype=np.float32), scale))
    graph.node.append(helper.make_node("Mul", [unscaled, scale], [out], name=TEMPERATURE_NODE))
    # an app reading only the .onnx file can tell its output is already divided by T
    props = {p.key: p for p in model.metadata_props}
    entry = props.get("temperature") or model.metadata_props.add()
    entry.key, entry.value = "temperature", repr(float(temperature))
    onnx.checker.check_model(model)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(model, str(tmp))


def verify_scaled(unscaled: str | os.PathLike[str], scaled: str | os.PathLike[str], images: np.ndarray,
                  temperature: float, rtol: float = 1e-5) -> dict[str, Any]:
    """The scaled file's logits equal the unscaled file's times ``1 / T`` within ``rtol x max|logit / T|``.

    Both run in onnxruntime on the same images; the only new arithmetic is one float32 multiply, so the
    files agree to ~1 ulp of the logits' scale (6e-8); 1e-5 leaves room for onnxruntime fusing the Mul
    into the last Gemm. A wrong graph rewrite (lost output, wrong tensor scaled) is off by O(1).
    Returns ``max_abs_diff``, ``allowed`` and ``top1_agreement``; raises ``ArtifactError`` on a mismatch.
    """
    ref = onnx_logits(make_session(Path(unscaled), threads=1), images) / np.float32(temperature)
    got = onnx_logits(make_session(Path(scaled), threads=1), images)
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    allowed = rtol * float(np.max(np.abs(ref)))
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    if not diff <= allowed:
        raise ArtifactError(f"the temperature-scaled {scaled} does not compute the verified file's logits / T: "
                            f"max |d| {diff:.3g} > {allowed:.3g}", "set export.temperature_scaling: false and report it")
    return {"max_abs_diff": diff, "allowed": allowed, "top1_agreement": agreement}
