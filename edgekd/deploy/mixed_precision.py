"""What keeping layers in float (``qat.keep_float``) costs: the facts the check stage records and the doctor states.

The INT8 file names its float layers in its quantization metadata (written by the exporter). The
full-int8 baseline is the run that ranked the layers (``qat.sensitivity``): its check stage measured
the same test set and latency settings with every layer quantized. Imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..manifest import Manifest
from .onnx_io import get_metadata


def kept_float_layers(int8_path: str | Path) -> list[str]:
    """Layers the INT8 file keeps in float on purpose (empty for a full-int8 file)."""
    try:
        return list(json.loads(get_metadata(int8_path).get("quantization", "{}")).get("float_layers", []))
    except ValueError:
        return []


def _latency(model: dict[str, Any]) -> dict[str, float]:
    return {f"b{r['batch']}_t{r['threads']}": r["median_ms"] for r in model.get("latency", [])}


def mixed_precision_metrics(int8_path: str | Path, check: dict[str, Any], baseline: str = "") -> dict[str, Any] | None:
    """``{"float_layers", "baseline_run", "accuracy", "baseline_accuracy", "accuracy_delta", "latency_ratio",
    "predicted_gain"}`` for a mixed-precision INT8 file, or None for a full-int8 one.

    ``check`` is this run's check metrics; ``baseline`` a run folder or its sensitivity.json (qat.sensitivity).
    Without a readable baseline only ``float_layers`` and a ``baseline_note`` are given.
    """
    kept = kept_float_layers(int8_path)
    if not kept:
        return None
    out: dict[str, Any] = {"float_layers": kept}
    if not baseline:
        out["baseline_note"] = "no full-int8 baseline: set qat.sensitivity to the full-int8 run that was ranked"
        return out
    run = Path(baseline)
    run = run.parent if run.is_file() else run
    try:
        base = Manifest.load(run).metrics("check")["models"]["student_int8"]
    except (ArtifactError, KeyError) as e:
        out["baseline_note"] = f"the baseline run {run} has no check-stage INT8 metrics ({e})"
        return out
    mine = check["models"]["student_int8"]
    mine_lat, base_lat = _latency(mine), _latency(base)
    out.update({
        "baseline_run": str(run), "accuracy": mine["accuracy"], "baseline_accuracy": base["accuracy"],
        "accuracy_delta": mine["accuracy"] - base["accuracy"],
        "latency_ratio": {k: mine_lat[k] / base_lat[k] for k in mine_lat if base_lat.get(k)},
    })
    sens = run / "sensitivity.json"
    if sens.is_file():  # what the ranking predicted each kept layer would buy, one at a time
        rows = {r["layer"]: r for r in json.loads(sens.read_text()).get("layers", [])}
        out["predicted_gain"] = {n: rows[n]["gain_when_float"] for n in kept if n in rows}
    return out


def mixed_precision_text(mp: dict[str, Any]) -> str:
    """One plain sentence: which layers are float on purpose and what that costs against full int8."""
    text = f"{len(mp['float_layers'])} layer(s) kept in float on purpose (qat.keep_float): {', '.join(mp['float_layers'])}."
    if "accuracy_delta" not in mp:
        return f"{text} Cost unknown: {mp.get('baseline_note', 'no baseline')}."
    lat = ", ".join(f"{k} x{v:.2f}" for k, v in mp["latency_ratio"].items())
    return (f"{text} Against the full-int8 run {mp['baseline_run']}: accuracy {100 * mp['accuracy']:.2f} % vs "
            f"{100 * mp['baseline_accuracy']:.2f} % ({100 * mp['accuracy_delta']:+.2f} points), INT8 latency "
            f"mixed/full-int8 {lat or 'not measured'}.")
