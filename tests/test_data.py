"""Data package: readers (real Fashion-MNIST files), splits, the batch loader, ImageFolder, errors."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FMNIST_DIR, FMNIST_FILES, require_fashion_mnist, requires_fashion_mnist, small_fmnist_config
from edgekd.config import AugmentConfig, DataConfig
from edgekd.data import DATASETS, Split, build_dataset
from edgekd.data import fashion_mnist as fm
from edgekd.data.base import split_train_val
from edgekd.data.loader import BatchLoader, make_loaders
from edgekd.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
NO_AUG = AugmentConfig(crop_padding=0, hflip=False, noise_std=0.0, corruption_prob=0.0)


# ------------------------------------------------------------------ Fashion-MNIST files


@requires_fashion_mnist
def test_full_fashion_mnist_shapes_and_histograms() -> None:
    train, test, classes, mean, std = DATASETS.get("fashion_mnist")(DataConfig(root=str(FMNIST_DIR), download=False))
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.dtype == np.int64
    assert train.class_counts(10).tolist() == [6000] * 10
    assert test.class_counts(10).tolist() == [1000] * 10
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot" and len(classes) == 10
    pixels = train.images.astype(np.float32) / 255.0
    assert abs(pixels.mean() - mean[0]) < 1e-3 and abs(pixels.std() - std[0]) < 1e-3


def _tree(tmp: Path) -> Path:
    """A folder with links to the four real files, ready to have one replaced."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES:
        (tmp / name).symlink_to(FMNIST_DIR / name)
    return tmp


def _replace(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.unlink()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_magic"])
def test_corrupt_file_is_a_data_error_naming_it(tmp_path: Path, damage: str) -> None:
    require_fashion_mnist()
    folder = _tree(tmp_path / "fm")
    name = "t10k-images-idx3-ubyte.gz"
    original = (FMNIST_DIR / name).read_bytes()
    if damage == "garbage":
        data = os.urandom(4096)
    elif damage == "truncated":
        data = original[: len(original) // 2]
    else:  # a valid gzip whose IDX header claims a 1-D file
        data = gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(original)[4:], compresslevel=1)
    bad = _replace(folder, name, data)
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(root=str(folder), download=False, val_size=100), 0)
    assert str(bad) in str(err.value)
    assert "apt-get install" in str(err.value)  # the fix is spelled out


def test_md5_mismatch_is_a_data_error_and_repackaged_copy_passes(tmp_path: Path) -> None:
    require_fashion_mnist()
    folder = _tree(tmp_path / "fm")
    name = "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress((FMNIST_DIR / name).read_bytes())
    # the same content in a different gzip wrapper (like Debian's repackaging) is the official data
    _replace(folder, name, gzip.compress(raw, compresslevel=1, mtime=0))
    train, test, *_ = DATASETS.get("fashion_mnist")(DataConfig(root=str(folder), download=False))
    assert test.class_counts(10).tolist() == [1000] * 10
    # one changed label: a valid gzip and a valid IDX file, but not the official content
    changed = bytearray(raw)
    changed[8] = (changed[8] + 1) % 10
    bad = _replace(folder, name, gzip.compress(bytes(changed), mtime=0))
    with pytest.raises(DataError) as err:
        DATASETS.get("fashion_mnist")(DataConfig(root=str(folder), download=False))
    assert str(bad) in str(err.value) and "MD5" in str(err.value)


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    require_fashion_mnist()
    folder = _tree(tmp_path / "fm")
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: missing"):
        build_dataset(DataConfig(root=str(folder), download=False, val_size=100), 0)


def test_absent_data_names_the_searched_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(download=False), 0)
    msg = str(err.value)
    for place in ("env", "debian", "FashionMNIST/raw"):
        assert str(tmp_path / place) in msg or place in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "EDGEKD_DATA" in msg and "data.root" in msg


@pytest.mark.parametrize("download", [False, True])
def test_missing_data_root_is_an_error_never_the_system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              download: bool) -> None:
    """An explicit data.root is used or fails: a typo never trains on $EDGEKD_DATA, the system copy or a download."""
    require_fashion_mnist()
    monkeypatch.setenv("EDGEKD_DATA", str(FMNIST_DIR))  # a valid copy that must not be used
    monkeypatch.setattr(fm, "_download", lambda *a: pytest.fail("an explicit data.root must never download"))
    missing = tmp_path / "typo"
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(root=str(missing), download=download), 0)
    msg = str(err.value)
    assert f"data.root {missing} does not exist" in msg and "train-images-idx3-ubyte" in msg
    assert not missing.exists()  # nothing created under the typo
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        build_dataset(DataConfig(root=str(a_file), download=download), 0)


@pytest.mark.parametrize("download", [False, True])
def test_data_root_without_the_files_names_folder_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             download: bool) -> None:
    require_fashion_mnist()
    monkeypatch.setenv("EDGEKD_DATA", str(FMNIST_DIR))
    monkeypatch.setattr(fm, "_download", lambda *a: pytest.fail("an explicit data.root must never download"))
    empty = tmp_path / "empty"
    (empty / "fashion-mnist").mkdir(parents=True)
    (empty / "readme.txt").write_text("not the data")
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(root=str(empty), download=download), 0)
    msg = str(err.value)
    assert f"data.root {empty} holds no Fashion-MNIST files" in msg
    for spec in fm.FILES.values():
        assert spec.stem in msg
    assert str(empty / "FashionMNIST/raw") in msg and "fix:" in msg


def test_cifar10_absent_without_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEKD_DATA", raising=False)
    with pytest.raises(DataError, match="CIFAR-10 not found") as err:
        build_dataset(DataConfig(dataset="cifar10", download=False), 0)
    assert str(tmp_path / "home" / ".cache" / "edgekd" / "cifar-10-batches-py") in str(err.value)


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_explicit_root_is_used_or_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match="does not exist") as err:
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "c"), download=download), 0)
    assert str(tmp_path / "c" / "cifar-10-batches-py") in str(err.value) and "data_batch_1" in str(err.value)
    (tmp_path / "c" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match="missing data_batch_2.*test_batch"):
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path / "c"), download=download), 0)


def test_image_folder_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data.root {tmp_path / 'nope'} does not exist"):
        build_dataset(DataConfig(dataset="image_folder", root=str(tmp_path / "nope"), image_size=16), 0)


def test_registry_miss_lists_valid_datasets() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; valid: cifar10, cifar100, fashion_mnist, image_folder"):
        build_dataset(DataConfig(dataset="mnist"), 0)


@requires_fashion_mnist
def test_build_dataset_needs_no_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgekd.config import DataConfig\nfrom edgekd.data import build_dataset\n"
        f"b = build_dataset(DataConfig(root={str(FMNIST_DIR)!r}, download=False, val_size=50, train_subset=100,"
        " test_subset=100), 0)\n"
        "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n"
        "print(len(b.train), len(b.val), len(b.test))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["100", "50", "100"]


# ------------------------------------------------------------------ splits


def _indexed(labels: np.ndarray) -> Split:
    """Images that encode their own row index (4 bytes), with the given labels."""
    idx = np.arange(len(labels), dtype=">u4").view(np.uint8).reshape(-1, 1, 2, 2)
    return Split(idx.copy(), labels)


def _rows(split: Split) -> np.ndarray:
    return split.images.reshape(-1, 4).copy().view(">u4").ravel()


@requires_fashion_mnist
def test_val_split_disjoint_stratified_and_seeded() -> None:
    _, test, *_ = DATASETS.get("fashion_mnist")(DataConfig(root=str(FMNIST_DIR), download=False))
    full = _indexed(test.labels)  # the real label distribution, 10 000 samples
    train, val = split_train_val(full, 1000, seed=7)
    tr, va = _rows(train), _rows(val)
    assert len(va) == 1000 and len(tr) == 9000
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(10000))
    assert val.class_counts(10).tolist() == [100] * 10  # stratified
    assert np.array_equal(va, _rows(split_train_val(full, 1000, seed=7)[1]))  # same seed, same split
    assert not np.array_equal(va, _rows(split_train_val(full, 1000, seed=8)[1]))  # other seed, other split
    assert np.array_equal(full.labels[va], val.labels)  # labels travel with their images


def test_shared_subset_is_stratified_and_deterministic(fmnist_small) -> None:
    b = fmnist_small
    assert (len(b.train), len(b.val), len(b.test)) == (2000, 500, 1000)
    assert b.train.class_counts(10).tolist() == [200] * 10
    assert b.val.class_counts(10).tolist() == [50] * 10
    assert b.test.class_counts(10).tolist() == [100] * 10
    assert (b.channels, b.image_size, b.num_classes) == (1, (28, 28), 10)
    again = build_dataset(small_fmnist_config(), seed=0)
    assert np.array_equal(again.train.images, b.train.images) and np.array_equal(again.val.labels, b.val.labels)
    other = build_dataset(small_fmnist_config(), seed=1)
    assert not np.array_equal(other.val.images, b.val.images)


def test_bad_sizes_are_config_errors(fmnist_small) -> None:
    with pytest.raises(ConfigError, match="data.val_size"):
        build_dataset(small_fmnist_config(val_size=60000), 0)
    with pytest.raises(ConfigError, match="data.test_subset"):
        build_dataset(small_fmnist_config(test_subset=20000), 0)


# ------------------------------------------------------------------ loader


def _batches(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_is_a_pure_function_of_seed_and_epoch(fmnist_small) -> None:
    aug = AugmentConfig(crop_padding=2, hflip=True, noise_std=0.05)
    a = BatchLoader(fmnist_small.train, 128, shuffle=True, augment=aug, seed=3)
    b = BatchLoader(fmnist_small.train, 128, shuffle=True, augment=aug, seed=3)
    first = _batches(a, 2)
    _batches(b, 0)  # a different history must not matter
    again = _batches(b, 2)
    assert len(first) == len(a) == 2000 // 128
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(first[0][1], _batches(a, 3)[0][1])  # a new epoch, a new order
    other_seed = BatchLoader(fmnist_small.train, 128, shuffle=True, augment=aug, seed=4)
    assert not torch.equal(first[0][1], _batches(other_seed, 2)[0][1])


def test_augmentation_changes_images_keeps_shape_and_range(fmnist_small) -> None:
    split = fmnist_small.train
    plain = _batches(BatchLoader(split, 64, shuffle=True, augment=None, seed=0), 1)[0]
    for aug in (AugmentConfig(crop_padding=2, hflip=True), AugmentConfig(crop_padding=0, hflip=False, noise_std=0.1)):
        x, y = _batches(BatchLoader(split, 64, shuffle=True, augment=aug, seed=0), 1)[0]
        assert torch.equal(y, plain[1])  # the order does not depend on the augmentation
        assert x.shape == plain[0].shape == (64, 1, 28, 28) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert (x - plain[0]).abs().mean() > 0.01


def test_crop_is_a_shift_and_flip_a_mirror(fmnist_small) -> None:
    split, p = fmnist_small.train, 2
    plain, _ = _batches(BatchLoader(split, 32, shuffle=True, seed=5), 0)[0]
    cropped, _ = _batches(BatchLoader(split, 32, shuffle=True, augment=replace(NO_AUG, crop_padding=p), seed=5), 0)[0]
    padded = torch.nn.functional.pad(plain, (p, p, p, p))
    for i in range(32):
        shifts = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                  if torch.equal(cropped[i], padded[i, :, dy : dy + 28, dx : dx + 28])]
        assert shifts, f"sample {i} is not a padded crop of its original"
    flipped, _ = _batches(BatchLoader(split, 256, shuffle=True, augment=replace(NO_AUG, hflip=True), seed=5), 0)[0]
    plain, _ = _batches(BatchLoader(split, 256, shuffle=True, seed=5), 0)[0]
    mirrored = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, plain)]
    kept = [torch.equal(f, o) for f, o in zip(flipped, plain)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0.3 < sum(m and not k for m, k in zip(mirrored, kept)) / 256 < 0.7


def test_corruption_augmentation_is_seeded(fmnist_small) -> None:
    aug = replace(NO_AUG, corruption_prob=1.0, corruption_max_severity=3)
    plain = _batches(BatchLoader(fmnist_small.train, 64, shuffle=True, seed=1), 0)[0][0]
    one = _batches(BatchLoader(fmnist_small.train, 64, shuffle=True, augment=aug, seed=1), 0)[0][0]
    two = _batches(BatchLoader(fmnist_small.train, 64, shuffle=True, augment=aug, seed=1), 0)[0][0]
    assert torch.equal(one, two)
    assert not torch.equal(one, plain) and one.shape == plain.shape
    assert float(one.min()) >= 0.0 and float(one.max()) <= 1.0


def test_lengths_and_drop_last(fmnist_small) -> None:
    train, val, test = make_loaders(fmnist_small, small_fmnist_config(batch_size=64, eval_batch_size=256), seed=0)
    assert len(train) == 2000 // 64 and all(len(y) == 64 for _, y in train)
    assert len(val) == 2 and sum(len(y) for _, y in val) == 500
    assert len(test) == 4 and torch.equal(torch.cat([y for _, y in test]), torch.from_numpy(fmnist_small.test.labels))
    tiny = Split(fmnist_small.val.images[:10], fmnist_small.val.labels[:10])
    assert [len(y) for _, y in BatchLoader(tiny, 64, shuffle=True)] == [10]  # a lone partial batch is kept


def test_ddp_shards_are_disjoint_equal_and_cover(fmnist_small) -> None:
    n, world = len(fmnist_small.train), 3
    shards = [BatchLoader(fmnist_small.train, 100, shuffle=True, seed=9, rank=r, world_size=world) for r in range(world)]
    idx = [s.indices(epoch=4) for s in shards]
    assert [len(i) for i in idx] == [600] * world and len({len(s) for s in shards}) == 1  # equal steps per rank
    assert len(set(torch.cat(idx).tolist())) == 1800  # disjoint
    full = [BatchLoader(fmnist_small.train, 100, shuffle=True, seed=9, rank=r, world_size=world, drop_last=False)
            for r in range(world)]
    covered = torch.cat([s.indices(epoch=4) for s in full])
    assert sorted(covered.tolist()) == list(range(n))  # every sample exactly once
    labels = torch.cat([torch.cat([y for _, y in _batches(s, 4)]) for s in shards])
    assert torch.equal(labels, torch.from_numpy(fmnist_small.train.labels)[torch.cat(idx)])


def test_extras_follow_their_samples(fmnist_small) -> None:
    split = fmnist_small.val
    logits = torch.nn.functional.one_hot(torch.from_numpy(split.labels), 10).float() * 5.0
    ids = np.arange(len(split))
    loader = BatchLoader(split, 64, shuffle=True, seed=2, extras=[logits, ids])
    seen = []
    for x, y, t, i in _batches(loader, 1):
        assert torch.equal(t.argmax(1), y)
        assert torch.equal(x, torch.from_numpy(split.images[i.numpy()]).float() / 255.0)
        seen.append(i)
    assert len(torch.cat(seen)) == 448 and len(set(torch.cat(seen).tolist())) == 448
    with pytest.raises(ValueError, match="extras"):
        BatchLoader(split, 64, shuffle=False, extras=[torch.zeros(3, 10)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_on_cuda_equal_cpu_batches(fmnist_small) -> None:
    aug = AugmentConfig(crop_padding=2, hflip=True, noise_std=0.05)
    cpu = _batches(BatchLoader(fmnist_small.train, 128, shuffle=True, augment=aug, seed=1), 2)
    gpu = _batches(BatchLoader(fmnist_small.train, 128, shuffle=True, augment=aug, seed=1, device="cuda"), 2)
    assert gpu[0][0].is_cuda and len(gpu) == len(cpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


# ------------------------------------------------------------------ image folder


def _write_pngs(root: Path, bundle, per_class: int, rgb_first: bool = False) -> None:
    from PIL import Image

    for c in (0, 1, 7):  # T-shirt/top, Trouser, Sneaker
        folder = root / bundle.classes[c].replace("/", "-")
        folder.mkdir(parents=True)
        rows = np.flatnonzero(bundle.test.labels == c)[:per_class]
        for k, r in enumerate(rows):
            img = Image.fromarray(bundle.test.images[r, 0])
            (img.convert("RGB") if rgb_first and k == 0 else img).save(folder / f"{k}.png")
    (root / "notes.txt").write_text("not an image")


def test_image_folder_single_tree(tmp_path: Path, fmnist_small) -> None:
    _write_pngs(tmp_path / "imgs", fmnist_small, per_class=10)
    cfg = DataConfig(dataset="image_folder", root=str(tmp_path / "imgs"), image_size=16, val_size=3)
    b = build_dataset(cfg, seed=0)
    assert b.classes == ["Sneaker", "T-shirt-top", "Trouser"] and b.channels == 1  # all grayscale: one channel
    assert b.image_size == (16, 16) and b.train.images.dtype == np.uint8
    assert (len(b.train), len(b.val), len(b.test)) == (21, 3, 6)  # 20 % of each class to test, fixed split
    assert b.test.class_counts(3).tolist() == [2, 2, 2]
    again = build_dataset(replace(cfg, val_size=4), seed=5)
    assert np.array_equal(again.test.images, b.test.images)  # the test split does not follow the run seed
    assert 0.05 < b.mean[0] < 0.6 and b.std[0] > 0.05


def test_image_folder_train_test_layout_rgb_and_errors(tmp_path: Path, fmnist_small) -> None:
    root = tmp_path / "tt"
    _write_pngs(root / "train", fmnist_small, per_class=6, rgb_first=True)
    _write_pngs(root / "test", fmnist_small, per_class=2)
    cfg = DataConfig(dataset="image_folder", root=str(root), image_size=20, val_size=3)
    b = build_dataset(cfg, seed=0)
    assert b.channels == 3 and b.train.images.shape == (15, 3, 20, 20) and len(b.test) == 6  # one RGB file: all RGB
    assert np.array_equal(b.train.images[:, 0], b.train.images[:, 1])  # gray content replicated
    native = build_dataset(replace(cfg, image_size=None), 0)  # unset: the images' own 28x28
    assert native.image_size == (28, 28) and native.train.images.shape[1:] == (3, 28, 28)
    bad = root / "test" / "Trouser" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(DataError) as err:
        build_dataset(cfg, 0)
    assert str(bad) in str(err.value)
    shutil.rmtree(root / "test" / "Trouser")
    (root / "test" / "Hat").mkdir()
    (root / "test" / "Hat" / "x.png").write_bytes((root / "train" / "Trouser" / "0.png").read_bytes())
    with pytest.raises(DataError, match="Hat"):
        build_dataset(cfg, 0)
