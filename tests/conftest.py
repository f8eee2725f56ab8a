"""Shared fixtures: a small, fixed subset of the real Fashion-MNIST (Debian package files); one torch thread."""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Iterator

# `make test` runs one pytest-xdist worker per CPU. Each worker, and every run it starts in a subprocess
# (they inherit the environment), then gets one OpenMP thread: two workers with a full thread pool each
# oversubscribe the cores, and spinning OpenMP threads make small batches several times slower. Set here,
# before numpy or torch is imported. A thread count the caller sets wins; `.ci/run`'s second pass (no xdist)
# keeps the multi-threaded kernels covered.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from edgekd.config import DataConfig  # noqa: E402  (after the thread setting above)
from edgekd.data import DatasetBundle, build_dataset  # noqa: E402

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def fashion_mnist_available() -> bool:
    """Whether the four official Fashion-MNIST files are installed at FMNIST_DIR."""
    return all((FMNIST_DIR / name).is_file() for name in FMNIST_FILES)


MISSING = f"Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install -y dataset-fashion-mnist; `make test` does)"


def require_fashion_mnist() -> None:
    """Skip the calling test when the Fashion-MNIST files are absent; in CI (``CI`` set) fail instead.

    A CI run without the data set would otherwise pass with every real-data test skipped.
    """
    if not fashion_mnist_available():
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING}; CI must run the real-data tests", pytrace=False)
        pytest.skip(MISSING)


@pytest.fixture
def fashion_mnist_files() -> None:
    """Use through ``requires_fashion_mnist``: skips without the data set, fails in CI."""
    require_fashion_mnist()


# a test (or ``pytestmark``) that reads Fashion-MNIST: skipped without it on a developer machine, failed in CI
requires_fashion_mnist = pytest.mark.usefixtures("fashion_mnist_files")


@functools.lru_cache(maxsize=8)
def _fmnist_prefix(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    prefix = "t10k" if split == "test" else "train"
    with gzip.open(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read(16 + n * 784), np.uint8, offset=16).reshape(n, 1, 28, 28)
    with gzip.open(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read(8 + n), np.uint8, offset=8).astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def fmnist_prefix(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (uint8 [n, 1, 28, 28], read-only) and labels (int64) of the real ``train`` or
    ``test`` split, decompressing only that prefix: the one raw reader of the tests, for those that need a
    fixed, file-ordered slice rather than the ``fmnist_small`` subset. Skips (fails in CI) without the data."""
    require_fashion_mnist()
    return _fmnist_prefix(split, n)


def small_fmnist_config(**overrides: object) -> DataConfig:
    """The DataConfig of the shared subset: 2000 train / 500 val / 1000 test, read from FMNIST_DIR."""
    values = dict(dataset="fashion_mnist", root=str(FMNIST_DIR), download=False,
                  val_size=500, train_subset=2000, test_subset=1000, batch_size=64, eval_batch_size=256)
    values.update(overrides)
    return DataConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def fmnist_small() -> DatasetBundle:
    """Real Fashion-MNIST, stratified seeded subsets (seed 0): 2000 train, 500 val, 1000 test."""
    require_fashion_mnist()
    return build_dataset(small_fmnist_config(), seed=0)


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("torch_one_thread")``).

    On a shared, oversubscribed CPU, OpenMP's spinning threads make small batches many times
    slower (measured here: ~70 s with 2 threads vs ~11 s with 1). torch is imported here, not at
    module level, so torch-free test modules still collect without it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
