"""Feature KD machinery: hooks that never reach the exported model, taps on the fx-traced QAT student,
the default layer pairing, learnable loss parameters trained by the engine (and resumed) but never
saved with the student, CTKD's reversed temperature gradient and curriculum, the EMA teacher."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekd.config import DistillConfig, FeatureKDConfig, ModelConfig, TrainConfig
from edgekd.data.loader import BatchLoader
from edgekd.exporting import export_fp32
from edgekd.losses import KD_LOSSES, Distiller
from edgekd.losses.feature_pairs import default_pairs
from edgekd.models import build_student, build_teacher
from edgekd.models.features import feature_shapes, hooks_on, tap_features
from edgekd.train.engine import fit
from helpers import train_batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")
THIS = Path(__file__).resolve()
REPO = THIS.parents[1]


@pytest.fixture(scope="module")
def batch(fmnist_small) -> tuple[torch.Tensor, torch.Tensor]:
    return train_batch(fmnist_small, 16)


def _models(bundle) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = build_student(ModelConfig(arch="mobilenet_v2", width=0.5), bundle)
    teacher = build_teacher(ModelConfig(arch="resnet18", width=0.25), bundle)
    return student, teacher


def test_default_pairing_resnet18_to_mobilenet_v2(fmnist_small, batch) -> None:
    student, teacher = _models(fmnist_small)
    pairs = default_pairs(teacher, student, batch[0][:2])
    assert pairs == [("net.layer1", "net.features.3"), ("net.layer2", "net.features.6"),
                     ("net.layer3", "net.features.13"), ("net.layer4", "net.features.18")]
    t = feature_shapes(teacher, [p[0] for p in pairs], batch[0][:2])
    s = feature_shapes(student, [p[1] for p in pairs], batch[0][:2])
    assert [t[a][1:] for a, _ in pairs] == [s[b][1:] for _, b in pairs] == [(14, 14), (7, 7), (4, 4), (2, 2)]
    fit_loss = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets"))
    Distiller(student, teacher, fit_loss, sample=batch[0][:2])
    assert fit_loss.pairs == [("net.layer2", "net.features.6")]  # FitNets: one hint, in the middle
    assert (fit_loss.adapters[0].in_channels, fit_loss.adapters[0].out_channels) == (16, 32)


def test_a_wrong_layer_name_names_the_layers(fmnist_small, batch) -> None:
    student, teacher = _models(fmnist_small)
    cfg = DistillConfig(loss="at", features=FeatureKDConfig(pairs=["net.layer9=net.features.6"]))
    distiller = Distiller(student, teacher, KD_LOSSES.get("at")(cfg), sample=batch[0][:2])
    with pytest.raises(Exception, match="no layer named 'net.layer9'.*net.layer1"):
        distiller.step(student, batch)
    assert hooks_on(student) == 0 and hooks_on(teacher) == 0  # nothing left behind by the failed step


def _onnx_fingerprint(path: Path) -> tuple[list[str], dict[str, bytes]]:
    model = onnx.load(str(path))
    return ([n.op_type for n in model.graph.node],
            {i.name: numpy_helper.to_array(i).tobytes() for i in model.graph.initializer})


def _train_with_taps(name: str, model: nn.Module, teacher: nn.Module, batch) -> None:
    """Two SGD steps of feature loss ``name`` on ``model`` (its adapters trained too); no hook left behind."""
    kd = KD_LOSSES.get(name)(DistillConfig(loss=name))
    distiller = Distiller(model, teacher, kd, sample=batch[0][:2]).train()
    opt = torch.optim.SGD([*model.parameters(), *kd.parameters()], lr=0.01)
    for _ in range(2):
        loss, _ = distiller.step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert hooks_on(model) == 0


def _same_graph(tapped: Path, plain: Path) -> list[str]:
    """Same node types in the same order and the same initializers, bit for bit; returns the op types."""
    ops, inits = _onnx_fingerprint(tapped)
    ops_ref, inits_ref = _onnx_fingerprint(plain)
    assert ops == ops_ref and len(ops) > 50
    assert inits.keys() == inits_ref.keys() and all(inits[k] == inits_ref[k] for k in inits)
    return ops


@pytest.mark.parametrize("name", ["fitnets", "at"])
def test_feature_kd_leaves_the_exported_graph_unchanged(name: str, fmnist_small, batch, tmp_path: Path) -> None:
    """Train with feature taps, then export; a fresh student given the same weights (never tapped) must
    export to the same graph: same node types in the same order, same initializers, bit for bit."""
    student, teacher = _models(fmnist_small)
    _train_with_taps(name, student, teacher, batch)
    fresh, _ = _models(fmnist_small)
    fresh.load_state_dict(student.state_dict())  # same weights, no feature machinery ever attached
    student.eval(), fresh.eval()
    export_fp32(student, tmp_path / "tapped.onnx", (1, 1, 28, 28))
    export_fp32(fresh, tmp_path / "plain.onnx", (1, 1, 28, 28))
    _same_graph(tmp_path / "tapped.onnx", tmp_path / "plain.onnx")


@pytest.mark.parametrize("name", ["fitnets", "at"])
def test_feature_kd_in_qat_leaves_the_int8_graph_unchanged(name: str, fmnist_small, batch, tmp_path: Path) -> None:
    """The QAT stage taps the fake-quantized student too: after feature-KD QAT steps, its INT8 export
    equals that of a QAT twin given the same state and never tapped (ops in order, initializers bit for bit)."""
    from edgekd.exporting import export_int8
    from edgekd.quant import freeze_observers, prepare_qat

    student, teacher = _models(fmnist_small)
    calib = [(batch[0],)]
    qmodel = prepare_qat(copy.deepcopy(student).eval(), calib, 1)
    _train_with_taps(name, qmodel, teacher, batch)
    fresh = prepare_qat(copy.deepcopy(student).eval(), calib, 1)
    fresh.load_state_dict(qmodel.state_dict())  # trained weights and observer ranges, no taps ever attached
    for m in (qmodel, fresh):
        freeze_observers(m.eval())
    export_int8(qmodel, tmp_path / "tapped.onnx", (1, 1, 28, 28))
    export_int8(fresh, tmp_path / "plain.onnx", (1, 1, 28, 28))
    assert "QuantizeLinear" in _same_graph(tmp_path / "tapped.onnx", tmp_path / "plain.onnx")


def test_qat_student_is_tapped_where_its_float_twin_is(fmnist_small, batch) -> None:
    """The fx-traced QAT student has no block forward to hook: the tap lands on the block's output
    fake quant, with the float block's shape, and a FitNets step runs on it."""
    from edgekd.quant import prepare_qat

    student, teacher = _models(fmnist_small)
    qmodel = prepare_qat(copy.deepcopy(student).eval(), [(batch[0],)], 1)
    names = ["net.features.6", "net.features.13"]
    assert feature_shapes(qmodel, names, batch[0][:2]) == feature_shapes(student, names, batch[0][:2])
    with tap_features(qmodel, names) as feats:
        out = qmodel(batch[0][:2])
    assert out.shape == (2, 10) and all(type(m).__name__ == "ActFakeQuant" for m in [
        qmodel.net.get_submodule(n) for n in _tapped_targets(qmodel, names)])
    assert hooks_on(qmodel) == 0 and set(feats) == set(names)
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets"))
    distiller = Distiller(qmodel, teacher, kd, sample=batch[0][:2]).train()
    loss, _ = distiller.step(qmodel, batch)
    loss.backward()
    assert torch.isfinite(loss) and kd.adapters[0].weight.grad.abs().sum() > 0


def _tapped_targets(qmodel: nn.Module, names: list[str]) -> list[str]:
    from edgekd.models.features import resolve_tap

    by_module = {id(m): n for n, m in qmodel.net.named_modules()}
    return [by_module[id(resolve_tap(qmodel, n))] for n in names]


# ------------------------------------------------------------------ through the engine


def _net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(width * 49, 10))


class _Killed(Exception):
    pass


def _fitnets_fit(fmnist_small, work: Path, resume: bool, kill_at_step: int | None = None,
                 scores: list[float] | None = None):
    """FitNets through the engine, 4 steps an epoch: 2 epochs scored on validation, or, with ``scores``,
    len(scores) epochs where epoch e scores scores[e]."""
    student, teacher = _net(8, 0), _net(16, 1)
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets", features=FeatureKDConfig(pairs=["2=2"])))
    sample = torch.from_numpy(fmnist_small.train.images[:2]).float() / 255.0
    distiller = Distiller(student, teacher, kd, sample=sample)
    train = BatchLoader(fmnist_small.train, 64, shuffle=True, augment=None, seed=7)
    val = None if scores else BatchLoader(fmnist_small.val, 250, shuffle=False)
    cfg = TrainConfig(epochs=len(scores) if scores else 2, lr=0.05, amp="off", channels_last="off",
                      max_steps_per_epoch=4, log_every=1000)
    steps = 0

    def step(model: nn.Module, b: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps
        steps += 1
        if steps == kill_at_step:
            raise _Killed
        return distiller.step(model, b)

    def score(model: nn.Module) -> dict[str, float]:  # metrics.jsonl holds one line per finished epoch
        return {"accuracy": scores[_done_epochs(work)], "loss": 0.0}

    result = fit(student, step, train, val, cfg, work_dir=work, device="cpu", seed=7, resume=resume,
                 desc="kd", meta={"fingerprint": "fitnets"}, aux=kd, eval_fn=score if scores else None)
    return student, kd, result


def test_adapters_train_with_the_student_resume_exactly_and_stay_out_of_its_weights(fmnist_small, tmp_path) -> None:
    student, kd, result = _fitnets_fit(fmnist_small, tmp_path / "straight", resume=False)
    adapter = kd.adapters[0]
    assert (adapter.in_channels, adapter.out_channels) == (8, 16)
    assert set(result.best_state) == set(student.state_dict())  # the student's keys only
    ckpt = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert set(ckpt["aux"]) == {"adapters.0.weight", "adapters.0.bias"}
    assert torch.equal(ckpt["aux"]["adapters.0.weight"], adapter.weight.detach())
    with pytest.raises(_Killed):  # killed in epoch 1, after epoch 0's checkpoint
        _fitnets_fit(fmnist_small, tmp_path / "resumed", resume=False, kill_at_step=6)
    resumed, kd_r, _ = _fitnets_fit(fmnist_small, tmp_path / "resumed", resume=True)
    for (k, a), b in zip(student.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(kd_r.adapters[0].weight, adapter.weight)  # the adapter came back from the checkpoint


def test_adapters_move_during_training(fmnist_small) -> None:
    student, teacher = _net(8, 0), _net(16, 1)
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets", features=FeatureKDConfig(pairs=["2=2"])))
    x = torch.from_numpy(fmnist_small.train.images[:32]).float() / 255.0
    y = torch.from_numpy(fmnist_small.train.labels[:32])
    distiller = Distiller(student, teacher, kd, sample=x[:2])
    before = kd.adapters[0].weight.detach().clone()
    opt = torch.optim.SGD(nn.ModuleList([student, kd]).parameters(), lr=0.1)  # what the engine builds with aux
    loss, _ = distiller.step(student, (x, y))
    loss.backward()
    opt.step()
    assert not torch.equal(before, kd.adapters[0].weight)


# ------------------------------------------------------------------ CTKD and the EMA teacher


def test_ctkd_temperature_ascends_the_kd_loss_on_a_cosine_curriculum() -> None:
    kd = KD_LOSSES.get("ctkd")(DistillConfig(loss="ctkd", temperature=4.0, alpha=1.0))
    lams = []
    for epoch in range(5):
        kd.start_epoch(epoch, 5)
        lams.append(float(kd.lam))
    # lambda_max (1 - cos(pi e / 4)) / 2, e = 0..4; abs 1e-6: float32 buffer of O(1) values
    assert lams == pytest.approx([(1 - math.cos(math.pi * e / 4)) / 2 for e in range(5)], abs=1e-6)
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[2.0, 1.0, 0.1]])
    theta = kd.theta.detach().clone().requires_grad_(True)

    def plain(th: torch.Tensor) -> torch.Tensor:  # the same loss with no gradient reversal
        temp = kd.t_min + (kd.t_max - kd.t_min) * torch.sigmoid(th)
        return temp**2 * torch.nn.functional.kl_div(torch.log_softmax(s / temp, 1), torch.log_softmax(t / temp, 1),
                                                    reduction="batchmean", log_target=True)

    (d_plain,) = torch.autograd.grad(plain(theta), theta)
    kd(s, t, torch.tensor([0])).backward()
    # lambda = 1 at the last epoch: the temperature gets exactly the opposite gradient; rel 1e-5 (float32)
    assert kd.theta.grad.item() == pytest.approx(-d_plain.item(), rel=1e-5) and d_plain.item() != 0
    assert kd.metrics() == {"learned_temperature": pytest.approx(4.0, rel=1e-5)}


# ------------------------------------------------------------------ under torchrun: the loss's parameters stay in sync


def test_ddp_ranks_share_the_adapters(tmp_path: Path) -> None:
    """Two gloo ranks, different inits on purpose: the engine gives both rank 0's adapter and averages
    its gradients, as DDP does for the student, so both end with the same student AND adapter."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "EDGEKD_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(THIS), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    if proc.returncode != 0 and "Address already in use" in proc.stderr:
        pytest.skip("no free local port for the gloo rendezvous")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["adapter_init"], r1["adapter_init"])  # the ranks did start apart
    for part in ("student", "aux"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    assert not torch.equal(r0["aux"]["adapters.0.weight"], r0["adapter_init"])  # and it trained


def _ddp_child(work: Path) -> None:
    from edgekd.data.base import Split
    from edgekd.train.distributed import rank_and_world
    from helpers import fmnist_images, fmnist_labels

    torch.set_num_threads(1)
    rank, world = rank_and_world()
    images = (fmnist_images(256) * 255).round().to(torch.uint8).numpy()
    split = Split(images, fmnist_labels(256).numpy())
    teacher = _net(16, 1)  # the same teacher on both ranks (the stages load it from one file)
    torch.manual_seed(rank)  # student and adapter differ per rank on purpose
    student = _net(8, 100 + rank)
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets", features=FeatureKDConfig(pairs=["2=2"])))
    distiller = Distiller(student, teacher, kd, sample=torch.from_numpy(images[:2]).float() / 255)
    init = kd.adapters[0].weight.detach().clone()
    train = BatchLoader(split, 32, shuffle=True, seed=0, rank=rank, world_size=world)
    val = BatchLoader(split, 128, shuffle=False, rank=rank, world_size=world)
    cfg = TrainConfig(epochs=1, lr=0.05, amp="off", channels_last="off", max_steps_per_epoch=3, log_every=1000)
    fit(student, distiller.step, train, val, cfg, work_dir=work, device="cpu", seed=0, aux=kd)
    torch.save({"student": {k: v.detach().clone() for k, v in student.state_dict().items()},
                "aux": {k: v.detach().clone() for k, v in kd.state_dict().items()}, "adapter_init": init},
               work / f"rank{rank}.pt")


if __name__ == "__main__":
    _ddp_child(Path(sys.argv[1]))


def test_the_engine_returns_the_adapters_of_the_best_epoch_not_the_last(fmnist_small, tmp_path) -> None:
    """The student saved is the best epoch's; the adapters carried to QAT must be the ones trained with it."""
    student, teacher = _net(8, 0), _net(16, 1)
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets", features=FeatureKDConfig(pairs=["2=2"])))
    sample = torch.from_numpy(fmnist_small.train.images[:2]).float() / 255.0
    distiller = Distiller(student, teacher, kd, sample=sample)
    train = BatchLoader(fmnist_small.train, 64, shuffle=True, augment=None, seed=7)
    cfg = TrainConfig(epochs=2, lr=0.05, amp="off", channels_last="off", max_steps_per_epoch=4, log_every=1000)
    scores = iter([0.9, 0.5])  # epoch 0 is the best
    after_epoch0 = {}

    def snapshot(epoch: int, model: nn.Module) -> None:
        if epoch == 1:
            after_epoch0.update({k: v.clone() for k, v in kd.state_dict().items()})

    result = fit(student, distiller.step, train, None, cfg, work_dir=tmp_path, device="cpu", seed=7,
                 hooks=(snapshot,), eval_fn=lambda m: {"accuracy": next(scores), "loss": 0.0}, aux=kd)
    assert result.best_epoch == 0
    assert set(result.best_aux_state) == {"adapters.0.weight", "adapters.0.bias"}
    for k, v in after_epoch0.items():
        assert torch.equal(result.best_aux_state[k], v), k
    assert not torch.equal(kd.adapters[0].weight.detach(), after_epoch0["adapters.0.weight"])  # epoch 1 moved them


def _scored_fit(fmnist_small, work: Path, scores: list[float], resume: bool = False, kill_at_step: int | None = None):
    """The engine's result of :func:`_fitnets_fit` with epoch e scoring scores[e] on validation."""
    return _fitnets_fit(fmnist_small, work, resume, kill_at_step, scores=scores)[2]


def _done_epochs(work: Path) -> int:
    return len((work / "metrics.jsonl").read_text().splitlines()) if (work / "metrics.jsonl").exists() else 0


def test_a_resumed_fit_returns_the_best_epochs_adapters_from_the_checkpoint(fmnist_small, tmp_path) -> None:
    straight = _scored_fit(fmnist_small, tmp_path / "straight", [0.9, 0.5, 0.4])
    with pytest.raises(_Killed):  # killed in epoch 2: epochs 0 (best) and 1 are checkpointed
        _scored_fit(fmnist_small, tmp_path / "resumed", [0.9, 0.5, 0.4], kill_at_step=10)
    resumed = _scored_fit(fmnist_small, tmp_path / "resumed", [0.9, 0.5, 0.4], resume=True)
    assert straight.best_epoch == resumed.best_epoch == 0
    for k, v in straight.best_aux_state.items():
        assert torch.equal(resumed.best_aux_state[k], v), k


@pytest.mark.parametrize("scores, refused", [([0.9, 0.5, 0.4], True), ([0.5, 0.9, 0.4], False)])
def test_a_checkpoint_without_the_best_epochs_adapters_resumes_only_when_exact(fmnist_small, tmp_path, scores,
                                                                              refused) -> None:
    """A checkpoint written before edgekd kept best_aux: its last aux is the best one only when its last
    epoch was the best; otherwise resuming would pair the best student with other adapters."""
    from edgekd.errors import CheckpointError

    with pytest.raises(_Killed):
        _scored_fit(fmnist_small, tmp_path, scores, kill_at_step=10)
    ckpt_path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["best_aux"]
    torch.save(ckpt, ckpt_path)
    if refused:
        with pytest.raises(CheckpointError, match="lacks the KD loss's state at its best epoch"):
            _scored_fit(fmnist_small, tmp_path, scores, resume=True)
    else:
        result = _scored_fit(fmnist_small, tmp_path, scores, resume=True)
        assert result.best_epoch == 1
        assert torch.equal(result.best_aux_state["adapters.0.weight"], ckpt["aux"]["adapters.0.weight"])


def _kd_state_ctx(tmp_path: Path, loss: str, pairs: list[str]):
    """What save/load_kd_state read of a stage context: the config, a manifest, the stage folders."""
    from types import SimpleNamespace

    from edgekd.config import Config
    from edgekd.manifest import Manifest

    cfg = Config()
    cfg.distill.loss, cfg.distill.features.pairs = loss, pairs
    manifest = Manifest(tmp_path)
    return SimpleNamespace(cfg=cfg, manifest=manifest, run_dir=tmp_path,
                           stage_dir=lambda name: (tmp_path / "stages" / name).mkdir(parents=True, exist_ok=True)
                           or tmp_path / "stages" / name)


def _bound_fitnets(pairs: list[str], student: nn.Module, teacher: nn.Module, sample: torch.Tensor):
    kd = KD_LOSSES.get("fitnets")(DistillConfig(loss="fitnets", features=FeatureKDConfig(pairs=pairs)))
    Distiller(student, teacher, kd, sample=sample)
    return kd


def test_qat_loads_the_adapters_distill_saved_onto_the_fake_quant_student(fmnist_small, batch, tmp_path) -> None:
    from edgekd.errors import ArtifactError
    from edgekd.quant import prepare_qat
    from edgekd.stages.kd_setup import load_kd_state, save_kd_state

    student, teacher = _models(fmnist_small)
    pairs = ["net.layer2=net.features.6"]
    ctx = _kd_state_ctx(tmp_path, "fitnets", pairs)
    learned = _bound_fitnets(pairs, student, teacher, batch[0][:2])
    with torch.no_grad():
        learned.adapters[0].weight.normal_()  # what distill learned: not the fresh init
    saved = save_kd_state(ctx, learned, {"stage": "distill"})
    ctx.manifest.record_stage("distill", saved)

    qmodel = prepare_qat(copy.deepcopy(student).eval(), [(batch[0],)], 1)
    fresh = _bound_fitnets(pairs, qmodel, teacher, batch[0][:2])
    assert not torch.equal(fresh.adapters[0].weight, learned.adapters[0].weight)
    assert load_kd_state(ctx, fresh) is True
    for (k, a), b in zip(learned.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k

    # adapters learned for another pairing would load without a shape error: refused by name
    other = _bound_fitnets(["net.layer2=net.features.7"], qmodel, teacher, batch[0][:2])
    with pytest.raises(ArtifactError, match="net.features.6"):
        load_kd_state(ctx, other)
    # a loss that learns nothing carries nothing; a run distilled before kd_state existed is told to re-run
    assert load_kd_state(ctx, KD_LOSSES.get("hinton")(DistillConfig())) is False
    ctx.manifest.record_stage("distill", {})
    with pytest.raises(ArtifactError, match="saved no kd_state") as e:
        load_kd_state(ctx, fresh)
    assert "--stages distill,qat --force" in e.value.fix
