"""CIFAR-10 through torchvision (imported lazily, only when this dataset is used).

The python-pickle release (``cifar-10-batches-py/``) is looked for under ``data.root``, ``$EDGEKD_DATA``
and ``~/.cache/edgekd``; when absent and ``data.download`` is on, torchvision downloads it into the
first of those. Images come back uint8 [N, 3, 32, 32].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, ReaderResult, Split

FOLDER = "cifar-10-batches-py"
# Per-channel pixel statistics of the 50 000 training images.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
FIX = (
    "download CIFAR-10 once where there is network (data.download: true), or copy the extracted "
    f"'{FOLDER}' folder under data.root or $EDGEKD_DATA"
)


def search_roots(cfg: DataConfig) -> list[Path]:
    """Base folders searched, in order: data.root, $EDGEKD_DATA, ~/.cache/edgekd."""
    roots = [Path(cfg.root).expanduser()] if cfg.root else []
    env = os.environ.get("EDGEKD_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(Path.home() / ".cache" / "edgekd")
    return roots


def _torchvision_cifar(root: Path, train: bool, download: bool):  # noqa: ANN202 - torchvision type, lazily imported
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as e:
        raise DataError("CIFAR-10 needs torchvision, which is not installed", "pip install 'edgekd[train]'") from e
    try:
        return CIFAR10(str(root), train=train, download=download)
    except (OSError, RuntimeError, ValueError) as e:  # no network: URLError (OSError); bad files: RuntimeError
        raise DataError(f"CIFAR-10 could not be read or downloaded under {root}: {e}", FIX) from e


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> ReaderResult:
    """The official 50 000 / 10 000 split."""
    roots = search_roots(cfg)
    found = next((r for r in roots if (r / FOLDER).is_dir()), None)
    if found is None and not cfg.download:
        where = "\n    ".join(str(r / FOLDER) for r in roots)
        raise DataError(f"CIFAR-10 not found (data.download is off); searched:\n    {where}", FIX)
    root = found if found is not None else roots[0]
    splits = []
    for train in (True, False):
        ds = _torchvision_cifar(root, train, download=found is None)
        images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        splits.append(Split(images, np.asarray(ds.targets, dtype=np.int64)))
        classes = list(ds.classes)
    return splits[0], splits[1], classes, MEAN, STD
