"""The one KD training step (``Distiller.step``) and the one augmenter, as the distill and QAT stages use them:
the student-only noise/corruption view (the teacher sees the clean input), cached teacher logits,
adversarial losses, and an exact resume with the student view on."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekd.config import AugmentConfig, DistillConfig, RobustKDConfig, TrainConfig
from edgekd.data.augment import Augmenter
from edgekd.data.loader import BatchLoader
from edgekd.losses import Distiller
from edgekd.losses.hinton import HintonKD
from edgekd.train.engine import fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GEO = AugmentConfig(crop_padding=2, hflip=True, noise_std=0.0, corruption_prob=0.0)
NOISY = replace(GEO, noise_std=0.1, corruption_prob=0.5, corruption_max_severity=2)


def _net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Linear(width * 49, 10),
    )


def _first(loader: BatchLoader, epoch: int, n: int = 1) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _record_inputs(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    return seen


# ------------------------------------------------------------------ the augmenter's two parts


def test_student_view_is_photometric_on_top_of_the_teachers_geometric_view(fmnist_small) -> None:
    split = fmnist_small.train
    kd = BatchLoader(split, 64, shuffle=True, augment=NOISY, seed=3, photometric="student")
    geo_only = BatchLoader(split, 64, shuffle=True, augment=GEO, seed=3)
    single = BatchLoader(split, 64, shuffle=True, augment=NOISY, seed=3, photometric="input")
    for (x, y, xs), (xg, yg), (x1, y1) in zip(_first(kd, 1, 3), _first(geo_only, 1, 3), _first(single, 1, 3)):
        assert torch.equal(y, yg) and torch.equal(y, y1)
        assert torch.equal(x, xg)  # the teacher's input: crop/flip only, unchanged by the noise settings
        assert torch.equal(xs, x1)  # the student's input: what a single model would get from the same loader
        assert xs.shape == x.shape and not torch.equal(xs, x)
        assert float(xs.min()) >= 0.0 and float(xs.max()) <= 1.0
    # without a photometric part there is no student view: the batch is (x, y) as before
    assert len(_first(BatchLoader(split, 64, shuffle=True, augment=GEO, seed=3, photometric="student"), 0)[0]) == 2


def test_student_view_is_a_pure_function_of_seed_epoch_and_batch(fmnist_small) -> None:
    split = fmnist_small.train
    a = BatchLoader(split, 64, shuffle=True, augment=NOISY, seed=3, photometric="student")
    b = BatchLoader(split, 64, shuffle=True, augment=NOISY, seed=3, photometric="student")
    first = _first(a, 2, 3)
    torch.manual_seed(123)  # the global RNG plays no part
    _first(b, 0, 2)  # nor does another history
    again = _first(b, 2, 3)
    for one, two in zip(first, again):
        assert all(torch.equal(p, q) for p, q in zip(one, two))
    assert not torch.equal(first[0][2] - first[0][0], first[1][2] - first[1][0])  # another batch, other noise
    other_epoch = _first(a, 3)[0]
    assert not torch.equal(first[0][2] - first[0][0], other_epoch[2] - other_epoch[0])
    other_seed = _first(BatchLoader(split, 64, shuffle=True, augment=NOISY, seed=4, photometric="student"), 2)[0]
    assert not torch.equal(first[0][2], other_seed[2])
    # the augmenter itself: same (seed, epoch, batch, rank) -> same views
    x = first[0][0]
    aug = Augmenter(NOISY, seed=5)
    v1, v2 = aug.views(x, 4, 7), aug.views(x, 4, 7)
    assert torch.equal(v1[0], v2[0]) and torch.equal(v1[1], v2[1])
    assert not torch.equal(aug.views(x, 4, 7, rank=1)[1], v1[1])


def _spy_corruptions(monkeypatch) -> list[tuple[str, int]]:
    """Record (name, severity) of every corruption the augmenter applies (still applying it)."""
    import edgekd.robustness.corruptions as corruptions

    calls: list[tuple[str, int]] = []
    real = corruptions.apply_corruption

    def spy(name, images, severity, rng):
        calls.append((name, severity))
        return real(name, images, severity, rng)

    monkeypatch.setattr(corruptions, "apply_corruption", spy)
    return calls


def test_corruption_severity_is_capped(monkeypatch, fmnist_small) -> None:
    calls = _spy_corruptions(monkeypatch)
    x = torch.from_numpy(fmnist_small.train.images[:8]).float() / 255.0
    aug = Augmenter(replace(GEO, corruption_prob=1.0, corruption_max_severity=2), seed=0)
    for b in range(40):
        aug.views(x, 0, b)
    assert len(calls) == 40 and {sev for _, sev in calls} == {1, 2}


def test_corruptions_are_drawn_only_from_the_configured_list(monkeypatch, fmnist_small) -> None:
    """``data.augment.corruptions`` limits the draw (a benchmark keeps some corruptions for testing only);
    empty draws from every registered one."""
    from edgekd.robustness.corruptions import CORRUPTIONS

    calls = _spy_corruptions(monkeypatch)
    x = torch.from_numpy(fmnist_small.train.images[:8]).float() / 255.0
    for allowed, expected in ((["rotate", "jpeg"], {"rotate", "jpeg"}), ([], set(CORRUPTIONS.names()))):
        calls.clear()
        aug = Augmenter(replace(GEO, corruption_prob=1.0, corruptions=allowed), seed=0)
        for b in range(120):
            aug.views(x, 0, b)
        assert {name for name, _ in calls} == expected  # 120 draws reach each of 14 names (miss chance ~14 * (13/14)^120 < 1e-3)


# ------------------------------------------------------------------ Distiller.step


@pytest.fixture()
def kd_batch(fmnist_small) -> tuple[torch.Tensor, ...]:
    loader = BatchLoader(fmnist_small.train, 32, shuffle=True, augment=NOISY, seed=1, photometric="student")
    return _first(loader, 0)[0]


def test_teacher_sees_the_clean_input_and_student_its_view(kd_batch) -> None:
    x, y, xs = kd_batch
    student, teacher = _net(8, 0), _net(16, 1)
    t_in, s_in = _record_inputs(teacher), _record_inputs(student)
    distiller = Distiller(student, teacher, HintonKD(4.0, 0.9)).train()
    loss, logits = distiller.step(student, (x, y, xs))
    assert len(t_in) == 1 and torch.equal(t_in[0], x)
    assert len(s_in) == 1 and torch.equal(s_in[0], xs)
    # the same loss, written out: teacher on x, student on xs
    student.eval()
    with torch.no_grad():
        expected = HintonKD(4.0, 0.9)(student(xs), teacher(x), y)
        got, _ = distiller.step(student, (x, y, xs))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logits.shape == (32, 10) and torch.isfinite(loss)


def test_cached_logits_skip_the_teacher_and_give_the_same_loss(kd_batch) -> None:
    x, y, xs = kd_batch
    student, teacher = _net(8, 0), _net(16, 1)
    calls = _record_inputs(teacher)
    distiller = Distiller(student, teacher, HintonKD(4.0, 0.9))
    student.eval()  # deterministic student output for the comparison
    t = distiller.teacher_forward(x)
    assert len(calls) == 1
    for batch_live, batch_cached in (((x, y), (x, y, t)), ((x, y, xs), (x, y, t, xs))):
        live, s_live = distiller.step(student, batch_live)
        n = len(calls)
        cached, s_cached = distiller.step(student, batch_cached)
        assert len(calls) == n  # the cached step did not run the teacher
        assert torch.equal(live, cached) and torch.equal(s_live, s_cached)


@pytest.mark.parametrize("name", ["ard", "rslad"])
def test_adversarial_losses_attack_the_student_view(kd_batch, name: str) -> None:
    """With epsilon 0 the adversarial input is the student's view itself: ARD is Hinton KD on it."""
    x, y, xs = kd_batch
    student, teacher = _net(8, 0), _net(16, 1)
    cfg = DistillConfig(loss=name, temperature=4.0, alpha=0.9, robust=RobustKDConfig(epsilon=0.0))
    distiller = Distiller.from_config(student, teacher, cfg).train()
    t_in = _record_inputs(teacher)
    loss, logits = distiller.step(student, (x, y, xs))
    assert len(t_in) == 1 and torch.equal(t_in[0], x)
    with torch.no_grad():
        t = teacher(x)
    if name == "ard":
        assert loss.item() == pytest.approx(HintonKD(4.0, 0.9)(logits.detach(), t, y).item(), rel=1e-5)
    else:
        assert loss.item() == pytest.approx(HintonKD(1.0, 1.0)(logits.detach(), t, y).item(), rel=1e-5)


# ------------------------------------------------------------------ through the engine: exact resume


class _Killed(Exception):
    pass


def _kd_fit(fmnist_small, work: Path, resume: bool, init_seed: int, kill_at_step: int | None = None) -> nn.Module:
    student, teacher = _net(8, init_seed), _net(16, 1)
    distiller = Distiller(student, teacher, HintonKD(4.0, 0.9))
    train = BatchLoader(fmnist_small.train, 64, shuffle=True, augment=NOISY, seed=7, photometric="student")
    val = BatchLoader(fmnist_small.val, 250, shuffle=False)
    cfg = TrainConfig(epochs=2, lr=0.05, amp="off", channels_last="off", max_steps_per_epoch=4, log_every=1000)
    steps = 0

    def step(model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps
        steps += 1
        if steps == kill_at_step:
            raise _Killed
        return distiller.step(model, batch)

    fit(student, step, train, val, cfg, work_dir=work, device="cpu", seed=7, resume=resume,
        desc="kd", meta={"fingerprint": "kd"})
    return student


def test_resume_with_the_student_view_is_exact(fmnist_small, tmp_path: Path) -> None:
    straight = _kd_fit(fmnist_small, tmp_path / "straight", resume=False, init_seed=0)
    work = tmp_path / "resumed"
    with pytest.raises(_Killed):  # killed in epoch 1, after epoch 0's checkpoint
        _kd_fit(fmnist_small, work, resume=False, init_seed=0, kill_at_step=6)
    resumed = _kd_fit(fmnist_small, work, resume=True, init_seed=99)  # other init: the weights come from disk
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_cached_logits_loader_gives_the_student_its_corrupted_view(fmnist_small) -> None:
    """With cached teacher logits and a photometric augmentation, the distill stage's loader yields the clean
    image (what the logits were computed on), the logits of exactly those images, and the student's view."""
    from types import SimpleNamespace

    from edgekd.config import config_from_dict
    from edgekd.stages.distill import cached_train_loader

    cfg = config_from_dict({"distill": {"cache_teacher_logits": True}, "data": {"batch_size": 32, "augment": {
        "crop_padding": 0, "hflip": False, "corruption_prob": 1.0, "noise_std": 0.1}}})
    ctx = SimpleNamespace(cfg=cfg, dataset=lambda: fmnist_small)
    n = len(fmnist_small.train)
    cached = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 10)  # row i holds i: shows which image
    loader = cached_train_loader(ctx, cached, torch.device("cpu"))
    x, y, t, xs = next(iter(loader))
    idx = t[:, 0].long()
    clean = torch.from_numpy(fmnist_small.train.images[idx.numpy()]).float() / 255.0
    assert torch.equal(x, clean) and torch.equal(y, torch.from_numpy(fmnist_small.train.labels[idx.numpy()]))
    assert xs.shape == x.shape and (xs - x).abs().mean() > 0.01  # the student sees noise on top of a corruption


def test_the_no_kd_baseline_runs_no_teacher_and_trains_as_before(kd_batch) -> None:
    """``ce`` ignores the teacher's logits: its step runs no teacher pass (live or cached), and its loss and
    gradients are plain cross-entropy on the student's view."""
    from edgekd.losses import KD_LOSSES
    from edgekd.config import DistillConfig

    x, y, xs = kd_batch
    student, teacher = _net(8, 0), _net(16, 1)
    calls = _record_inputs(teacher)
    ce = KD_LOSSES.get("ce")(DistillConfig(loss="ce"))
    distiller = Distiller(student, teacher, ce).train()
    cached = torch.randn(32, 10)
    for batch in ((x, y, xs), (x, y, cached, xs), (x, y)):
        student.zero_grad()
        loss, logits = distiller.step(student, batch)
        loss.backward()
        got = [p.grad.clone() for p in student.parameters()]
        student.zero_grad()
        expected = torch.nn.functional.cross_entropy(student(batch[-1] if len(batch) > 2 else x), y)
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=0) for a, p in zip(got, student.parameters()))
    assert calls == []
