"""INT8 QAT modules: BN folding, weight/activation fake quant, observers, state round-trip (real Fashion-MNIST)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import requires_fashion_mnist
from helpers import Normalized, activation_quantizers, fmnist_images, qat_state_dict, trained_student
from edgekd.quant import ActFakeQuant, QConv2d, QLinear, fold_bn, freeze_observers, prepare_qat
from edgekd.quant.observers import round_up_significant_bits, weight_scale

pytestmark = requires_fashion_mnist


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
    exact = w.abs().amax(dim=(1, 2, 3)) / 127
    wq = conv.quantized_weight().detach()
    scale = conv.w_scale
    # max|w|/127 snapped *up* to float16 precision: at most 2**-10 above, below only by the float32 product's
    # rounding (one ulp, 2**-24 relative), which cannot move a weight past ±127
    assert torch.all(scale >= exact * (1 - 2.0 ** -23)) and torch.all(scale <= exact * (1 + 2.0 ** -10))
    assert not torch.equal(scale, exact)  # the snapping happened (a random scale is rarely on the grid)
    factor = scale.max() / 2 ** 14  # the largest channel's scale is kept exactly and maps to 2**14
    assert scale.max() == exact.max()
    h = scale / factor
    torch.testing.assert_close(h.half().float() * factor, scale, atol=0, rtol=0)  # float16 h times one factor
    levels = wq / scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)  # on the int8 grid
    assert levels.abs().max() <= 127.001 and (wq - w).abs().max() <= scale.max() / 2 + 1e-7


@pytest.mark.parametrize("x, expected", [
    (1.0, 1.0), (0.5, 0.5),                       # already 11 bits: unchanged
    (1 + 2.0 ** -23, 1 + 2.0 ** -10),              # one ulp above 1 rounds up to the next 11-bit value
    (2 - 2.0 ** -23, 2.0),                         # carry out of the mantissa: the next power of two
    (0.3, 0.300048828125),                         # ceil(0.3 / 2**-12) * 2**-12: 0.3 lies in [2**-2, 2**-1)
    (1e-8, 1.000444171950221e-08),                 # SCALE_EPS, a normal float32: same rule (exact fractions)
])
def test_round_up_significant_bits_golden(x: float, expected: float) -> None:
    got = round_up_significant_bits(torch.tensor([x], dtype=torch.float32))
    assert got.item() == np.float32(expected)


def test_activation_ranges_suit_onnxruntime_fusion(qat) -> None:
    for _, fq in activation_quantizers(qat):
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
    frozen = {n: float(m.scale) for n, m in activation_quantizers(q)}
    out = q(fmnist_images(64) * 3.0)
    assert frozen == {n: float(m.scale) for n, m in activation_quantizers(q)}
    out.logsumexp(1).mean().backward()  # straight-through estimator: gradients reach every weight
    grads = [m.weight.grad for m in q.modules() if isinstance(m, (QConv2d, QLinear))]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_state_dict_round_trip(tmp_path: Path, student: Normalized, qat) -> None:
    freeze_observers(qat)
    path = tmp_path / "qat.pt"
    torch.save({"state_dict": qat_state_dict(qat)}, path)
    fresh = prepare_qat(student, None, 0)
    assert not fresh.input_fq.calibrated
    fresh.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    assert all(m.frozen for _, m in activation_quantizers(fresh))
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
    kinds = [m.kind for _, m in activation_quantizers(q)]
    assert kinds.count("relu") == 17  # stem + 2 per block (the add's relu quantizes the block output)
    with torch.no_grad():
        rel = ((q(x) - model(x)).norm() / model(x).norm()).item()
    assert rel < 0.25


def test_activation_quantizer_reads_no_device_scalar_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward after calibration calls no Tensor.item(): on a GPU each call is a device sync per quantizer
    per step (the issue's slow QAT). The host copy must follow freeze() and a state_dict load."""
    q = ActFakeQuant("relu")
    q.train()
    q(torch.rand(8, 4))  # first observation
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or real_item(self))
    q(torch.rand(8, 4))  # observes again
    q.freeze()
    q(torch.rand(8, 4))  # frozen: fake quant only
    assert calls == []
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    assert q.frozen and q.calibrated and int(q.num_batches) == 2
    fresh = ActFakeQuant("relu")
    assert not fresh.frozen and not fresh.calibrated
    fresh.load_state_dict(q.state_dict())  # the host copy is rebuilt from the loaded buffers
    assert fresh.frozen and fresh.calibrated
    before = fresh.scale.clone()
    fresh.train()
    fresh(10 * torch.rand(8, 4))  # frozen after the load: the range must not move
    assert torch.equal(fresh.scale, before)


def test_weight_scale_compiles_without_graph_break() -> None:
    """QAT compiles on CUDA (``compile: auto``): the scale's bit-level rounding must trace in one graph.

    Dynamo's tracing is the same on every device; aot_eager checks it without a C++ compiler.
    """
    weights = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(weight_scale, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(weights), weight_scale(weights), atol=0, rtol=0)
