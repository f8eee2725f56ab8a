"""CIFAR-10 through torchvision (imported lazily, only when this dataset is used).

The python-pickle release (``cifar-10-batches-py/``) is looked for under ``data.root`` only, when it
is set (an explicit folder is used or the run fails naming it; never another copy, never a
download); otherwise under ``$EDGEKD_DATA`` and ``~/.cache/edgekd``, and when absent there and
``data.download`` is on, torchvision downloads it into the first of those. Images come back uint8
[N, 3, 32, 32].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, ReaderResult, Split

FOLDER = "cifar-10-batches-py"
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")
# Per-channel pixel statistics of the 50 000 training images.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
FIX = (
    "download CIFAR-10 once where there is network (data.download: true), or copy the extracted "
    f"'{FOLDER}' folder under data.root or $EDGEKD_DATA"
)


def search_roots(cfg: DataConfig) -> list[Path]:
    """Base folders searched: data.root alone when set, else $EDGEKD_DATA, then ~/.cache/edgekd."""
    if cfg.root:
        return [Path(cfg.root).expanduser()]
    roots = []
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


def check_explicit_root(root: Path) -> None:
    """An explicit data.root must hold the extracted release; a DataError names the folder and the files."""
    expected = f"{root / FOLDER}/ with {', '.join(BATCHES)}"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; expected {expected}",
                        "fix data.root (it is used as given), or remove it to use $EDGEKD_DATA, ~/.cache/edgekd "
                        "or a download (data.download)")
    missing = [name for name in BATCHES if not (root / FOLDER / name).is_file()]
    if missing:
        raise DataError(f"data.root {root} does not hold CIFAR-10: missing {', '.join(missing)}; expected {expected}",
                        f"extract the python release (cifar-10-python.tar.gz) into {root}, or remove data.root "
                        "to use $EDGEKD_DATA, ~/.cache/edgekd or a download (data.download)")


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> ReaderResult:
    """The official 50 000 / 10 000 split."""
    if cfg.root:
        check_explicit_root(Path(cfg.root).expanduser())
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
