"""Image files on disk: the header scan, the corrupt-file policy, decoding, and the streamed split.

numpy + Pillow only (Pillow comes with torchvision and is imported lazily). The scan opens every file
once (header and, for PNG/GIF/..., a chunk check via ``Image.verify``, no pixel decoding); what does
not open is *corrupt* and handled by the policy ``data.on_corrupt``:

- ``fail`` (default): a DataError naming the first corrupt file and how to fix it;
- ``skip``: the files are left out and one warning lists them (a handful, then a count).

:class:`FileSplit` is a split whose pixels stay on disk: ``load(indices)`` decodes just those rows.
The training loader streams it in batches with worker processes (``edgekd.data.streaming``).
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from .base import Split

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
ON_CORRUPT = ("fail", "skip")
_SHOWN = 10  # corrupt files named in a skip warning before "... and N more"


def pil_image():  # noqa: ANN201 - the PIL.Image module
    """``PIL.Image``, or a DataError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("image_folder datasets need Pillow, which is not installed", "pip install pillow") from e
    return Image


def _read_errors() -> tuple[type[BaseException], ...]:
    Image = pil_image()
    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(slots=True)
class Header:
    """What the scan learned about one readable file (slots: one small object per file of a large folder)."""

    mode: str
    size: tuple[int, int]  # (height, width)


def read_header(path: str | Path) -> Header:
    """Mode and (H, W) of ``path``; raises OSError/ValueError/... when the file is not a readable image."""
    Image = pil_image()
    with Image.open(path) as img:
        mode, (w, h) = img.mode, img.size
        img.verify()  # PNG: chunk CRCs and the end marker (a truncated file fails here), no decoding
    return Header(mode, (int(h), int(w)))


def scan(files: Sequence[str | Path], on_corrupt: str, log: Callable[[str], None] | None = None
         ) -> tuple[list[int], list[Header]]:
    """Open every file's header: (indices of the readable files, their headers); corrupt ones per policy.

    ``log`` receives the one warning of ``skip`` (default: stderr)."""
    assert on_corrupt in ON_CORRUPT, on_corrupt
    errors = _read_errors()
    keep: list[int] = []
    headers: list[Header] = []
    bad: list[tuple[str | Path, str]] = []
    for i, path in enumerate(files):
        try:
            headers.append(read_header(path))
            keep.append(i)
        except errors as e:
            if on_corrupt == "fail":
                raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})",
                                f"delete or replace {path}, or set data.on_corrupt: skip (edgekd stats: --on-corrupt skip) "
                                "to leave such files out") from e
            bad.append((path, f"{type(e).__name__}: {e}"))
    if bad:
        shown = "\n    ".join(f"{p} ({why})" for p, why in bad[:_SHOWN])
        more = f"\n    ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        (log or _warn)(f"[edgekd] warning: skipped {len(bad)} unreadable image(s) (data.on_corrupt: skip):\n    {shown}{more}")
    return keep, headers


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def common_mode(headers: Sequence[Header]) -> str:
    """One colour mode for the dataset: ``L`` when every image is grayscale, else ``RGB`` (alpha dropped)."""
    return "L" if all(h.mode in GRAY_MODES for h in headers) else "RGB"


def native_size(headers: Sequence[Header]) -> tuple[int, int]:
    """The most common (H, W) of the images (ties: the larger area); other sizes get resized to it."""
    counts = Counter(h.size for h in headers)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s))


def decode(path: str | Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 [C, H, W] in ``mode``, resized (bilinear) to ``size`` = (H, W) when it differs."""
    Image = pil_image()
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if (img.size[1], img.size[0]) != tuple(size):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except _read_errors() as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e}); it passed the header scan but its "
                        "pixels do not decode", f"delete or replace {path}") from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@dataclass
class FileSplit:
    """A split whose images stay on disk: paths, labels, and the mode and (H, W) they decode to."""

    paths: list[str]  # str, not Path: a third of the memory per file in a folder of millions
    labels: np.ndarray
    mode: str
    size: tuple[int, int]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"FileSplit.labels must be [N={len(self.paths)}], got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The [N, C, H, W] shape the images would have in memory."""
        return (len(self), self.channels, *self.size)

    def take(self, indices: np.ndarray) -> "FileSplit":
        """The rows ``indices`` (in that order), still on disk."""
        idx = np.asarray(indices, dtype=np.int64)
        return FileSplit([self.paths[i] for i in idx], self.labels[idx], self.mode, self.size)

    def load(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Decode the rows ``indices``: uint8 [len(indices), C, H, W]."""
        out = np.empty((len(indices), self.channels, *self.size), dtype=np.uint8)
        for j, i in enumerate(indices):
            out[j] = decode(self.paths[int(i)], self.mode, self.size)
        return out

    def materialize(self) -> Split:
        """All rows decoded into an in-memory :class:`~edgekd.data.base.Split`."""
        return Split(self.load(np.arange(len(self))), self.labels.copy())

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)
