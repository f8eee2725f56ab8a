"""CPU bf16 autocast falls back to fp32 for convs oneDNN's bf16 backward gets wrong (edgekd.train.bf16_guard).

Found on an AMD EPYC (AVX512-BF16): tests/test_health.py's 8x8 noise images made the ResNet teacher's
loss NaN in a random half of the runs under ``amp: auto``, because a stride-2 3x3 conv on a 1x1 map
got uninitialized weight gradients. The shapes below are the ones measured there.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.config import TrainConfig
from edgekd.data.base import Split
from edgekd.data.loader import BatchLoader
from edgekd.train.bf16_guard import degenerate_strided_convs, guard_cpu_bf16, loader_input_shape
from edgekd.train.engine import Precision, fit

CPU = torch.device("cpu")
BF16 = Precision(torch.bfloat16, reason="amp on")


@pytest.mark.parametrize("hw, stride, kernel, flagged", [
    ((1, 1), 2, 3, True),        # the failing ResNet layer4 case (18-26/30 trials wrong)
    ((5, 1), 2, 3, True),        # one column wide: wrong in 30/30
    ((1, 1), (1, 2), 3, True),   # stride along the width only: still wrong
    ((2, 2), 3, 3, True),        # output one column wide at stride 3: wrong in 13/30
    ((1, 5), 2, 3, False),       # one row high but three columns out: exact
    ((1, 1), (2, 1), 3, False),  # strided along the height only: exact
    ((1, 1), 2, (3, 1), False),  # a kernel one column wide: exact
    ((3, 3), 2, 3, False),       # two columns out: exact
    ((1, 1), 1, 3, False),       # not strided
])
def test_the_flagged_shapes_are_the_measured_failures(hw, stride, kernel, flagged):
    pad = tuple(k // 2 for k in ((kernel, kernel) if isinstance(kernel, int) else kernel))
    model = nn.Sequential(nn.Conv2d(4, 8, kernel, stride, pad), nn.Flatten())
    assert degenerate_strided_convs(model, (4, *hw)) == (["0"] if flagged else [])


def _resnet_like() -> nn.Module:
    # 8x8 -> 4 -> 2 -> 1: the last conv is strided over a 1x1 map, as in the ResNet teacher on 8x8 images
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_the_probe_leaves_the_model_as_it_was():
    # a QAT observer updates on every forward pass, in train and eval mode alike: the probe must not feed it
    from torch.ao.quantization import FakeQuantize
    model = nn.Sequential(FakeQuantize(), _resnet_like()).train()
    model(torch.rand(4, 1, 8, 8))  # the observer has seen real inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert degenerate_strided_convs(model, (1, 8, 8)) == ["1.6", "1.9"]  # 2x2 -> 1 and 1x1 -> 1
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks for m in model.modules())


def test_guard_changes_only_cpu_bf16():
    model = _resnet_like()
    guarded = guard_cpu_bf16(BF16, model, (1, 8, 8), CPU)
    assert guarded.dtype is None and not guarded.scaler
    assert "convs '6', '9' are strided" in guarded.reason and "amp on" in guarded.reason
    assert "data.image_size" in guarded.reason  # names a fix
    assert guard_cpu_bf16(BF16, model, (1, 32, 32), CPU) == BF16  # larger images: bf16 stays
    assert guard_cpu_bf16(Precision(), model, (1, 8, 8), CPU) == Precision()
    fp16 = Precision(torch.float16, scaler=True)
    assert guard_cpu_bf16(fp16, model, (1, 8, 8), CPU) == fp16  # only bf16 is affected


def _loader(hw: int, n: int = 64) -> BatchLoader:
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (n, 1, hw, hw), dtype=np.uint8), rng.integers(0, 10, n))
    return BatchLoader(split, 16, shuffle=True, seed=0)


def test_input_shape_from_the_loader_or_its_first_batch():
    loader = _loader(8)
    assert loader_input_shape(loader) == (1, 8, 8)
    assert loader_input_shape([(torch.zeros(2, 3, 5, 7), torch.zeros(2))]) == (3, 5, 7)
    assert loader_input_shape([]) is None


@pytest.mark.parametrize("hw, dtype", [(8, "float32"), (32, "bfloat16")])
def test_fit_with_amp_on_trains_a_degenerate_model_in_fp32(tmp_path, hw, dtype):
    cfg = TrainConfig(epochs=1, lr=0.01, optimizer="adamw", amp="on", channels_last="off", schedule="constant",
                      warmup_fraction=0.0)
    model = _resnet_like()  # its last conv sees 1x1 maps at 8x8 inputs, 4x4 maps at 32x32

    def step(m, batch):
        logits = m(batch[0])
        return nn.functional.cross_entropy(logits.float(), batch[1]), logits

    result = fit(model, step, _loader(hw), _loader(hw), cfg, work_dir=tmp_path, device="cpu", seed=0)
    assert result.precision["dtype"] == dtype, result.precision
    if dtype == "float32":
        assert "bf16_guard" in result.precision["reason"]
    assert all(torch.isfinite(v).all() for v in result.best_state.values() if v.is_floating_point())
