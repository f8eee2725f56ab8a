"""The report's PNG plots, drawn from the check stage's metrics with matplotlib (optional).

Without matplotlib the report renders without plots and says so. PNGs are written atomically
and carry no timestamp, so rendering twice gives the same bytes.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...io import atomic_path
from .doc import latency_entry, ordered_models

# more classes than this: no per-cell counts or class-name ticks (they stop being readable), fixed-size figures
LABELLED_CLASSES = 30
NO_MATPLOTLIB = "matplotlib is not installed, so this report has no plots (pip install matplotlib, then edgekd report RUN_DIR)."


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def accuracy_vs_latency(models: dict[str, Any], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    pts = [(n, latency_entry(models[n]), models[n].get("accuracy"), models[n].get("size_mb"))
           for n in ordered_models(models)]
    pts = [(n, rec["median_ms"], acc, size) for n, rec, acc, size in pts
           if rec and rec.get("median_ms") is not None and acc is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, ms, acc, size in pts:
        ax.scatter([ms], [100 * acc], s=60, label=f"{n} ({size:.2f} MB)" if size else n)
        ax.annotate(n, (ms, 100 * acc), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("median latency, batch 1, 1 thread (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_class_accuracy(models: dict[str, Any], labels: list[str], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    names = [n for n in ordered_models(models) if models[n].get("per_class_accuracy")]
    if not names:
        return None
    k = max(len(models[n]["per_class_accuracy"]) for n in names)
    labels = (list(labels) + [str(i) for i in range(len(labels), k)])[:k]
    x, width = np.arange(k), 0.8 / len(names)
    # grouped bars up to LABELLED_CLASSES; beyond, one line per model over the class index in a figure of
    # fixed width (bars 0.7 in a class wide make a 70-inch PNG at 100 classes, too large to draw at 1000)
    labelled = k <= LABELLED_CLASSES
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * k), 4) if labelled else (12, 4))
    for i, n in enumerate(names):
        acc = np.asarray(models[n]["per_class_accuracy"], dtype=float)  # None (class absent) -> nan: a gap
        if labelled:
            ax.bar(x[:len(acc)] + i * width, 100 * acc, width, label=n)
        else:
            ax.plot(x[:len(acc)], 100 * acc, marker=".", linewidth=0.8, label=n)
    if labelled:
        ax.set_xticks(x + width * (len(names) - 1) / 2, labels, rotation=45, ha="right")
    else:
        ax.set_xlabel(f"class index (0-{k - 1}; names in the manifest's labels)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion(name: str, matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """Counts in every cell up to ``LABELLED_CLASSES`` classes; beyond, the row-normalized matrix as a heat map.

    A figure that grows with the class count and writes k² numbers took ~30 s and 1 MB a model at 100
    classes (unreadable, and far too large to draw at 1000); the counts stay in the manifest.
    """
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    k = m.shape[0]
    labels = (list(labels) + [str(i) for i in range(len(labels), k)])[:k]
    if k > LABELLED_CLASSES:
        rows = m.sum(axis=1, keepdims=True)
        share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)  # a class absent from the test set: 0
        fig, ax = plt.subplots(figsize=(8, 7))
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
        ax.set_xlabel("predicted class index")
        ax.set_ylabel("true class index")
        ax.set_title(f"{name} ({k} classes, row-normalized; counts in the manifest)")
        return _save(fig, path)
    fig, ax = plt.subplots(figsize=(0.6 * k + 2, 0.6 * k + 1.5))
    ax.imshow(m, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(name)
    return _save(fig, path)


def severity_curves(models: dict[str, Any], path: Path) -> Path | None:
    """Mean accuracy over corruptions at each severity, one line per model (severity 0 = clean)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for n in ordered_models(models):
        by = ((models[n].get("robustness") or {}).get("corruption") or {}).get("by_corruption")
        if not by:
            continue
        curve = np.mean(np.asarray(list(by.values()), dtype=float), axis=0)
        xs = np.arange(1, len(curve) + 1)
        if models[n].get("accuracy") is not None:
            xs, curve = np.concatenate([[0], xs]), np.concatenate([[models[n]["accuracy"]], curve])
        ax.plot(xs, 100 * curve, marker="o", label=n)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel("mean accuracy over corruptions (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def reliability(models: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs confidence per non-empty bin, with the diagonal of perfect calibration."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    drawn = False
    for n in ordered_models(models):
        rel = ((models[n].get("robustness") or {}).get("calibration") or {}).get("reliability")
        if not rel:
            continue
        keep = [i for i, c in enumerate(rel.get("count", [])) if c > 0]
        ax.plot([rel["confidence"][i] for i in keep], [rel["accuracy"][i] for i in keep], marker="o", label=n)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return _save(fig, path)


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def make_plots(check: dict[str, Any], plots_dir: Path) -> tuple[dict[str, Path], str | None]:
    """Draw every plot the metrics allow into ``plots_dir``; returns ({key: png path}, note or None)."""
    if not matplotlib_available():
        return {}, NO_MATPLOTLIB
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    models, labels = check.get("models", {}), list(check.get("labels") or [])
    jobs: dict[str, Callable[[Path], Path | None]] = {
        "accuracy_vs_latency": lambda p: accuracy_vs_latency(models, p),
        "per_class_accuracy": lambda p: per_class_accuracy(models, labels, p),
        "severity_curves": lambda p: severity_curves(models, p),
        "reliability": lambda p: reliability(models, p),
    }
    for n in ordered_models(models):
        if models[n].get("confusion"):
            jobs[f"confusion_{n}"] = lambda p, n=n: confusion(n, models[n]["confusion"], labels, p)
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, draw in jobs.items():
        path = draw(plots_dir / f"{key}.png")
        if path is not None:
            out[key] = path
    return out, None
