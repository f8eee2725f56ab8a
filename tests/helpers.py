"""Helpers shared by several test modules (imported as ``from helpers import ...``; tests/ is on sys.path).

Test-only views of production objects live here, not in the package.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from conftest import FMNIST_DIR, fmnist_prefix
from edgekd.models.normalize import Normalized


def activation_quantizers(model: Any) -> list[tuple[str, Any]]:
    """``(name, ActFakeQuant)`` of a QATModel's activation quantizers, in module order."""
    from edgekd.quant.prepare import iter_act_quant

    return list(iter_act_quant(model))


def qat_state_dict(model: Any) -> dict[str, Any]:
    """A QATModel's weights plus every observer buffer (scale, zero point, range, frozen flag), detached copies."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- a real-data MobileNetV2 (test_quant, test_export)


def fmnist_images(n: int) -> torch.Tensor:
    """The first ``n`` Fashion-MNIST test images as float32 [n, 1, 28, 28] in [0, 1]."""
    return torch.from_numpy(fmnist_prefix("test", n)[0].astype(np.float32) / 255.0)


def fmnist_labels(n: int) -> torch.Tensor:
    """The first ``n`` Fashion-MNIST test labels (int64)."""
    return torch.from_numpy(fmnist_prefix("test", n)[1].copy())


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


# ------------------------------------------------------------- recorded manifest schema

EXPORT_STAGE_FIXTURE = Path(__file__).resolve().parent / "data" / "export_stage.json"
# dicts keyed by data (op types, dtypes, batch sizes), not by schema: their keys vary run to run
_DATA_KEYED = {"ops", "initializer_dtypes", "per_batch_size"}


def recorded_export_stage() -> dict:
    """The export stage's manifest fields (metrics, io, student note) as a real smoke run wrote them."""
    data = json.loads(EXPORT_STAGE_FIXTURE.read_text())
    data.pop("_comment", None)
    return data


def key_schema(d: object) -> object:
    """The nested key structure of a JSON value (leaves become their type name), for schema comparison."""
    if isinstance(d, dict):
        return {k: ("data-keyed" if k in _DATA_KEYED else key_schema(v)) for k, v in d.items()}
    if isinstance(d, list):
        return "list"
    return "number" if isinstance(d, (int, float)) and not isinstance(d, bool) else type(d).__name__


# ------------------------------------------------------------- a whole chain in seconds


def train_batch(bundle: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of a dataset bundle in [0, 1] and their labels (a real batch for a step)."""
    x = torch.from_numpy(bundle.train.images[:n]).float() / 255.0
    return x, torch.from_numpy(bundle.train.labels[:n])


def bundle_student(bundle: Any) -> nn.Module:
    """The default student (MobileNetV2 x0.5) built for ``bundle`` from seed 0."""
    from edgekd.config import ModelConfig
    from edgekd.models import build_student

    torch.manual_seed(0)
    return build_student(ModelConfig(arch="mobilenet_v2", width=0.5), bundle)


def tiny_run_config(name: str, batch_size: int, teacher: dict, student: dict, qat: dict) -> dict:
    """A config dict for the whole chain on 400 real training images that runs in seconds on CPU.

    A width-0.25 ResNet-18 teacher and a MobileNetV2-0.5 student, no augmentation, tiny parity and
    latency settings and no robustness checks; ``teacher``/``student``/``qat`` are the three
    training schedules (the tests that use this differ only there and in the batch size).
    """
    return {
        "name": name, "seed": 0, "device": "cpu", "num_threads": 1,
        "data": {"dataset": "fashion_mnist", "root": str(FMNIST_DIR), "download": False, "val_size": 64,
                 "train_subset": 400, "test_subset": 64, "batch_size": batch_size, "eval_batch_size": 64,
                 "augment": {"crop_padding": 0, "hflip": False}},
        "teacher": {"arch": "resnet18", "width": 0.25},
        "teacher_train": dict(teacher),  # copies: a dict shared twice would dump as a YAML alias
        "student": {"arch": "mobilenet_v2", "width": 0.5},
        "distill": {"train": dict(student)},
        "qat": {"calibration_batches": 2, "freeze_observers_epoch": 1, "train": dict(qat)},
        "export": {"parity_images": 16, "parity_batch_sizes": [1, 16]},
        "check": {"latency": {"batch_sizes": [1], "threads": [1], "warmup": 1, "runs": 2, "profile": False},
                  "robustness": {"enabled": False}},
        "budgets": {"model": "student_int8", "max_size_mb": 10.0},
    }
