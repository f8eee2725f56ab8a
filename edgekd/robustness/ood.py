"""Out-of-distribution sets for OOD detection scores (numpy only).

Each entry of ``OOD_SETS`` is ``fn(images, rng, folder=None) -> outliers``: given in-distribution
test images float32 [N,C,H,W] in [0,1] it returns N outliers of the same shape and dtype.
The synthetic sets follow Hendrycks, Mazeika & Dietterich 2019 (Outlier Exposure): uniform
noise and smoothed thresholded blobs; "inverted" (1 - x) keeps the image statistics' layout
but flips polarity; "folder" reads real images from a directory (PNG/JPG) through PIL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import ConfigError, DataError
from ..pixels import to_float
from ..registry import Registry
from .corruptions import gaussian_filter

OODSet = Callable[..., np.ndarray]
OOD_SETS: Registry[OODSet] = Registry("ood set")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@OOD_SETS.register("uniform")
def uniform(images: np.ndarray, rng: np.random.Generator, folder: Optional[str] = None) -> np.ndarray:
    """I.i.d. uniform noise in [0, 1]."""
    return rng.random(size=images.shape, dtype=np.float32)


@OOD_SETS.register("blobs")
def blobs(images: np.ndarray, rng: np.random.Generator, folder: Optional[str] = None) -> np.ndarray:
    """Bernoulli(0.7) noise, Gaussian-blurred (sigma = size/28) and thresholded at 0.75 (Outlier Exposure)."""
    n, c, h, w = images.shape
    x = (rng.random(size=(n, c, h, w)) < 0.7).astype(np.float32)
    x = gaussian_filter(x, max(h, w) / 28.0)
    x[x < 0.75] = 0.0
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@OOD_SETS.register("inverted")
def inverted(images: np.ndarray, rng: np.random.Generator, folder: Optional[str] = None) -> np.ndarray:
    """Photometric negatives ``1 - x`` of the test images."""
    return (1.0 - np.asarray(images, dtype=np.float32)).astype(np.float32)


@OOD_SETS.register("folder")
def folder_set(images: np.ndarray, rng: np.random.Generator, folder: Optional[str] = None) -> np.ndarray:
    """Real outlier images from ``folder`` (searched recursively), resized and converted to the test layout.

    Up to N files are drawn at random (seeded) without replacement; fewer files give fewer outliers.
    """
    if not folder:
        raise ConfigError("the 'folder' OOD set needs a directory", "set check.robustness.ood_folder")
    n, c, h, w = images.shape
    return read_image_folder(folder, size=(h, w), channels=c, limit=n, rng=rng)


def read_image_folder(
    folder: str | Path, size: tuple[int, int], channels: int, limit: int, rng: np.random.Generator
) -> np.ndarray:
    """Read up to ``limit`` images under ``folder`` into float32 [M, channels, H, W] in [0, 1].

    Unlike the ``image_folder`` dataset this needs no class sub-folders: any image anywhere below counts.
    """
    if channels not in (1, 3):
        raise ConfigError(
            f"OOD images can be read as 1 or 3 channels, not {channels}", "drop 'folder' from check.robustness.ood"
        )
    from PIL import Image  # lazy: only this set needs PIL

    root = Path(folder)
    if not root.is_dir():
        raise DataError(
            f"OOD image folder not found: {root}", "set check.robustness.ood_folder to an existing directory"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"no PNG/JPG/BMP images under {root}", "put outlier images in the folder or drop 'folder' from ood"
        )
    pick = rng.permutation(len(files))[:limit]
    out = np.empty((len(pick), channels, size[0], size[1]), dtype=np.float32)
    for k, i in enumerate(sorted(pick)):
        try:
            with Image.open(files[i]) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
                arr = to_float(np.asarray(im))
        except (OSError, ValueError, SyntaxError) as e:
            problem = f"{files[i]}: unreadable image ({type(e).__name__}: {e})"
            raise DataError(problem, f"delete or replace {files[i]}") from e
        out[k] = arr[None] if channels == 1 else np.transpose(arr, (2, 0, 1))
    return out


def make_ood(name: str, images: np.ndarray, rng: np.random.Generator, folder: Optional[str] = None) -> np.ndarray:
    """Build the outlier set ``name`` for ``images`` (see ``OOD_SETS.names()``)."""
    return OOD_SETS.get(name)(np.asarray(images, dtype=np.float32), rng, folder=folder)
