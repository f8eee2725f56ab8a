"""KD losses: hand-computed golden values, the T^2 factor, the two bugs of the seed's sample code,
and the contract every registered loss must keep inside a ``Distiller``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DistillConfig, ModelConfig, TrainConfig
from edgekd.losses import KD_LOSSES, Distiller
from edgekd.losses.ce import CrossEntropyOnly
from edgekd.losses.hinton import HintonKD, soft_kl
from edgekd.models import build_student, build_teacher
from helpers import train_batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# A fixed 2x3 example: batch 2, 3 classes.
S = [[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]]
T_ = [[2.0, 1.0, 0.1], [0.5, 0.2, 3.0]]
Y = [1, 2]
# Computed by hand (numpy, explicit softmax / KL / CE formulas) for T=2, alpha=0.7:
GOLDEN_KL_T2 = 0.055419  # (1/B) sum_i sum_k pt_ik (log pt_ik - log ps_ik), p = softmax(z / 2)
GOLDEN_CE = 0.323077  # -(1/B) sum_i log softmax(s_i)[y_i]
GOLDEN_HINTON = 0.252095  # 0.7 * 2^2 * KL + 0.3 * CE


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_kl(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    ps, pt = _np_softmax(s / temp), _np_softmax(t / temp)
    return float(np.sum(pt * (np.log(pt) - np.log(ps))) / len(s))


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(S), torch.tensor(T_), torch.tensor(Y)


def test_hinton_golden_value() -> None:
    s, t, y = _tensors()
    loss = HintonKD(temperature=2.0, alpha=0.7)(s, t, y)
    # abs=1e-6: the goldens are written to 6 decimals (±5e-7) and are O(0.05-0.3), so this is ~1e-5 relative;
    # float32 differences between CPUs are ~1e-8 at this scale
    assert loss.item() == pytest.approx(GOLDEN_HINTON, abs=1e-6)
    assert soft_kl(s, t, 2.0).item() == pytest.approx(GOLDEN_KL_T2, abs=1e-6)
    assert HintonKD(temperature=2.0, alpha=0.0)(s, t, y).item() == pytest.approx(GOLDEN_CE, abs=1e-6)


@pytest.mark.parametrize("temp", [1.0, 3.0, 8.0])
def test_alpha_one_is_t_squared_kl(temp: float) -> None:
    s, t, y = _tensors()
    expected = temp**2 * _np_kl(np.array(S), np.array(T_), temp)
    assert HintonKD(temperature=temp, alpha=1.0)(s, t, y).item() == pytest.approx(expected, rel=1e-5)


def test_t_squared_keeps_gradient_scale() -> None:
    """d/ds [T^2 KL] -> (s - t)/(K B) for large T, independent of T (Hinton et al., sec. 2)."""
    s, t, y = _tensors()
    norms = {}
    for temp in (10.0, 20.0):
        s_ = s.clone().requires_grad_(True)
        HintonKD(temperature=temp, alpha=1.0)(s_, t, y).backward()
        norms[temp] = s_.grad.norm().item()
    assert norms[20.0] / norms[10.0] == pytest.approx(1.0, abs=0.05)  # without T^2 it would be ~1/4


def test_zero_when_student_equals_teacher() -> None:
    _, t, y = _tensors()
    assert HintonKD(temperature=4.0, alpha=1.0)(t.clone(), t, y).item() == pytest.approx(0.0, abs=1e-7)


def test_regression_log_softmax_target_without_log_target() -> None:
    """Seed bug 1: KLDivLoss(log_softmax(s/T), log_softmax(t/T)) without log_target=True is not the KL."""
    s, t, y = _tensors()
    temp = 2.0
    correct = temp**2 * _np_kl(np.array(S), np.array(T_), temp)
    buggy = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1)).item() * temp**2
    ours = HintonKD(temperature=temp, alpha=1.0)(s, t, y).item()
    assert ours == pytest.approx(correct, rel=1e-5)
    assert not math.isclose(buggy, correct, rel_tol=1e-2)


def test_regression_missing_t_squared() -> None:
    """Seed bug 2: the soft term without T^2. Ours is exactly T^2 times that value."""
    s, t, y = _tensors()
    temp = 4.0
    without = soft_kl(s, t, temp).item()
    ours = HintonKD(temperature=temp, alpha=1.0)(s, t, y).item()
    assert ours == pytest.approx(temp**2 * without, rel=1e-6)
    assert not math.isclose(ours, without, rel_tol=1e-2)


def test_label_smoothing_only_touches_ce() -> None:
    s, t, y = _tensors()
    smooth = 0.1
    p = _np_softmax(np.array(S))
    q = np.full_like(p, smooth / 3)
    q[np.arange(2), Y] += 1 - smooth
    expected_ce = float(-np.mean(np.sum(q * np.log(p), axis=1)))
    assert HintonKD(2.0, 0.0, smooth)(s, t, y).item() == pytest.approx(expected_ce, abs=1e-6)
    assert HintonKD(2.0, 1.0, smooth)(s, t, y).item() == pytest.approx(HintonKD(2.0, 1.0)(s, t, y).item())


def test_ce_loss_ignores_teacher() -> None:
    s, t, y = _tensors()
    ce = CrossEntropyOnly()
    assert ce(s, t, y).item() == pytest.approx(GOLDEN_CE, abs=1e-6)
    assert ce(s, -5 * t, y).item() == ce(s, t, y).item()


def test_losses_built_from_config() -> None:
    cfg = DistillConfig(loss="hinton", temperature=3.0, alpha=0.25, train=TrainConfig(label_smoothing=0.05))
    loss = KD_LOSSES.get("hinton")(cfg)
    assert isinstance(loss, HintonKD)
    assert (loss.temperature, loss.alpha, loss.label_smoothing) == (3.0, 0.25, 0.05)
    assert isinstance(KD_LOSSES.get("ce")(cfg), CrossEntropyOnly)
    with pytest.raises(Exception, match="valid: .*hinton"):
        KD_LOSSES.get("nope")


# --------------------------------------------------------------------------- Distiller contract


@pytest.fixture(scope="module")
def batch(fmnist_small) -> tuple[torch.Tensor, torch.Tensor]:
    """8 real Fashion-MNIST training images in [0, 1] and their labels."""
    return train_batch(fmnist_small, 8)


def _pair(bundle) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = build_student(ModelConfig(arch="mobilenet_v3_small", width=0.5), bundle)
    teacher = build_teacher(ModelConfig(arch="resnet18", width=0.25), bundle)
    return student, teacher


# The contract every registered loss keeps inside a Distiller (finite, gradients, zero at the teacher,
# goldens) is parametrized over KD_LOSSES in tests/test_kd_contract.py.


def test_teacher_logits_usable_and_cache_skips_teacher(fmnist_small, batch) -> None:
    x, y = batch
    student, teacher = _pair(fmnist_small)
    distiller = Distiller(student, teacher, HintonKD())
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    t = distiller.teacher_forward(x)
    assert len(calls) == 1 and not t.is_inference() and not t.requires_grad
    student.eval()  # deterministic student output for the comparison
    loss_live, _ = distiller.step(student, (x, y))
    loss_cached, _ = distiller.step(student, (x, y, t))  # cached logits: batch[2]
    assert len(calls) == 2  # the cached step did not run the teacher
    assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-6)


# --------------------------------------------------------------------------- method settings, checked at load


@pytest.mark.parametrize("distill, message", [
    ({"loss": "ctkd", "temperature": 30}, r"distill\.temperature.*between distill\.ctkd\.min_temperature"),
    ({"augmix": {"ops": ["fog"]}}, r"distill\.augmix\.ops\[0\].*fog.*valid: .*contrast"),
    ({"augmix": {"max_severity": 6}}, r"distill\.augmix\.max_severity"),
    ({"loss": "multi_teacher", "teacher_weighting": "fixed", "teacher_weights": [1.0],
      "teachers": [{"arch": "wrn16_4", "weights": "w.pt"}]}, r"teacher_weights.*2 non-negative numbers"),
    ({"teacher_weights": [1.0]}, r"teacher_weighting: fixed"),
    ({"teacher_weighting": "median"}, r"distill\.teacher_weighting.*mean, fixed, confidence"),
    ({"loss": "multi_teacher", "teachers": [{"arch": "resnet99", "weights": "w.pt"}]}, r"distill\.teachers\[0\]\.arch"),
    ({"loss": "fitnets", "cache_teacher_logits": True}, r"cache_teacher_logits cannot serve.*fitnets"),
    ({"ema_decay": 1.0}, r"distill\.ema_decay"),
    ({"features": {"hint_weight": -1}}, r"distill\.features\.hint_weight"),
    ({"dkd": {"beta": -8}}, r"distill\.dkd\.beta"),
])
def test_method_settings_are_checked_at_load(distill: dict, message: str) -> None:
    from edgekd.config import config_from_dict
    from edgekd.errors import ConfigError

    data = {"data": {"augment": {"crop_padding": 0, "hflip": False}}, "distill": distill}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)
