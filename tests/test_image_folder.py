"""Your own images (issue 12): native size, RGB and grayscale, streamed = in memory, corrupt-file policy,
``edgekd stats``, and the CIFAR-10/100 pickle readers on tiny sets written in the real file format."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.config import AugmentConfig, DataConfig
from edgekd.data import build_dataset
from edgekd.data.digits import write_digits_folder
from edgekd.data.files import FileSplit
from edgekd.data.loader import make_loaders
from edgekd.data.stats import folder_stats
from edgekd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
AUG = AugmentConfig(crop_padding=2, hflip=True, noise_std=0.05)


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x 12 RGB 32x32 digit PNGs."""
    return write_digits_folder(tmp_path_factory.mktemp("rgb") / "digits", per_class=12, size=32, mode="RGB")


@pytest.fixture(scope="module")
def gray28(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x 12 grayscale 28x28 digit PNGs."""
    return write_digits_folder(tmp_path_factory.mktemp("gray") / "digits", per_class=12, size=28, mode="L")


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "image_folder", "root": str(root), "val_size": 20, "batch_size": 16, **kw})


def test_native_size_and_colour_mode(rgb32: Path, gray28: Path) -> None:
    rgb = build_dataset(_cfg(rgb32), 0)
    assert (rgb.channels, rgb.image_size, rgb.train.images.shape[1:]) == (3, (32, 32), (3, 32, 32))
    gray = build_dataset(_cfg(gray28), 0)
    assert (gray.channels, gray.image_size) == (1, (28, 28))  # grayscale stays one channel, native 28x28
    assert (len(gray.train), len(gray.val), len(gray.test)) == (76, 20, 24)  # 20 % to test, val from train
    sized = build_dataset(_cfg(gray28, image_size=16), 0)
    assert sized.image_size == (16, 16) and sized.train.images.shape[2:] == (16, 16)


def test_mixed_sizes_resize_to_the_most_common(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            size = (40, 24) if i < 4 else (10, 10)  # (W, H): 4 of 6 are 24 high, 40 wide
            Image.fromarray(np.full((size[1], size[0]), 50 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    b = build_dataset(DataConfig(dataset="image_folder", root=str(tmp_path), val_size=2), 0)
    assert b.image_size == (24, 40) and b.train.images.shape[2:] == (24, 40)  # (H, W), not square


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_in_memory_batches(rgb32: Path, workers: int) -> None:
    mem = build_dataset(_cfg(rgb32, augment=AUG), 0)
    disk = build_dataset(_cfg(rgb32, augment=AUG, in_memory_mb=0, workers=workers), 0)
    assert isinstance(disk.train, FileSplit) and not isinstance(mem.train, FileSplit)
    assert np.array_equal(disk.val.images, mem.val.images) and np.array_equal(disk.test.images, mem.test.images)
    assert disk.mean == mem.mean and disk.std == mem.std
    for epoch in (0, 3):  # order and seeded augmentation are the same, epoch by epoch
        a, b = make_loaders(mem, mem_cfg := _cfg(rgb32, augment=AUG), 0)[0], make_loaders(disk, mem_cfg, 0)[0]
        b.workers = workers
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == len(a) > 1
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _break(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:60])  # a truncated PNG: the header opens, the data does not
    return path


def test_corrupt_images_fail_naming_the_first_or_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_digits_folder(tmp_path / "d", per_class=6, size=16, mode="L")
    first = _break(root / "3" / "00001.png")
    _break(root / "7" / "00004.png")
    (root / "7" / "notes.txt").write_text("not an image, and not an image extension: ignored")
    (root / "5" / "00002.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError) as err:
        build_dataset(_cfg(root, val_size=5), 0)
    assert str(first) in str(err.value) and "on_corrupt: skip" in str(err.value)  # names the file and the switch
    b = build_dataset(_cfg(root, val_size=5, on_corrupt="skip"), 0)
    assert len(b.train) + len(b.val) + len(b.test) == 60 - 3
    warning = capsys.readouterr().err
    assert "skipped 3 unreadable image(s)" in warning
    assert all(name in warning for name in ("3/00001.png", "7/00004.png", "5/00002.png"))


def test_stats_api_and_cli(rgb32: Path, tmp_path: Path) -> None:
    stats = folder_stats(rgb32)
    b = build_dataset(_cfg(rgb32), 0)
    every = np.concatenate([b.train.images, b.val.images, b.test.images]).astype(np.float64) / 255
    per_class = np.add(stats["counts"]["train"], stats["counts"]["test"])
    assert per_class.tolist() == [12] * 10 and sum(stats["counts"]["test"]) == 24 and stats["imbalance"] == 1.0
    assert stats["size"] == [32, 32] and stats["channels"] == 3 and stats["images"] == 120
    # float64 sums over 120k values: equal to numpy's two-pass result far below the 6 printed digits
    np.testing.assert_allclose(stats["mean"], every.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats["std"], every.std(axis=(0, 2, 3)), rtol=1e-4)
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "-m", "edgekd", "stats", str(rgb32), "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "120 images, 10 classes, RGB 32x32" in proc.stdout
    assert json.loads(out.read_text())["counts"] == stats["counts"]


# ------------------------------------------------------------------ CIFAR in the release's own file format


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the releases are protocol-2 pickles of dicts


def _fake_cifar(root: Path, hundred: bool, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    k = 100 if hundred else 10
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = np.arange(n) % k
    if hundred:
        folder = root / "cifar-100-python"
        for name, part in (("train", slice(0, n)), ("test", slice(0, 20))):
            _pickle(folder / name, {b"data": data[part], b"fine_labels": labels[part].tolist(),
                                    b"coarse_labels": (labels[part] // 5).tolist(), b"filenames": [b"x.png"] * n})
        _pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                  b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    else:
        folder = root / "cifar-10-batches-py"
        for i in range(1, 6):
            part = slice((i - 1) * n // 5, i * n // 5)
            _pickle(folder / f"data_batch_{i}", {b"data": data[part], b"labels": labels[part].tolist(),
                                                 b"batch_label": b"training batch"})
        _pickle(folder / "test_batch", {b"data": data[:20], b"labels": labels[:20].tolist()})
        _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return data, labels


@pytest.mark.parametrize("hundred", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_pickles_are_read(tmp_path: Path, hundred: bool) -> None:
    data, labels = _fake_cifar(tmp_path, hundred)
    cfg = DataConfig(dataset="cifar100" if hundred else "cifar10", root=str(tmp_path), download=False, val_size=10)
    b = build_dataset(cfg, 0)
    assert len(b.classes) == (100 if hundred else 10) and b.classes[3] == "c3"
    assert (len(b.train), len(b.val), len(b.test), b.channels, b.image_size) == (50, 10, 20, 3, (32, 32))
    # rows are channel-major 1024 R, 1024 G, 1024 B values: image 0 of the test split is row 0
    assert np.array_equal(b.test.images[0], data[0].reshape(3, 32, 32)) and b.test.labels[5] == labels[5]
    x = data.reshape(-1, 3, 32, 32).astype(np.float64) / 255
    np.testing.assert_allclose(b.mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)  # from the (fake) training images


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    _fake_cifar(tmp_path, hundred=False)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", {b"data": Evil()})
    with pytest.raises(DataError, match=r"data_batch_2: not a readable CIFAR.*(__builtin__|builtins)\.print"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=False, val_size=5), 0)
