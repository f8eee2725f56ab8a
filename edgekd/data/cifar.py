"""CIFAR-10 and CIFAR-100 from the official python-pickle releases (numpy only; no torchvision to read).

Folders: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) and
``cifar-100-python/`` (``train``, ``test``, ``meta``; the 100 fine labels are used). They are looked for
under ``data.root`` only, when it is set (an explicit folder is used or the run fails naming it; never
another copy, never a download); otherwise under ``$EDGEKD_DATA`` and ``~/.cache/edgekd``, and when
absent there and ``data.download`` is on, torchvision downloads the release into the first of those.

The files are pickles; they are read with an unpickler that builds only dicts, lists, strings and
numpy arrays (``RESTRICTED``), so a tampered file cannot run code. Images come back uint8
[N, 3, 32, 32]; mean/std are computed from the training images.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, ReaderResult, Split, channel_stats


@dataclass(frozen=True)
class Release:
    """Where a CIFAR release keeps its files and labels."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    archive: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = Release("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                  "batches.meta", "labels", "label_names", "cifar-10-python.tar.gz")
CIFAR100 = Release("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names",
                   "cifar-100-python.tar.gz")
# the python-pickle files hold dicts of lists, strings and numpy arrays: these globals rebuild the arrays
RESTRICTED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle (a re-saved copy); str -> bytes only
}


def _fix(release: Release) -> str:
    return (f"download {release.title} once where there is network (data.download: true), or extract the python "
            f"release ({release.archive}) so that '{release.folder}' lies under data.root or $EDGEKD_DATA")


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in RESTRICTED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR file")
        if module == "numpy.core.multiarray":  # numpy 2 renamed it; the old path only warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (Python 2 files: latin-1 strings, as numpy advises)."""
    try:
        data = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR python-pickle file ({type(e).__name__}: {e})",
                        f"delete {path.parent} and extract the release again") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict, found {type(data).__name__}", f"delete {path.parent} and extract the release again")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}


def _batch(path: Path, label_key: str) -> Split:
    d = read_pickle(path)
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
        images = data.reshape(len(data), 3, 32, 32)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: missing or malformed 'data'/'{label_key}' ({type(e).__name__}: {e})",
                        f"delete {path.parent} and extract the release again") from e
    return Split(np.ascontiguousarray(images), labels)


def read_release(folder: Path, release: Release) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) from an extracted release folder."""
    parts = [_batch(folder / name, release.label_key) for name in release.train_files]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    test = _batch(folder / release.test_file, release.label_key)
    names = read_pickle(folder / release.meta_file).get(release.names_key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{folder / release.meta_file}: no '{release.names_key}' list", f"delete {folder} and extract the release again")
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    top = int(max(train.labels.max(), test.labels.max()))
    if top >= len(classes) or min(train.labels.min(), test.labels.min()) < 0:
        raise DataError(f"{folder}: labels run to {top}, but {len(classes)} class names", f"delete {folder} and extract the release again")
    return train, test, classes


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


def check_explicit_root(root: Path, release: Release = CIFAR10) -> None:
    """An explicit data.root must hold the extracted release; a DataError names the folder and the files."""
    expected = f"{root / release.folder}/ with {', '.join(release.files)}"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; expected {expected}",
                        "fix data.root (it is used as given), or remove it to use $EDGEKD_DATA, ~/.cache/edgekd "
                        "or a download (data.download)")
    missing = [name for name in release.files if not (root / release.folder / name).is_file()]
    if missing:
        raise DataError(f"data.root {root} does not hold {release.title}: missing {', '.join(missing)}; expected {expected}",
                        f"extract the python release ({release.archive}) into {root}, or remove data.root "
                        "to use $EDGEKD_DATA, ~/.cache/edgekd or a download (data.download)")


def _download(root: Path, release: Release) -> None:
    try:
        from torchvision import datasets
    except ImportError as e:
        raise DataError(f"downloading {release.title} needs torchvision, which is not installed",
                        "pip install 'edgekd[train]', or " + _fix(release)) from e
    cls = datasets.CIFAR10 if release is CIFAR10 else datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except (OSError, RuntimeError, ValueError) as e:  # no network: URLError (OSError); bad files: RuntimeError
        raise DataError(f"{release.title} could not be downloaded into {root}: {e}", _fix(release)) from e


def load_release(cfg: DataConfig, release: Release) -> ReaderResult:
    """Find (or download) ``release`` per the module docstring and read it."""
    if cfg.root:
        check_explicit_root(Path(cfg.root).expanduser(), release)
    roots = search_roots(cfg)
    found = next((r for r in roots if (r / release.folder).is_dir()), None)
    if found is None:
        if not cfg.download:
            where = "\n    ".join(str(r / release.folder) for r in roots)
            raise DataError(f"{release.title} not found (data.download is off); searched:\n    {where}", _fix(release))
        found = roots[0]
        _download(found, release)
    train, test, classes = read_release(found / release.folder, release)
    mean, std = channel_stats(train.images)
    return train, test, classes, mean, std


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> ReaderResult:
    """CIFAR-10: the official 50 000 / 10 000 split, 10 classes."""
    return load_release(cfg, CIFAR10)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> ReaderResult:
    """CIFAR-100: the official 50 000 / 10 000 split, the 100 fine labels."""
    return load_release(cfg, CIFAR100)
