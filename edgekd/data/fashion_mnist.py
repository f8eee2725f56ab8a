"""Fashion-MNIST from the four official IDX files (``.gz`` or uncompressed), verified by MD5 (numpy only).

Where the files are looked for: when ``data.root`` is set, there and only there (an explicit folder
is used or the run fails with a DataError naming it and the expected files; it never falls through
to another copy or a download). Otherwise, in order: ``$EDGEKD_DATA``, the Debian package path
``/usr/share/datasets/fashion-mnist``. In each, the folder itself and the layouts ``fashion-mnist/``
and ``FashionMNIST/raw/`` (torchvision's) are tried. The first folder holding any of the four files
is used, and all four must then be present and intact: a broken copy is reported, never skipped
silently. When none is found and ``data.download`` is on, torchvision (imported lazily) downloads
them into ``$EDGEKD_DATA`` or ``~/.cache/edgekd``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..io import md5_file
from .base import DATASETS, ReaderResult, Split

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
LAYOUTS = (".", "fashion-mnist", "FashionMNIST/raw")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Of the 60 000 training images (Xiao et al. 2017); normalization lives inside the model.
MEAN, STD = (0.2860,), (0.3530,)
INSTALL_FIX = (
    "install the Debian package (apt-get install -y dataset-fashion-mnist), or put the four official .gz "
    "files in a folder and set data.root or $EDGEKD_DATA to it, or enable data.download with network access"
)


class IdxFile(NamedTuple):
    stem: str  # the file name without ".gz"
    gz_md5: str  # official MD5 of the .gz download
    raw_md5: str  # official MD5 of the uncompressed IDX file
    shape: tuple[int, ...]


FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                            "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
    "train_labels": IdxFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe",
                            "9018921c3c673c538a1fc5bad174d6f9", (60000,)),
    "test_images": IdxFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79",
                           "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310",
                           "15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
}

# Verified, decoded arrays keyed by (resolved path, mtime_ns, size): a replaced file is re-verified.
_VERIFIED: dict[tuple[str, int, int], np.ndarray] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def parse_idx(raw: bytes, expected_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Decode an uncompressed IDX ubyte payload; any mismatch is a DataError naming ``path``."""
    ndim = len(expected_shape)
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(
            f"{path}: not an IDX ubyte file with {ndim} dimension(s) (bad magic number {raw[:4].hex() or 'empty'})",
            f"replace {path.name} with the official file; {INSTALL_FIX}",
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != expected_shape:
        raise DataError(f"{path}: IDX shape {dims}, expected {expected_shape}", f"replace {path.name} with the official file")
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"{path}: IDX payload holds {body.size} bytes, the header promises {int(np.prod(dims))} (truncated or padded)",
            f"replace {path.name} with the official file",
        )
    return body.reshape(dims)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated stream is EOFError
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e})",
            f"delete {path} and reinstall it; {INSTALL_FIX}",
        ) from e


def read_idx_file(path: Path, spec: IdxFile) -> np.ndarray:
    """Verify ``path`` (``.gz`` or uncompressed) against the official MD5s and decode it (cached, read-only).

    A ``.gz`` passes when its own MD5 is the official one, or when its content's MD5 is the official
    uncompressed one: repackaged copies (Debian's strips the name and time from the gzip header) hold
    the official bytes in a different wrapper.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing (the other Fashion-MNIST files are in {path.parent})", INSTALL_FIX)
    key = _file_key(path)
    if key in _VERIFIED:
        return _VERIFIED[key]
    gz = path.suffix == ".gz"
    gz_ok = gz and md5_file(path) == spec.gz_md5
    raw = _gunzip(path) if gz else path.read_bytes()
    array = parse_idx(raw, spec.shape, path)  # a broken file gets its precise diagnosis first
    if not gz_ok:
        digest = hashlib.md5(raw).hexdigest()
        if digest != spec.raw_md5:
            expected = f"the official {spec.gz_md5} (.gz) / {spec.raw_md5} (uncompressed)" if gz else f"the official {spec.raw_md5}"
            raise DataError(
                f"{path}: content fails the MD5 check (got {digest}{', .gz ' + md5_file(path) if gz else ''}; "
                f"expected {expected}); the file was modified or is not the official release",
                f"replace {path.name} with the official file; {INSTALL_FIX}",
            )
    array.flags.writeable = False  # shared through the cache; Split.take copies
    _VERIFIED[key] = array
    return array


def _file_in(folder: Path, spec: IdxFile) -> Path | None:
    """The ``.gz`` (preferred) or uncompressed copy of ``spec`` in ``folder``, if either exists."""
    for name in (spec.stem + ".gz", spec.stem):
        if (folder / name).exists():
            return folder / name
    return None


def expected_files() -> str:
    """The four file names, as an error message lists them."""
    return ", ".join(f"{spec.stem}[.gz]" for spec in FILES.values())


def search_roots(cfg: DataConfig) -> list[Path]:
    """The base folders searched: data.root alone when set, else $EDGEKD_DATA, then the Debian package path."""
    if cfg.root:
        return [Path(cfg.root).expanduser()]
    roots = []
    env = os.environ.get("EDGEKD_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(DEBIAN_DIR)
    return roots


def find_folder(roots: list[Path]) -> Path | None:
    """The first folder (root x layout) that holds any of the four files, else None."""
    for root in roots:
        for layout in LAYOUTS:
            folder = (root / layout) if layout != "." else root
            if any(_file_in(folder, spec) for spec in FILES.values()):
                return folder
    return None


def _download(cfg: DataConfig, searched: list[str]) -> Path:
    """Fetch the files with torchvision into $EDGEKD_DATA / ~/.cache/edgekd (never data.root: see ``locate``)."""
    target = Path(os.environ.get("EDGEKD_DATA") or Path.home() / ".cache" / "edgekd").expanduser()
    where = "\n    ".join(searched)
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as e:
        raise DataError(
            f"Fashion-MNIST not found; searched:\n    {where}\nand torchvision, which would download it, is not installed",
            INSTALL_FIX,
        ) from e
    try:
        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; torchvision raises RuntimeError
        raise DataError(
            f"Fashion-MNIST not found; searched:\n    {where}\nand the download into {target} failed: {e}",
            INSTALL_FIX,
        ) from e
    return target / "FashionMNIST" / "raw"


def _searched(roots: list[Path]) -> list[str]:
    return [str(r / layout) if layout != "." else str(r) for r in roots for layout in LAYOUTS]


def locate_explicit(root: Path) -> Path:
    """The folder under an explicit ``data.root`` that holds the files, or a DataError naming the folder.

    A typo in data.root must not silently train on another copy (or download one): the user asked
    for this folder, so it is used or the run stops here.
    """
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(
            f"data.root {root} {what}; expected a folder holding the Fashion-MNIST files {expected_files()}",
            "fix data.root (it is used as given, never replaced by another copy), or remove it to use "
            "$EDGEKD_DATA or the system copy",
        )
    folder = find_folder([root])
    if folder is None:
        where = "\n    ".join(_searched([root]))
        raise DataError(
            f"data.root {root} holds no Fashion-MNIST files; expected {expected_files()} in one of:\n    {where}",
            f"put the four official files in {root}, or remove data.root to use $EDGEKD_DATA, the system copy "
            "or a download (data.download)",
        )
    return folder


def locate(cfg: DataConfig) -> Path:
    """The folder holding the four files (downloading them if allowed), or a DataError naming where it looked."""
    if cfg.root:
        return locate_explicit(Path(cfg.root).expanduser())
    roots = search_roots(cfg)
    folder = find_folder(roots)
    if folder is not None:
        return folder
    searched = _searched(roots)
    if cfg.download:
        return _download(cfg, searched)
    where = "\n    ".join(searched)
    raise DataError(f"Fashion-MNIST not found (data.download is off); searched:\n    {where}", INSTALL_FIX)


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> ReaderResult:
    """The official 60 000 / 10 000 split, images uint8 [N, 1, 28, 28]."""
    folder = locate(cfg)
    arrays = {key: read_idx_file(_file_in(folder, spec) or folder / (spec.stem + ".gz"), spec) for key, spec in FILES.items()}
    train = Split(arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64))
    test = Split(arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64))
    return train, test, CLASSES, MEAN, STD
