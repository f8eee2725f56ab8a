"""Robust distillation losses (ARD, RSLAD) on real Fashion-MNIST images through the Distiller."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DistillConfig, RobustKDConfig, config_from_dict
from edgekd.errors import ConfigError
from edgekd.losses import KD_LOSSES, Distiller
from edgekd.losses.ard import ARDLoss
from edgekd.losses.hinton import HintonKD
from edgekd.losses.rslad import RSLADLoss
from edgekd.robustness.attacks import kd_kl

ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    img, lab = ROOT / "t10k-images-idx3-ubyte.gz", ROOT / "t10k-labels-idx1-ubyte.gz"
    if not img.is_file():
        pytest.skip(f"Fashion-MNIST not found in {ROOT} (apt-get install dataset-fashion-mnist)")
    with gzip.open(img) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: 48 * 784].reshape(48, 1, 28, 28)
    with gzip.open(lab) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:48]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def _net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(width * 49, 10),
    )


def _hand_kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, alpha: float) -> torch.Tensor:
    """alpha T^2 sum_k p_t (log p_t - log p_s) / B + (1 - alpha) CE, written out by hand."""
    log_ps = s / temp - torch.logsumexp(s / temp, dim=1, keepdim=True)
    log_pt = t / temp - torch.logsumexp(t / temp, dim=1, keepdim=True)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
    ce = -(s - torch.logsumexp(s, dim=1, keepdim=True))[torch.arange(len(y)), y].mean()
    return alpha * temp**2 * kl + (1 - alpha) * ce


def test_registered_and_built_from_config() -> None:
    robust = RobustKDConfig(attack="pgd", epsilon=0.05, steps=3, beta=0.5)
    cfg = DistillConfig(loss="ard", temperature=3.0, alpha=0.7, robust=robust)
    ard = KD_LOSSES.get("ard")(cfg)
    assert isinstance(ard, ARDLoss) and (ard.temperature, ard.alpha, ard.robust.steps) == (3.0, 0.7, 3)
    rslad = KD_LOSSES.get("rslad")(cfg)
    assert isinstance(rslad, RSLADLoss) and rslad.robust.epsilon == 0.05
    with pytest.raises(ConfigError, match="epsilon"):  # validated once, at config load
        config_from_dict({"distill": {"loss": "ard", "robust": {"epsilon": -0.1}}})


def test_ard_with_zero_epsilon_is_hinton_kd(batch) -> None:
    x, y = batch
    student, teacher = _net(8, 0).train(), _net(16, 1).eval()
    with torch.no_grad():
        t = teacher(x)
    ard = ARDLoss(temperature=4.0, alpha=0.9, robust=RobustKDConfig(epsilon=0.0))
    loss, s = ard.student_step(student, x, y, t)
    with torch.no_grad():  # x' = x: the student's clean logits are those of x alone, BatchNorm included
        torch.testing.assert_close(s.detach(), student(x), rtol=1e-4, atol=1e-5)
    expected = _hand_kd(s.detach(), t, y, 4.0, 0.9)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(HintonKD(4.0, 0.9)(s.detach(), t, y).item(), rel=1e-5)
    # RSLAD at epsilon 0: (5/6 + 1/6) KL(t || s) at temperature 1
    loss_r, s_r = RSLADLoss(RobustKDConfig(epsilon=0.0)).student_step(student, x, y, t)
    assert loss_r.item() == pytest.approx(_hand_kd(s_r.detach(), t, y, 1.0, 1.0).item(), rel=1e-5)


@pytest.mark.parametrize("attack,steps", [("fgsm_rs", 1), ("pgd", 3)])
@pytest.mark.parametrize("loss_cls", [ARDLoss, RSLADLoss])
def test_adversarial_inputs_within_eps_and_harder(batch, attack: str, steps: int, loss_cls: type) -> None:
    x, y = batch
    student, teacher = _net(8, 0).train(), _net(16, 1).eval()
    with torch.no_grad():
        t = teacher(x)
    eps = 8 / 255
    loss = loss_cls(robust=RobustKDConfig(attack=attack, epsilon=eps, steps=steps))
    torch.manual_seed(0)
    x_adv = loss.adversarial_inputs(student, x, y, t)
    assert student.training  # the attack runs in eval mode and restores the mode
    diff = (x_adv - x).abs()
    assert 0 < diff.max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)
    student.eval()
    temp = loss.attack_temperature
    soft = F.softmax(t / temp, dim=1)
    with torch.no_grad():
        kl_clean, kl_adv = kd_kl(student(x) / temp, soft), kd_kl(student(x_adv) / temp, soft)
    assert kl_adv > kl_clean  # the inner maximisation moves the student away from the teacher


def test_ard_cross_entropy_attack_objective(batch) -> None:
    x, y = batch
    student = _net(8, 0).train()
    ard = ARDLoss(robust=RobustKDConfig(attack="pgd", epsilon=0.1, steps=3), attack_objective="ce")
    x_adv = ard.adversarial_inputs(student, x, y, torch.zeros(len(y), 10))
    assert 0 < (x_adv - x).abs().max() <= 0.1 + 1e-6
    student.eval()
    with torch.no_grad():
        assert F.cross_entropy(student(x_adv), y) > F.cross_entropy(student(x), y)


def test_ard_attack_objective_is_a_config_key() -> None:
    """``distill.robust.attack_objective`` reaches the loss built from the config; a typo is refused."""
    for objective in ("kl", "ce"):
        cfg = config_from_dict({"distill": {"loss": "ard", "robust": {"attack_objective": objective}}})
        assert KD_LOSSES.get("ard")(cfg.distill).attack_objective == objective
    with pytest.raises(ConfigError, match="distill.robust.attack_objective"):
        config_from_dict({"distill": {"loss": "ard", "robust": {"attack_objective": "mse"}}})


@pytest.mark.parametrize("name", ["ard", "rslad"])
def test_gradients_reach_the_student_not_the_teacher(batch, name: str) -> None:
    x, y = batch
    student, teacher = _net(8, 0), _net(16, 1)
    cfg = DistillConfig(loss=name, robust=RobustKDConfig(attack="pgd", epsilon=8 / 255, steps=2))
    distiller = Distiller(student, teacher, KD_LOSSES.get(name)(cfg)).train()
    loss, logits = distiller.step(student, (x, y))
    assert logits.shape == (48, 10) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # even teacher logits that carry a graph are detached inside the loss
    teacher2 = _net(16, 2)
    t = teacher2(x)
    student.zero_grad()
    loss2, _ = KD_LOSSES.get(name)(cfg).student_step(student, x, y, t)
    loss2.backward()
    assert all(p.grad is None for p in teacher2.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_soft_labels_come_from_the_clean_input(batch) -> None:
    """The loss equals the formula with the given (clean) teacher logits and the student on x and x'."""
    x, y = batch
    student, teacher = _net(8, 0).eval(), _net(16, 1).eval()  # eval: deterministic student forwards
    with torch.no_grad():
        t = teacher(x)
    rslad = RSLADLoss(RobustKDConfig(attack="fgsm_rs", epsilon=0.05))
    torch.manual_seed(3)
    loss, s = rslad.student_step(student, x, y, t)
    torch.manual_seed(3)
    x_adv = rslad.adversarial_inputs(student, x, y, t)
    with torch.no_grad():
        s_adv = student(x_adv)
    soft = F.softmax(t, dim=1)
    expected = 5 / 6 * kd_kl(s_adv, soft) + 1 / 6 * kd_kl(s.detach(), soft)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
