"""``edgekd stats DIR``: what an image folder holds before you train on it (numpy + Pillow, no torch).

:func:`folder_stats` scans the folder exactly as a run would (same layout rules, same corrupt-file
policy, same colour mode and size), then decodes every image once to compute the per-channel mean and
std (in [0, 1] units, as the model's input normalization uses them) and counts the images per class,
so a skewed class balance or a surprising image size shows before any training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import from_os_error
from ..io import atomic_write_json
from .base import channel_sums
from .files import FileSplit
from .image_folder import open_folder

CHUNK = 512  # images decoded at a time: memory stays flat for any folder size


def _sums(split: FileSplit) -> tuple[np.ndarray, np.ndarray, int]:
    s, s2, n = np.zeros(split.channels), np.zeros(split.channels), 0
    for i in range(0, len(split), CHUNK):
        a, b, k = channel_sums(split.load(np.arange(i, min(i + CHUNK, len(split)))))
        s, s2, n = s + a, s2 + b, n + k
    return s, s2, n


def folder_stats(root: str | Path, on_corrupt: str = "fail", image_size: int | None = None) -> dict[str, Any]:
    """Class balance, colour mode, size and per-channel mean/std of the image folder ``root``.

    ``on_corrupt`` and ``image_size`` mean what ``data.on_corrupt`` / ``data.image_size`` mean in a
    config. Returns a JSON-ready dict: ``classes``, ``counts`` ({"train": [...], "test": [...]} per
    class, in class order), ``images``, ``mode``, ``channels``, ``size`` [H, W], ``mean``, ``std``,
    ``imbalance`` (largest class / smallest class, over train + test), ``warnings`` (the corrupt files
    left out under ``on_corrupt="skip"``).
    """
    warnings: list[str] = []
    cfg = DataConfig(dataset="image_folder", root=str(root), on_corrupt=on_corrupt, image_size=image_size)
    train, test, classes = open_folder(cfg, log=warnings.append)
    n = 0
    s_all, s2_all = np.zeros(train.channels), np.zeros(train.channels)
    for split in (train, test):
        s, s2, k = _sums(split)
        s_all += s
        s2_all += s2
        n += k
    mean = s_all / n
    std = np.sqrt(np.maximum(s2_all / n - mean ** 2, 0.0))
    counts = {"train": train.class_counts(len(classes)).tolist(), "test": test.class_counts(len(classes)).tolist()}
    per_class = np.array(counts["train"]) + np.array(counts["test"])
    return {
        "root": str(Path(root).expanduser()),
        "classes": classes,
        "counts": counts,
        "images": int(len(train) + len(test)),
        "mode": train.mode,
        "channels": train.channels,
        "size": list(train.size),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "imbalance": round(float(per_class.max() / max(per_class.min(), 1)), 4),
        "warnings": warnings,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """The stats as text for a terminal: a summary, then one line per class."""
    h, w = stats["size"]
    lines = [
        f"{stats['root']}: {stats['images']} images, {len(stats['classes'])} classes, "
        f"{'grayscale' if stats['channels'] == 1 else 'RGB'} {h}x{w}",
        f"mean {', '.join(f'{v:.4f}' for v in stats['mean'])}   std {', '.join(f'{v:.4f}' for v in stats['std'])}",
        f"class balance: largest/smallest = {stats['imbalance']:.2f}",
        f"{'class':<24} {'train':>8} {'test':>8} {'share':>7}",
    ]
    total = max(stats["images"], 1)
    for name, tr, te in zip(stats["classes"], stats["counts"]["train"], stats["counts"]["test"]):
        lines.append(f"{name[:24]:<24} {tr:>8} {te:>8} {(tr + te) / total:>7.1%}")
    lines.extend(stats["warnings"])
    return "\n".join(lines)


def write_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Write the stats as JSON, atomically; an unwritable path is an InputError naming it."""
    path = Path(path)
    try:
        atomic_write_json(path, stats)
    except OSError as e:
        raise from_os_error(e, "write the statistics to", target=path) from e
    return path
