"""Calibration, OOD and corruption-error metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgekd.config import RobustnessEvalConfig
from edgekd.robustness.evaluate import add_mce, calibration
from edgekd.robustness.metrics import (auroc, ece, energy_score, fit_temperature, mce, msp_score, nll, reliability,
                                       softmax)
from edgekd.robustness.ood import OOD_SETS, make_ood, read_image_folder

# confidences 0.9, 0.7 (wrong), 0.55, 0.95, 0.65 -> bins (5 bins) 4, 3, 2, 4, 3
PROBS = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.05, 0.95], [0.65, 0.35]])
LABELS = np.array([0, 0, 0, 1, 0])


def test_ece_and_reliability_by_hand() -> None:
    # bin 4: n=2 acc 1 conf .925 ; bin 3: n=2 acc .5 conf .675 ; bin 2: n=1 acc 1 conf .55
    # ECE = (2*.075 + 2*.175 + 1*.45) / 5 = 0.19
    assert ece(PROBS, LABELS, n_bins=5) == pytest.approx(0.19, abs=1e-12)
    r = reliability(PROBS, LABELS, n_bins=5)
    assert r["count"] == [0, 0, 1, 2, 2]
    assert r["accuracy"] == pytest.approx([0, 0, 1.0, 0.5, 1.0])
    assert r["confidence"] == pytest.approx([0, 0, 0.55, 0.675, 0.925])
    assert r["bins"] == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])


def test_auroc_counts_ties_as_half() -> None:
    # pairs won: 0.9 -> 3, 0.8 -> 2, each 0.5 -> 1 + 0.5 tie; total 8 of 12
    assert auroc([0.9, 0.8, 0.5, 0.5], [0.5, 0.3, 0.85]) == pytest.approx(8 / 12, abs=1e-12)
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5


def test_scores_by_hand() -> None:
    logits = np.array([[0.0, 0.0], [0.0, math.log(3.0)]])
    np.testing.assert_allclose(msp_score(logits), [0.5, 0.75])
    np.testing.assert_allclose(energy_score(logits), [math.log(2.0), math.log(4.0)])
    np.testing.assert_allclose(energy_score(logits, T=2.0), [2 * math.log(2.0), 2 * math.log(1 + math.sqrt(3.0))])
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])  # no overflow


def test_mce_by_hand() -> None:
    model = {"a": [0.2, 0.4], "b": [0.1, 0.3]}
    ref = {"a": [0.4, 0.6], "b": [0.2, 0.2]}
    m, rel = mce(model, ref, clean_error_model=0.1, clean_error_ref=0.05)
    # CE_a = 0.6/1.0, CE_b = 0.4/0.4 ; rel_a = 0.4/0.9, rel_b = 0.2/0.3
    assert m == pytest.approx(0.8)
    assert rel == pytest.approx((0.4 / 0.9 + 0.2 / 0.3) / 2)
    assert mce(model, ref)[1] is None
    # a model measured against itself scores exactly 1
    assert mce(model, model, 0.1, 0.1) == pytest.approx((1.0, 1.0))


def test_add_mce_fills_the_schema_fields() -> None:
    cur = {"corruption": {"corruption_errors": {"a": [0.2, 0.4]}, "clean_error": 0.1}}
    ref = {"corruption": {"corruption_errors": {"a": [0.4, 0.6]}, "clean_error": 0.05}}
    add_mce(cur, ref)
    assert cur["corruption"]["mce"] == pytest.approx(0.6)
    assert cur["corruption"]["relative_mce"] == pytest.approx(0.4 / 0.9)


def _overconfident(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Logits 8x too sharp: the true temperature is 8 and 30% of predictions are wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    base = rng.normal(size=(n, 10))
    base[np.arange(n), labels] += 1.5
    # sample labels from the calibrated distribution so T=8 is the best temperature
    p = softmax(base)
    labels = np.array([rng.choice(10, p=row) for row in p])
    return 8.0 * base, labels


def test_temperature_scaling_lowers_nll_and_ece() -> None:
    val_logits, val_labels = _overconfident(0)
    test_logits, test_labels = _overconfident(1)
    t = fit_temperature(val_logits, val_labels)
    assert 5.0 < t < 12.0
    # the search finds the minimum of a fine grid to within the grid spacing
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = grid[np.argmin([nll(val_logits, val_labels, g) for g in grid])]
    assert abs(math.log(t) - math.log(best)) < 0.01
    assert nll(test_logits, test_labels, t) < nll(test_logits, test_labels) - 1.0
    cal = calibration(test_logits, test_labels, val_logits, val_labels, temperature_scaling=True)
    assert cal["temperature"] == pytest.approx(t)
    assert cal["ece_temperature_scaled"] < cal["ece"] - 0.2
    assert sum(cal["reliability"]["count"]) == len(test_labels)
    assert calibration(test_logits, test_labels, None, None, True)["temperature"] is None


def test_a_temperature_at_the_end_of_its_search_reports_no_scaled_calibration() -> None:
    """A validation split the model classifies perfectly drives T to its lower bound (NLL keeps falling as
    T -> 0): that T calibrates nothing, so the check reports no scaled ECE/NLL, as the export refuses to ship it."""
    test_logits, test_labels = _overconfident(1)
    val_labels = np.arange(200) % 10
    val_logits = np.eye(10)[val_labels] * 3.0  # every validation image right, with margin
    cal = calibration(test_logits, test_labels, val_logits, val_labels, temperature_scaling=True)
    assert cal["temperature"] == pytest.approx(0.05, rel=0.01) and cal["temperature_at_search_bound"] is True
    assert cal["ece_temperature_scaled"] is None and cal["nll_temperature_scaled"] is None
    assert "temperature_at_search_bound" not in calibration(test_logits, test_labels, *_overconfident(0), True)


def test_ood_sets_shapes_ranges_and_determinism(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    for name in ("uniform", "blobs", "inverted"):
        a = make_ood(name, x, np.random.default_rng(3))
        b = make_ood(name, x, np.random.default_rng(3))
        assert a.shape == x.shape and a.dtype == np.float32
        assert 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(make_ood("inverted", x, rng), 1.0 - x)
    blobs = make_ood("blobs", x, rng)
    assert 0.05 < (blobs > 0).mean() < 0.95  # blobs, neither empty nor full
    assert set(OOD_SETS.names()) >= {"uniform", "blobs", "inverted", "folder"}


def test_ood_folder_reads_real_image_files(tmp_path) -> None:
    from PIL import Image

    sub = tmp_path / "any" / "nested"
    sub.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, dtype=np.uint8)).save(sub / f"{i}.png")
    out = read_image_folder(tmp_path, size=(28, 28), channels=1, limit=10, rng=np.random.default_rng(0))
    assert out.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(sorted(out.mean(axis=(1, 2, 3))), [0.0, 60 / 255, 120 / 255], atol=1e-6)
    x = np.zeros((2, 3, 32, 32), dtype=np.float32)
    assert make_ood("folder", x, np.random.default_rng(0), folder=str(tmp_path)).shape == (2, 3, 32, 32)


def test_ood_folder_errors_name_the_fix(tmp_path) -> None:
    from edgekd.errors import ConfigError, DataError

    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with pytest.raises(ConfigError, match="ood_folder"):
        make_ood("folder", x, np.random.default_rng(0))
    with pytest.raises(DataError, match="no PNG"):
        make_ood("folder", x, np.random.default_rng(0), folder=str(tmp_path))


def test_default_config_names_registered_sets() -> None:
    for name in RobustnessEvalConfig().ood:
        OOD_SETS.get(name)


def test_onnx_only_path_imports_no_torch() -> None:
    """The deployment side evaluates a numpy predict_fn without importing torch."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from edgekd.config import RobustnessEvalConfig\n"
        "from edgekd.robustness import evaluate_robustness\n"
        "rng = np.random.default_rng(0); x = rng.random((40, 1, 28, 28), dtype=np.float32)\n"
        "w = rng.normal(size=(784, 10)).astype(np.float32); y = (x.reshape(40, -1) @ w).argmax(1)\n"
        "cfg = RobustnessEvalConfig(corruptions=['jpeg', 'rotate'], severities=[1], images=40,\n"
        "    epsilons=[0.05], square_queries=5, adversarial_images=10)\n"
        "r = evaluate_robustness(lambda a: a.reshape(len(a), -1) @ w, x, y, cfg, seed=0)\n"
        "assert r['corruption']['clean_accuracy'] == 1.0, r['corruption']\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
