"""Corruptions on real Fashion-MNIST test images: contract, determinism, severity ordering."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import fmnist_prefix
from edgekd.errors import ConfigError
from edgekd.pixels import to_float
from edgekd.robustness.corruptions import CORRUPTIONS, apply_corruption, bilinear_sample, gaussian_filter

# corruptions whose output does not depend on the random generator
DETERMINISTIC = {"gaussian_blur", "defocus_blur", "contrast", "brightness", "pixelate", "jpeg"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return to_float(fmnist_prefix("test", 64)[0])  # the first 64 test images, in file order


@pytest.fixture(scope="module")
def rgb(images: np.ndarray) -> np.ndarray:
    """CIFAR-shaped inputs (3x32x32) built from the real images: padded and tinted per channel."""
    x = np.pad(images[:16], ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    tint = np.array([1.0, 0.7, 0.4], dtype=np.float32)[None, :, None, None]
    return (np.repeat(x, 3, axis=1) * tint + 0.1 * (1 - tint)).astype(np.float32)


def test_the_fourteen_corruptions_are_registered() -> None:
    expected = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
                "contrast", "brightness", "pixelate", "jpeg", "elastic", "rotate", "translate", "occlusion"}
    assert expected <= set(CORRUPTIONS.names())


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_contract_determinism_and_severity_order(name: str, images: np.ndarray) -> None:
    dist = []
    for s in range(1, 6):
        out = apply_corruption(name, images, s, np.random.default_rng(7))
        assert out.shape == images.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        again = apply_corruption(name, images, s, np.random.default_rng(7))
        np.testing.assert_array_equal(out, again)
        dist.append(float(np.abs(out - images).mean()))
    assert dist[0] > 1e-3, f"{name} severity 1 leaves the images unchanged"
    steps = np.diff(dist)
    assert (steps >= -1e-6).all(), f"{name}: distance not monotone over severities {dist}"
    assert (steps > 1e-6).sum() >= 3, f"{name}: severities barely differ {dist}"
    if name not in DETERMINISTIC:
        other = apply_corruption(name, images, 3, np.random.default_rng(8))
        assert not np.array_equal(other, apply_corruption(name, images, 3, np.random.default_rng(7)))


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_rgb_32px_inputs(name: str, rgb: np.ndarray) -> None:
    clean = rgb.copy()
    out = apply_corruption(name, rgb, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(rgb, clean)  # the input is not modified in place
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - rgb).mean() > 1e-3


def test_bad_severity_and_name_raise_config_errors(images: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="1..5"):
        apply_corruption("contrast", images, 6, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="valid: .*gaussian_noise"):
        apply_corruption("fog_of_war", images, 1, np.random.default_rng(0))


def test_specific_values(images: np.ndarray) -> None:
    x = images[:4]
    # contrast keeps each image's mean and scales deviations by 0.15 at severity 5
    out = apply_corruption("contrast", x, 5, np.random.default_rng(0))
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(out - out.mean(axis=(1, 2, 3), keepdims=True),
                               0.15 * (x - x.mean(axis=(1, 2, 3), keepdims=True)), atol=1e-5)
    # occlusion paints a 15x15 mid-gray square (0.55 * 28 rounds to 15) into each image
    occ = apply_corruption("occlusion", x, 5, np.random.default_rng(0))
    changed_or_gray = (occ == 0.5)
    assert all(changed_or_gray[i].sum() >= 15 * 15 for i in range(4))


def test_blur_preserves_constant_and_mass(images: np.ndarray) -> None:
    flat = np.full((2, 1, 28, 28), 0.3, dtype=np.float32)
    np.testing.assert_allclose(gaussian_filter(flat, 1.0), flat, atol=1e-6)
    # an impulse in the middle spreads into a symmetric kernel whose sum is 1
    imp = np.zeros((1, 1, 15, 15), dtype=np.float32)
    imp[0, 0, 7, 7] = 1.0
    b = gaussian_filter(imp, 1.0)
    assert b.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(b, b[..., ::-1, :], atol=1e-7)
    np.testing.assert_allclose(b, np.swapaxes(b, -1, -2), atol=1e-7)


def test_bilinear_sampling_identity_and_half_pixel_shift(images: np.ndarray) -> None:
    x = images[:2]
    ys, xs = np.meshgrid(np.arange(28, dtype=np.float32), np.arange(28, dtype=np.float32), indexing="ij")
    ys, xs = np.broadcast_to(ys, (2, 28, 28)), np.broadcast_to(xs, (2, 28, 28))
    np.testing.assert_allclose(bilinear_sample(x, ys, xs), x, atol=1e-6)
    shifted = bilinear_sample(x, ys, xs + 0.5)
    np.testing.assert_allclose(shifted[..., :-1], 0.5 * (x[..., :-1] + x[..., 1:]), atol=1e-6)
