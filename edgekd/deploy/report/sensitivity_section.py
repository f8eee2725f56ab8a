"""The report's "Layer sensitivity" section: what ``edgekd sensitivity`` measured, and the layers kept in float.

Reads the run's ``sensitivity.json`` through the manifest (sha256 verified) and the INT8 file's
quantization metadata; a ranking computed from other ONNX files than the run's current ones is
labelled stale. Everything here is optional context: a problem becomes a note, never an error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ArtifactError
from ...manifest import Manifest
from ..mixed_precision import kept_float_layers, mixed_precision_text
from .doc import Image, Paragraph, Section, Table, pct

TOP = 10


def _plot(result: dict[str, Any], path: Path) -> Path | None:
    from .plots import _save, matplotlib_available

    if not matplotlib_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["layers"]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.14 * len(rows)), 3.6))
    ax.bar([i - 0.2 for i in x], [100 * r["drop_when_quantized"] for r in rows], width=0.4,
           label="drop when only this layer is quantized")
    ax.bar([i + 0.2 for i in x], [100 * r["gain_when_float"] for r in rows], width=0.4,
           label="gain when only this layer is float")
    for name in result["ranking"][:3]:
        i = next(k for k, r in enumerate(rows) if r["layer"] == name)
        top = 100 * max(rows[i]["drop_when_quantized"], rows[i]["gain_when_float"], 0.0)
        ax.annotate(name, (i, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7, rotation=30)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("quantized layer (graph order)")
    ax.set_ylabel("accuracy points")
    ax.legend(fontsize=7)
    return _save(fig, path)


def sensitivity_section(manifest: Manifest, plots_dir: Path, notes: list[str]) -> Section | None:
    """The section, or None when the run has neither a sensitivity ranking nor float layers."""
    try:
        kept = kept_float_layers(manifest.artifact("export", "student_int8"))
    except ArtifactError:
        kept = []
    entry = manifest.stage("sensitivity")
    if entry is None and not kept:
        return None
    blocks: list[Any] = []
    mixed = manifest.metrics("check").get("mixed_precision")
    if mixed:
        blocks.append(Paragraph(f"Mixed precision: {mixed_precision_text(mixed)}"))
    elif kept:
        blocks.append(Paragraph(f"Mixed precision: {len(kept)} layer(s) kept in float (qat.keep_float): "
                                f"{', '.join(kept)} (run the check stage to measure what they cost)."))
    if entry is not None:
        try:
            result = json.loads(manifest.artifact("sensitivity", "sensitivity").read_text())
        except (ArtifactError, ValueError) as e:
            notes.append(f"The run records a layer sensitivity ranking that cannot be read ({e}): section shortened.")
            return Section("Layer sensitivity", blocks) if blocks else None
        stale = any(manifest.artifact_sha("export", k) != sha for k, sha in (entry.get("inputs") or {}).items())
        blocks.append(Paragraph(
            f"edgekd sensitivity on {result['images']} test images, onnxruntime at optimization "
            f"'{result['graph_optimization']}': FP32 {pct(result['fp32_accuracy'])}, INT8 {pct(result['int8_accuracy'])}; "
            f"every layer quantized in the FP32 graph {pct(result['all_layers_quantized_accuracy'])}, every layer "
            f"float in the INT8 graph {pct(result['all_layers_float_accuracy'])} (the rest is the Add/pool quantizers). "
            "Score = drop when quantized alone + gain when kept float alone."
            + (" STALE: computed from other ONNX files than this run's current ones; run edgekd sensitivity again."
               if stale else "")))
        by_name = {r["layer"]: r for r in result["layers"]}
        rows = [[name, pct(by_name[name]["only_quantized"]), pct(by_name[name]["only_float"]),
                 f"{100 * by_name[name]['score']:+.2f}",
                 f"{pct(by_name[name].get('flips_when_quantized'))} / {pct(by_name[name].get('flips_when_float'))}"]
                for name in result["ranking"][:TOP]]
        blocks.append(Table(["layer", "only this layer quantized", "only this layer float", "score (points)",
                             "top-1 flipped (quantized / float)"], rows,
                            f"Top {min(TOP, len(rows))} of {len(result['layers'])} quantized layers"))
        png = _plot(result, plots_dir / "layer_sensitivity.png")
        if png is not None:
            blocks.append(Image(png, "Accuracy cost of each quantized layer"))
    return Section("Layer sensitivity", blocks)
