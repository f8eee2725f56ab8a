"""The contract of EVERY registered KD loss (parametrized over ``KD_LOSSES.names()``, so a new loss is
covered the moment it registers; one missing from the tables below fails with what to add):

- the step gives a finite scalar, gradients reach the student (and the loss's own parameters) and
  never the teacher, no forward hook is left on either model;
- student == teacher: the loss is zero where the formula implies it, else the stated remainder;
- a golden value on a fixed tiny input, recomputed here with plain numpy from the paper's formula.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DistillConfig, FeatureKDConfig, ModelConfig, RobustKDConfig
from edgekd.losses import KD_LOSSES, Distiller, KDLoss
from edgekd.losses.multi_teacher import TeacherEnsemble
from edgekd.models import build_teacher
from edgekd.models.features import hooks_on
from helpers import bundle_student, train_batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NAMES = KD_LOSSES.names()

# ------------------------------------------------------------------------ numpy reference math


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_k p log(p/q) per row."""
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def np_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    """T^2 * batch mean of KL(softmax(t/T) || softmax(s/T))."""
    return float(temp**2 * np.mean(np_kl(np_softmax(t / temp), np_softmax(s / temp))))


def np_ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np_softmax(s)[np.arange(len(y)), y])))


# A fixed tiny example: batch 2, 3 classes; a second teacher and two "views" for the losses that need them.
S = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]])
T1 = np.array([[2.0, 1.0, 0.1], [0.5, 0.2, 3.0]])
T2 = np.array([[0.3, 2.5, -0.4], [1.5, -0.2, 0.7]])
V1 = np.array([[0.7, 1.1, 0.9], [0.0, -0.5, 1.2]])
V2 = np.array([[1.4, 2.2, -0.3], [0.9, -1.3, 2.4]])
Y = np.array([1, 2])
# features [B, C, H, W]: a student map 2 channels 4x4, a teacher map 3 channels 2x2 (pooling and an adapter needed)
FS = np.linspace(-1.0, 1.5, 2 * 2 * 4 * 4).reshape(2, 2, 4, 4)
FT = np.cos(np.arange(2 * 3 * 2 * 2)).reshape(2, 3, 2, 2)
ADAPTER_W = np.array([[0.5, -1.0], [0.25, 0.75], [-0.5, 0.1]])  # [teacher C, student C]
ADAPTER_B = np.array([0.1, -0.2, 0.05])


def tt(a: np.ndarray) -> torch.Tensor:
    """A float32 input that autograd tracks (so every golden loss can be backpropagated)."""
    return torch.tensor(a, dtype=torch.float32, requires_grad=True)


TEACHER_INPUTS: list[torch.Tensor] = []  # the teacher-side tensors of the last golden call


def tl(a: np.ndarray) -> torch.Tensor:
    """A teacher-side input (logits, features): tracked, so a loss that lets gradient into it is caught."""
    TEACHER_INPUTS.append(tt(a))
    return TEACHER_INPUTS[-1]


def np_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling, [B, C, 4, 4] -> [B, C, 2, 2]."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def np_attention(f: np.ndarray) -> np.ndarray:
    q = (f**2).mean(axis=1).reshape(len(f), -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def golden_hinton() -> tuple[float, float]:
    loss = KD_LOSSES.get("hinton")(DistillConfig(temperature=2.0, alpha=0.7))(tt(S), tl(T1), torch.tensor(Y))
    return loss, 0.7 * np_kd(S, T1, 2.0) + 0.3 * np_ce(S, Y)


def golden_ce() -> tuple[float, float]:
    return KD_LOSSES.get("ce")(DistillConfig())(tt(S), tl(T1), torch.tensor(Y)), np_ce(S, Y)


def golden_dkd() -> tuple[float, float]:
    temp, a, b = 3.0, 1.5, 6.0
    cfg = DistillConfig(temperature=temp)
    cfg = replace(cfg, dkd=replace(cfg.dkd, alpha=a, beta=b))
    got = KD_LOSSES.get("dkd")(cfg)(tt(S), tl(T1), torch.tensor(Y))
    ps, pt = np_softmax(S / temp), np_softmax(T1 / temp)
    rows = np.arange(2)
    bs = np.stack([ps[rows, Y], 1 - ps[rows, Y]], 1)
    bt = np.stack([pt[rows, Y], 1 - pt[rows, Y]], 1)
    others = np.array([[k for k in range(3) if k != y] for y in Y])
    ns = ps[rows[:, None], others] / (1 - ps[rows, Y])[:, None]
    nt = pt[rows[:, None], others] / (1 - pt[rows, Y])[:, None]
    expected = np_ce(S, Y) + temp**2 * (a * np.mean(np_kl(bt, bs)) + b * np.mean(np_kl(nt, ns)))
    return got, float(expected)


def golden_multi_teacher() -> tuple[float, float]:
    """Confidence weighting (CA-MKD): w_m = (1 - softmax_m(CE_m)) / (M - 1) per sample."""
    temp, alpha = 2.0, 0.8
    cfg = DistillConfig(loss="multi_teacher", temperature=temp, alpha=alpha, teacher_weighting="confidence")
    got = KD_LOSSES.get("multi_teacher")(cfg)(tt(S), torch.stack([tl(T1), tl(T2)], 1), torch.tensor(Y))
    ce_m = np.stack([-np.log(np_softmax(t)[np.arange(2), Y]) for t in (T1, T2)], 1)  # [B, M]
    w = 1 - np.exp(ce_m) / np.exp(ce_m).sum(1, keepdims=True)  # M - 1 = 1
    kl = np.stack([np_kl(np_softmax(t / temp), np_softmax(S / temp)) for t in (T1, T2)], 1)
    return got, float(alpha * temp**2 * np.mean((w * kl).sum(1)) + (1 - alpha) * np_ce(S, Y))


def golden_ctkd() -> tuple[float, float]:
    """At the start the learned temperature is distill.temperature: Hinton KD at that T."""
    loss = KD_LOSSES.get("ctkd")(DistillConfig(loss="ctkd", temperature=3.0, alpha=0.6))
    assert loss.temperature == pytest.approx(3.0, rel=1e-6)
    return loss(tt(S), tl(T1), torch.tensor(Y)), 0.6 * np_kd(S, T1, 3.0) + 0.4 * np_ce(S, Y)


def golden_self_distill() -> tuple[float, float]:
    """alpha w_n T^2 KL(t || s) + (1 - alpha) CE; w_n = exp(-5 (1 - n/H)^2) at n = 5 of H = 1/(1 - 0.9) updates."""
    loss = KD_LOSSES.get("self_distill")(DistillConfig(loss="self_distill", temperature=2.0, alpha=0.5, ema_decay=0.9))
    loss.updates.fill_(5)
    return loss(tt(S), tl(T1), torch.tensor(Y)), 0.5 * math.exp(-1.25) * np_kd(S, T1, 2.0) + 0.5 * np_ce(S, Y)


def golden_ard() -> tuple[float, float]:
    """alpha T^2 KL(t || s_adv) + (1 - alpha) beta CE(s, y); the adversarial logits given (V1)."""
    cfg = DistillConfig(loss="ard", temperature=2.0, alpha=0.7, robust=RobustKDConfig(beta=0.5))
    got = KD_LOSSES.get("ard")(cfg)(tt(S), tl(T1), torch.tensor(Y), student_logits_adv=tt(V1))
    return got, 0.7 * np_kd(V1, T1, 2.0) + 0.3 * 0.5 * np_ce(S, Y)


def golden_rslad() -> tuple[float, float]:
    """5/6 KL(t || s_adv) + 1/6 beta KL(t || s), plain softmax (T = 1)."""
    cfg = DistillConfig(loss="rslad", robust=RobustKDConfig(beta=2.0))
    got = KD_LOSSES.get("rslad")(cfg)(tt(S), tl(T1), torch.tensor(Y), student_logits_adv=tt(V1))
    pt = np_softmax(T1)
    return got, float(5 / 6 * np.mean(np_kl(pt, np_softmax(V1))) + 1 / 6 * 2.0 * np.mean(np_kl(pt, np_softmax(S))))


def golden_augmix_kd() -> tuple[float, float]:
    temp, alpha, lam = 2.0, 0.9, 12.0
    cfg = DistillConfig(loss="augmix_kd", temperature=temp, alpha=alpha)
    got = KD_LOSSES.get("augmix_kd")(cfg)(tt(S), tl(T1), torch.tensor(Y), student_views=(tt(V1), tt(V2)))
    kd = np.mean([np_kd(v, T1, temp) for v in (S, V1, V2)])
    q = [np_softmax(v) for v in (S, V1, V2)]
    m = sum(q) / 3
    js = np.mean([np.mean(np_kl(p, m)) for p in q])
    return got, float((1 - alpha) * np_ce(S, Y) + alpha * kd + lam * js)


def _feature_loss(name: str, **features: object) -> KDLoss:
    cfg = DistillConfig(loss=name, temperature=2.0, alpha=0.7)
    loss = KD_LOSSES.get(name)(replace(cfg, features=replace(FeatureKDConfig(), **features)))
    loss.pairs = [("t", "s")]  # bound by hand: the tiny maps come from no model
    return loss


def golden_fitnets() -> tuple[float, float]:
    """Hinton + w * mean((pool(conv1x1(F_s)) - F_t)^2), the adapter's weights fixed here."""
    loss = _feature_loss("fitnets", hint_weight=0.3)
    adapter = nn.Conv2d(2, 3, 1)
    with torch.no_grad():
        adapter.weight.copy_(tt(ADAPTER_W)[:, :, None, None])
        adapter.bias.copy_(tt(ADAPTER_B))
    loss.adapters = nn.ModuleList([adapter])
    got = loss(tt(S), tl(T1), torch.tensor(Y), student_features={"s": tt(FS)}, teacher_features={"t": tl(FT)})
    adapted = np.einsum("oc,bchw->bohw", ADAPTER_W, FS) + ADAPTER_B[None, :, None, None]
    hint = np.mean((np_pool2(adapted) - FT) ** 2)
    return got, 0.7 * np_kd(S, T1, 2.0) + 0.3 * np_ce(S, Y) + 0.3 * float(hint)


def golden_at() -> tuple[float, float]:
    """Hinton + beta/2 * mean((Q_s/|Q_s| - Q_t/|Q_t|)^2), Q = channel mean of F^2, the student's map pooled."""
    loss = _feature_loss("at", at_beta=250.0)
    got = loss(tt(S), tl(T1), torch.tensor(Y), student_features={"s": tt(FS)}, teacher_features={"t": tl(FT)})
    qs = (FS**2).mean(axis=1, keepdims=True)
    qs = np_pool2(qs).reshape(2, -1)
    qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    at = np.mean((qs - np_attention(FT)) ** 2)
    return got, 0.7 * np_kd(S, T1, 2.0) + 0.3 * np_ce(S, Y) + 125.0 * float(at)


GOLDEN: dict[str, Callable[[], tuple[torch.Tensor, float]]] = {
    "hinton": golden_hinton, "ce": golden_ce, "dkd": golden_dkd, "multi_teacher": golden_multi_teacher,
    "ctkd": golden_ctkd, "self_distill": golden_self_distill, "ard": golden_ard, "rslad": golden_rslad,
    "augmix_kd": golden_augmix_kd, "fitnets": golden_fitnets, "at": golden_at,
}


@pytest.mark.parametrize("name", NAMES)
def test_golden_value_on_a_fixed_tiny_input(name: str) -> None:
    assert name in GOLDEN, f"add a numpy golden value for the new loss '{name}' to GOLDEN"
    got_t, expected = GOLDEN[name]()
    got = got_t.item()
    # rel 1e-5: float32 (~1e-7 relative per op) through a few dozen ops against float64 numpy; a wrong
    # formula (a missing T^2, a swapped KL direction, a wrong weight) is off by far more than that
    assert got == pytest.approx(expected, rel=1e-5), (name, got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_reaches_the_teacher_side_inputs(name: str) -> None:
    """Called directly (not only through the Distiller, which freezes the teacher), a loss treats the
    teacher's logits and features as constants: backprop leaves their ``.grad`` empty."""
    TEACHER_INPUTS.clear()
    loss, _ = GOLDEN[name]()
    assert TEACHER_INPUTS, f"golden_{name} passes no teacher-side tensor through tl()"
    loss.backward()
    leaked = [tuple(t.shape) for t in TEACHER_INPUTS if t.grad is not None]
    assert not leaked, (name, leaked)


# ------------------------------------------------------------------------ the step on real models

SMALL_EPS = RobustKDConfig(epsilon=0.03)


@pytest.fixture(scope="module")
def batch(fmnist_small) -> tuple[torch.Tensor, torch.Tensor]:
    """8 real Fashion-MNIST training images in [0, 1] and their labels."""
    return train_batch(fmnist_small, 8)


def _teacher(name: str, bundle) -> nn.Module | None:
    """resnet18 (the default pairing's teacher); for multi_teacher also a wide ResNet: two architectures."""
    torch.manual_seed(1)
    resnet = build_teacher(ModelConfig(arch="resnet18", width=0.25), bundle)
    if name == "multi_teacher":
        return TeacherEnsemble([resnet, build_teacher(ModelConfig(arch="wrn16_4", width=0.5), bundle)])
    return resnet


@pytest.mark.parametrize("name", NAMES)
def test_step_is_finite_and_trains_the_student_only(name: str, fmnist_small, batch) -> None:
    x, y = batch
    kd = KD_LOSSES.get(name)(DistillConfig(loss=name, robust=SMALL_EPS))
    student = bundle_student(fmnist_small)
    teacher = None if kd.self_teacher else _teacher(name, fmnist_small)
    if teacher is not None:
        teacher.train()  # the Distiller must put it (and keep it) in eval
    distiller = Distiller(student, teacher, kd, sample=x[:2]).train()
    distiller.epoch_hook(2)(1, student)  # the last epoch of two: CTKD's gradient reversal at full strength
    frozen = distiller.teacher
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    assert student.training and not any(m.training for m in frozen.modules())

    loss, logits = distiller.step(student, (x, y))
    assert loss.ndim == 0 and torch.isfinite(loss), (name, loss)
    assert logits.shape == (8, 10)
    loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    for p in kd.parameters():  # adapters, the CTKD temperature: trained with the student
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for k, v in frozen.state_dict().items():  # BN running stats untouched
        assert torch.equal(v, before[k]), (name, k)
    assert hooks_on(student) == 0 and hooks_on(frozen) == 0  # feature taps exist only during the step
    assert not any(k.startswith(("adapters", "theta", "ema")) for k in student.state_dict())


def test_the_config_check_refuses_cached_logits_for_exactly_the_live_teacher_losses() -> None:
    """The torch-free list the config check uses before torch loads matches the classes' ``live_teacher``
    (a new feature or self-teacher loss left off it would be fed cached logits of another teacher)."""
    from edgekd.validation import UNCACHEABLE_LOSSES, uncacheable_losses

    from edgekd.losses import loss_class

    live = {n for n in NAMES if loss_class(n).live_teacher}
    assert set(UNCACHEABLE_LOSSES) == live == set(uncacheable_losses()), (UNCACHEABLE_LOSSES, live)
    assert {"at", "fitnets", "self_distill"} <= live  # features or a moving teacher


def test_a_loss_registered_without_its_class_is_named() -> None:
    """``loss_class`` reads class attributes; a bare function in the registry gets an error saying how to
    register, not an AttributeError."""
    from edgekd.errors import ConfigError
    from edgekd.losses import loss_class

    KD_LOSSES.register("bare_fn_loss")(lambda cfg: None)
    try:
        with pytest.raises(ConfigError, match="register its KDLoss subclass with @register_kd_loss"):
            loss_class("bare_fn_loss")
    finally:
        KD_LOSSES._items.pop("bare_fn_loss")
    assert loss_class("hinton").__name__ == "HintonKD"


def test_a_self_teacher_step_ignores_cached_logits(fmnist_small, batch) -> None:
    """Cached logits are the run's teacher's; self-distillation's teacher is the student's EMA, so a batch
    that carries cached logits (from a config the check would refuse) must not change its loss."""
    x, y = batch
    kd = KD_LOSSES.get("self_distill")(DistillConfig(loss="self_distill"))
    distiller = Distiller(bundle_student(fmnist_small), None, kd).eval()
    with torch.no_grad():
        plain, _ = distiller.step(distiller.student, (x, y))
        cached, _ = distiller.step(distiller.student, (x, y, 5.0 * torch.arange(10.0).expand(len(x), 10)))
    assert torch.equal(plain, cached), (plain, cached)  # the cached target is far from uniform: it would move the KL


# student == teacher: the loss at the teacher, per loss. "zero": the formula is 0 there (with the
# config given); "ce": only the cross-entropy on the labels remains (the KD part is 0).
FEATURE_SELF_PAIRS = FeatureKDConfig(pairs=["net.features.6=net.features.6", "net.features.13=net.features.13"])
AT_TEACHER: dict[str, tuple[str, dict]] = {
    "hinton": ("zero", {"alpha": 1.0}),
    "ctkd": ("zero", {"alpha": 1.0}),
    "self_distill": ("zero", {"alpha": 1.0}),  # the EMA starts as the student itself
    "multi_teacher": ("zero", {"alpha": 1.0}),
    "ard": ("zero", {"alpha": 1.0, "robust": RobustKDConfig(epsilon=0.0)}),
    "rslad": ("zero", {"robust": RobustKDConfig(epsilon=0.0)}),
    "fitnets": ("zero", {"alpha": 1.0, "features": FEATURE_SELF_PAIRS}),  # with identity adapters (set below)
    "at": ("zero", {"alpha": 1.0, "features": FEATURE_SELF_PAIRS}),
    "dkd": ("ce", {}),  # CE(s, y) + alpha TCKD + beta NCKD: both KD parts vanish
    "ce": ("ce", {}),  # no KD term at all
    # the student sees two corrupted views the teacher does not: not zero on a step (its forward with
    # views equal to the teacher's logits is checked to be 0 below)
    "augmix_kd": ("views", {"alpha": 1.0}),
}


@pytest.mark.parametrize("name", NAMES)
def test_loss_at_the_teacher(name: str, fmnist_small, batch) -> None:
    assert name in AT_TEACHER, f"say what the new loss '{name}' gives when the student equals the teacher (AT_TEACHER)"
    kind, overrides = AT_TEACHER[name]
    x, y = batch
    kd = KD_LOSSES.get(name)(replace(DistillConfig(loss=name), **overrides))
    if kind == "views":
        t = torch.randn(8, 10)
        assert kd(t, t, y, student_views=(t, t)).item() == pytest.approx(0.0, abs=1e-6)
        return
    student = bundle_student(fmnist_small).eval()  # eval: BatchNorm the same for both copies
    teacher = None if kd.self_teacher else copy.deepcopy(student)
    if name == "multi_teacher":
        teacher = TeacherEnsemble([teacher, copy.deepcopy(student)])
    distiller = Distiller(student, teacher, kd, sample=x[:2]).eval()
    for adapter in getattr(kd, "adapters", []):  # FitNets: the identity regressor
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(adapter.out_channels)[:, :, None, None])
            adapter.bias.zero_()
    loss, logits = distiller.step(student, (x, y))
    if kind == "zero":
        # abs 1e-5: the terms are O(1) at a random init (CE ~2.3); a KL of identical float32 softmaxes
        # leaves only rounding (~1e-7 per class)
        assert loss.item() == pytest.approx(0.0, abs=1e-5), name
    else:
        expected = F.cross_entropy(logits.detach().double(), y).item()
        assert loss.item() == pytest.approx(expected, rel=1e-5), name


# Extra inputs a loss's forward takes beside (student, teacher, labels), built from the student logits s
# so they are as extreme as s: augmented views, adversarial logits. multi_teacher takes [B, M, K] teachers.
EXTRA_LOGITS = {
    "augmix_kd": lambda s: {"student_views": (s.flip(0), s.roll(1, dims=1))},
    "ard": lambda s: {"student_logits_adv": s.flip(0)},
    "rslad": lambda s: {"student_logits_adv": s.flip(0)},
}


@pytest.mark.parametrize("name", NAMES)
def test_gradients_stay_finite_at_saturated_logits(name: str) -> None:
    """Logit gaps of ~400 (a from-scratch student at a high learning rate gets there) underflow softmax to
    exact zeros. The loss and its gradient must stay finite: one NaN step ruins the student. (AugMix's JS
    term on probabilities gave NaN gradients there, d/dq of q log q = log q + 1 at q = 0; the reason an
    augmix_kd run diverged.)"""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8) % 10
    base = torch.randn(8, 10, generator=g)
    s = (base + 200.0 * F.one_hot((y + 3) % 10, 10) - 200.0 * F.one_hot(y, 10)).requires_grad_(True)
    t = base.flip(1) * 50.0
    if name == "multi_teacher":
        t = torch.stack([t, t.roll(1, dims=1)], dim=1)
    kd = KD_LOSSES.get(name)(DistillConfig(loss=name, robust=SMALL_EPS))
    loss = kd(s, t, y, **EXTRA_LOGITS.get(name, lambda _: {})(s))
    loss.backward()
    assert torch.isfinite(loss), (name, loss)
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0, name


class _RecordingConfig:
    """A DistillConfig that records which of its fields a loss's ``from_config`` reads."""

    def __init__(self, cfg: DistillConfig) -> None:
        self._cfg, self.read = cfg, set()

    def __getattr__(self, name: str) -> object:
        self.read.add(name)
        return getattr(self._cfg, name)


@pytest.mark.parametrize("name", NAMES)
def test_a_loss_declares_the_shared_knobs_it_reads(name: str) -> None:
    """``KDLoss.uses`` is what the distill stage records as the run's temperature/alpha: it must be exactly the
    shared knobs the loss's ``from_config`` reads (rslad's metrics showed T 4 and alpha 0.9 it never used)."""
    from edgekd.losses.base import loss_class

    recording = _RecordingConfig(DistillConfig(loss=name))
    KD_LOSSES.get(name)(recording)
    assert set(loss_class(name).uses) == recording.read & {"temperature", "alpha"}, name


def test_a_loss_declaring_a_knob_that_is_not_shared_is_refused_at_registration() -> None:
    from edgekd.losses import register_kd_loss

    with pytest.raises(ValueError, match=r"uses names \['beta'\]"):
        @register_kd_loss("bad_uses")
        class BadUses(KDLoss):
            uses = ("temperature", "beta")
    assert "bad_uses" not in KD_LOSSES.names()
