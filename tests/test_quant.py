"""INT8 QAT modules: BN folding, weight/activation fake quant, observers, state round-trip (real Fashion-MNIST)."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from edgekd.quant import ActFakeQuant, QConv2d, QLinear, fold_bn, freeze_observers, prepare_qat

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FMNIST.is_file(), reason=f"Fashion-MNIST not installed at {FMNIST}")

try:
    from edgekd.models.normalize import Normalized
except ImportError:  # the models package is written in parallel; same contract (.net, .mean, .std)
    class Normalized(nn.Module):  # type: ignore[no-redef]
        def __init__(self, net: nn.Module, mean, std) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)


def fmnist_images(n: int) -> torch.Tensor:
    """The first ``n`` Fashion-MNIST test images as float32 [n, 1, 28, 28] in [0, 1]."""
    with gzip.open(FMNIST, "rb") as fh:
        raw = np.frombuffer(fh.read(16 + n * 784), np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(n, 1, 28, 28).astype(np.float32) / 255.0)


def fmnist_labels(n: int) -> torch.Tensor:
    with gzip.open(FMNIST.with_name("t10k-labels-idx1-ubyte.gz"), "rb") as fh:
        return torch.from_numpy(np.frombuffer(fh.read(8 + n), np.uint8, offset=8).astype(np.int64))


def mobilenet_student(seed: int = 0) -> Normalized:
    """MobileNetV2-0.5, 1-channel stride-1 stem, BN statistics from real images (non-trivial folding)."""
    torch.manual_seed(seed)
    net = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)
    net.features[0][0] = nn.Conv2d(1, net.features[0][0].out_channels, 3, 1, 1, bias=False)
    model = Normalized(net, (0.286,), (0.353,))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: BN stats of exactly these batches
    model.train()
    with torch.no_grad():
        for batch in fmnist_images(128).split(64):
            model(batch)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _trained_state() -> dict[str, torch.Tensor]:
    model = mobilenet_student()
    x, y = fmnist_images(768), fmnist_labels(768)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    torch.manual_seed(0)
    for i in range(24):
        batch = slice(i * 32, (i + 1) * 32)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained_student() -> Normalized:
    """``mobilenet_student`` after 24 Adam steps on 768 real images (well above chance, diverse predictions).

    A random MobileNetV2 maps every image to nearly the same logits (constant top-1, so agreement
    tests would be vacuous); a few real steps give input-dependent predictions. Cached per process.
    """
    model = mobilenet_student()
    model.load_state_dict(_trained_state())
    return model.eval()


@pytest.fixture(scope="module")
def student() -> Normalized:
    return trained_student()


@pytest.fixture(scope="module")
def qat(student: Normalized):
    return prepare_qat(student, [(b,) for b in fmnist_images(256).split(64)], num_batches=4)


def test_fold_bn_matches_conv_then_bn() -> None:
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(4, 3, 10, 10)
    fused = fold_bn(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_prepare_copies_folds_and_replaces(student: Normalized, qat) -> None:
    before = {k: v.clone() for k, v in student.state_dict().items()}
    q = prepare_qat(student, None, 0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items()), "input model was mutated"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert sum(isinstance(m, QConv2d) for m in q.modules()) == 52
    assert sum(isinstance(m, QLinear) for m in q.modules()) == 1
    kinds = [m.kind for m in q.modules() if isinstance(m, ActFakeQuant)]
    assert kinds.count("relu6") == 35 and len(kinds) == 66  # input + 35 relu6 + 17 proj + 10 adds + pool/flatten/logits


def test_weight_fake_quant_is_per_channel_symmetric_int8(qat) -> None:
    conv = next(m for m in qat.modules() if isinstance(m, QConv2d) and m.groups == 1 and m.out_channels > 8)
    w = conv.weight.detach()
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    wq = conv.quantized_weight().detach()
    torch.testing.assert_close(conv.w_scale, scale)
    levels = wq / scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)  # on the int8 grid
    assert levels.abs().max() <= 127.001 and (wq - w).abs().max() <= scale.max() / 2 + 1e-7


def test_activation_ranges_suit_onnxruntime_fusion(qat) -> None:
    for _, fq in qat.activation_quantizers():
        assert fq.calibrated
        assert 0 <= int(fq.zero_point) <= 255 and float(fq.scale) > 0
        if fq.kind in ("relu", "relu6"):
            assert int(fq.zero_point) == 0  # ORT drops Relu/Clip before Q only with zero point 0
        if fq.kind == "relu6":
            assert float(fq.scale) * 255 <= 6.0 + 1e-6  # Q range inside [0, 6]: the Clip is removable


def test_qat_model_tracks_float_model(student: Normalized, qat) -> None:
    """First layer: only input + weight rounding (tiny error); logits: small drift, same top-1."""
    x = fmnist_images(1792)[1536:]  # not used for training or calibration
    with torch.no_grad():
        ref_stem = student.net.features[0]((x - student.mean) / student.std)
        stem = [qat.net.get_submodule(n) for n in ("features.0.0", "features.0.2", "act_fq_0")]
        got_stem = stem[2](stem[1](stem[0](qat.input_fq((x - qat.mean) / qat.std))))
        ref, got = student(x), qat(x)
    assert ((got_stem - ref_stem).norm() / ref_stem.norm()).item() < 0.02
    assert ((got - ref).norm() / ref.norm()).item() < 0.2  # post-training quantization drift, before any QAT step
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.8  # small margins after 24 steps


def test_freeze_stops_observers_and_gradients_flow(student: Normalized) -> None:
    q = prepare_qat(student, [(fmnist_images(64),)], 1).train()
    fq = q.input_fq
    scale0 = float(fq.scale)
    q(fmnist_images(64) * 0.5)  # training forward with a different range moves the EMA
    assert float(fq.scale) != scale0
    assert freeze_observers(q) == 66
    frozen = {n: float(m.scale) for n, m in q.activation_quantizers()}
    out = q(fmnist_images(64) * 3.0)
    assert frozen == {n: float(m.scale) for n, m in q.activation_quantizers()}
    out.logsumexp(1).mean().backward()  # straight-through estimator: gradients reach every weight
    grads = [m.weight.grad for m in q.modules() if isinstance(m, (QConv2d, QLinear))]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_state_dict_round_trip(tmp_path: Path, student: Normalized, qat) -> None:
    freeze_observers(qat)
    path = tmp_path / "qat.pt"
    torch.save({"state_dict": qat.qat_state_dict()}, path)
    fresh = prepare_qat(student, None, 0)
    assert not fresh.input_fq.calibrated
    fresh.load_qat_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert all(m.frozen for _, m in fresh.activation_quantizers())
    x = fmnist_images(64)
    with torch.no_grad():
        assert torch.equal(fresh(x), qat(x))


def test_resnet_prepares_with_residual_quantization() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model = Normalized(net, (0.286,), (0.353,)).eval()
    x = fmnist_images(32)
    q = prepare_qat(model, [(x,)], 1)
    kinds = [m.kind for _, m in q.activation_quantizers()]
    assert kinds.count("relu") == 17  # stem + 2 per block (the add's relu quantizes the block output)
    with torch.no_grad():
        rel = ((q(x) - model(x)).norm() / model(x).norm()).item()
    assert rel < 0.25
