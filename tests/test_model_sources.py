"""Models from outside edgekd (issue 12): torchvision and timm by name, TorchScript files, published weights.

Contract, for every built-in name and one model of each outside source: it builds for grey 28x28
and RGB 32x32 data, gives [B, classes] logits, and exports to ONNX with onnxruntime agreeing with
torch; students listed as QAT-verified also go through QAT to an INT8 file. Then: a torchvision
ResNet-18 with its published weights runs through the teacher stage (weights from the torch hub
cache when there, else a published-layout state dict saved here), and a TorchScript teacher does too.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conftest import FMNIST_DIR, requires_fashion_mnist
from edgekd.config import ModelConfig, config_from_dict
from edgekd.errors import ConfigError
from edgekd.exporting import export_fp32, export_int8, parity_fp32, parity_int8
from edgekd.models import STUDENTS, TEACHERS, build_student, build_teacher, load_weights
from edgekd.quant import freeze_observers, prepare_qat

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GREY = SimpleNamespace(channels=1, classes=[f"c{i}" for i in range(10)], image_size=(28, 28), mean=(0.29,), std=(0.35,))
RGB = SimpleNamespace(channels=3, classes=[f"c{i}" for i in range(7)], image_size=(32, 32),
                      mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
HAS_TIMM = pytest.mark.skipif(__import__("importlib").util.find_spec("timm") is None,
                              reason="timm is not installed (pip install 'edgekd[timm]'; the dev extra has it)")
# One model per outside source, and the students benchmarks/student_support.py found to go through QAT + INT8.
OUTSIDE = [("teacher", "torchvision:resnet18"), ("teacher", "torchvision:efficientnet_b0"),
           ("student", "torchvision:mobilenet_v3_small"), ("student", "torchvision:mnasnet0_5"),
           pytest.param("student", "timm:mobilenetv4_conv_small", marks=HAS_TIMM)]
BUILT_IN = [("teacher", n) for n in TEACHERS.names()] + [("student", n) for n in STUDENTS.names()]
QAT_VERIFIED = ["mobilenet_v2", "torchvision:mnasnet0_5", pytest.param("timm:mobilenetv4_conv_small", marks=HAS_TIMM)]


def _build(kind: str, arch: str, bundle, **kw) -> nn.Module:
    torch.manual_seed(0)
    small = {"width": 0.25} if arch in ("resnet18", "resnet34", "resnet50", "wide_resnet50_2") else {}
    return (build_teacher if kind == "teacher" else build_student)(ModelConfig(arch=arch, **{**small, **kw}), bundle)


def _set_bn_stats(model: nn.Module, bundle) -> None:
    """An untrained net has dead layers under fresh BN statistics; a few passes on images give real ones."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        for _ in range(3):
            model.train()(torch.rand(16, bundle.channels, *bundle.image_size, generator=gen))
    model.eval()


@pytest.mark.parametrize("kind,arch", BUILT_IN + OUTSIDE)
def test_builds_for_grey_and_rgb(kind: str, arch: str) -> None:
    for bundle in (GREY, RGB):
        model = _build(kind, arch, bundle).eval()
        with torch.no_grad():
            out = model(torch.rand(2, bundle.channels, *bundle.image_size))
        assert out.shape == (2, len(bundle.classes)) and torch.isfinite(out).all(), (arch, bundle.channels)


@pytest.mark.parametrize("kind,arch", OUTSIDE)
def test_outside_model_exports_to_onnx(kind: str, arch: str, tmp_path: Path) -> None:
    model = _build(kind, arch, RGB)
    _set_bn_stats(model, RGB)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    export_fp32(model, tmp_path / "m.onnx", (1, 3, 32, 32))
    p = parity_fp32(model, tmp_path / "m.onnx", x, batch_sizes=[1, 8])  # raises ParityError beyond rtol/atol
    assert p["images"] == 8 and p["max_bound_ratio"] < 1.0


@pytest.mark.parametrize("arch", QAT_VERIFIED)
def test_verified_students_go_through_qat_to_int8(arch: str, tmp_path: Path) -> None:
    model = _build("student", arch, RGB)
    _set_bn_stats(model, RGB)
    gen = torch.Generator().manual_seed(2)
    q = prepare_qat(model, [(torch.rand(16, 3, 32, 32, generator=gen),) for _ in range(2)], num_batches=2)
    freeze_observers(q)
    export_int8(q, tmp_path / "m.int8.onnx", (1, 3, 32, 32))
    result = parity_int8(q, tmp_path / "m.int8.onnx", torch.rand(32, 3, 32, 32, generator=gen).numpy())
    # untrained logits are near-ties (top-1 "agreement" is then vacuous); every logit within the int8 bound is not
    assert result["logits_within_bound"] >= 0.99 and result["images"] == 32


def test_stem_options() -> None:
    """small: the published kernel at stride stem_stride, max-pool per `maxpool`; native: as published."""
    small = _build("teacher", "torchvision:resnet18", RGB, stem="small", stem_stride=1, maxpool=False).net
    assert small.conv1.kernel_size == (7, 7) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    native = _build("teacher", "torchvision:resnet18", RGB, stem="native").net
    assert native.conv1.stride == (2, 2) and isinstance(native.maxpool, nn.MaxPool2d)
    auto_big = build_teacher(ModelConfig(arch="torchvision:resnet18"), SimpleNamespace(**{**vars(RGB), "image_size": (160, 160)}))
    assert auto_big.net.conv1.stride == (2, 2)  # auto: images >= 128 px keep the ImageNet stem
    builtin_native = _build("teacher", "resnet18", GREY, stem="native").net
    assert builtin_native.conv1.kernel_size == (7, 7) and builtin_native.conv1.stride == (2, 2)


@pytest.fixture
def hub_dir(tmp_path: Path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_builtin_native_stem_keeps_pretrained_7x7(hub_dir: Path) -> None:
    """The built-in resnet18 with stem native loads torchvision's 7x7 stem (it used to stay fresh)."""
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(3)
    published = torchvision.models.resnet18().state_dict()  # stands in for the ImageNet file (no network here)
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(published, hub_dir / "checkpoints" / Path(weights.url).name)
    net = build_teacher(ModelConfig(arch="resnet18", stem="native", weights="torchvision:IMAGENET1K_V1"), GREY).net
    torch.testing.assert_close(net.conv1.weight, published["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net.layer4[1].conv2.weight, published["layer4.1.conv2.weight"])


def _published_resnet18(tmp_path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """ResNet-18 ImageNet weights from the torch hub cache when present, else a published-layout file saved here."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    if cached.is_file():
        return "torchvision:IMAGENET1K_V1", torch.load(cached, weights_only=True)
    torch.manual_seed(4)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "resnet18-published.pth")
    return str(tmp_path / "resnet18-published.pth"), state


@requires_fashion_mnist
def test_torchvision_pretrained_teacher_runs_the_teacher_stage(tmp_path: Path) -> None:
    import edgekd

    weights, published = _published_resnet18(tmp_path)
    cfg = {"name": "tv", "seed": 0, "device": "cpu", "num_threads": 1, "stages": ["teacher"],
           "data": {"dataset": "fashion_mnist", "root": str(FMNIST_DIR), "download": False, "val_size": 64,
                    "train_subset": 256, "test_subset": 64, "batch_size": 32, "eval_batch_size": 64,
                    "augment": {"crop_padding": 0, "hflip": False}},
           "teacher": {"arch": "torchvision:resnet18", "weights": weights, "stem": "small", "maxpool": False},
           "teacher_train": {"epochs": 1, "lr": 0.01, "amp": "off", "max_steps_per_epoch": 4}}
    cfg_obj = config_from_dict(cfg)
    net = build_teacher(cfg_obj.teacher, SimpleNamespace(channels=1, classes=10, image_size=(28, 28),
                                                          mean=(0.5,), std=(0.25,))).net
    # the published 7x7 stem survives (summed over RGB for grey input), at stride 1 for 28 px images
    torch.testing.assert_close(net.conv1.weight, published["conv1.weight"].sum(1, keepdim=True))
    assert net.conv1.stride == (1, 1) and net.fc.out_features == 10
    run = edgekd.run(cfg_obj, out=tmp_path / "runs")
    m = run.metrics("teacher")
    assert m["epochs"] == 1 and 0.0 <= m["test_accuracy"] <= 1.0
    path = run.manifest.artifact("teacher", "weights")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state["net.conv1.weight"].shape == (64, 1, 7, 7) and state["net.fc.weight"].shape == (10, 512)
    # fine-tuned: the SGD steps moved the stem away from the published filters
    assert not torch.equal(state["net.conv1.weight"], published["conv1.weight"].sum(1, keepdim=True))
    again = build_teacher(cfg_obj.teacher, GREY)  # what the later stages do (stages.common.load_teacher)
    load_weights(again, path)
    torch.testing.assert_close(again.state_dict()["net.layer1.0.conv1.weight"], state["net.layer1.0.conv1.weight"])


@requires_fashion_mnist
def test_torchscript_teacher_is_scored_and_exports(tmp_path: Path) -> None:
    import edgekd

    torch.manual_seed(5)
    src = build_teacher(ModelConfig(arch="resnet18", width=0.25), GREY).eval()
    torch.jit.save(torch.jit.script(src.net), tmp_path / "teacher.ts")
    cfg = ModelConfig(arch=f"torchscript:{tmp_path / 'teacher.ts'}")
    scripted = build_teacher(cfg, GREY).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), src(x))
    export_fp32(scripted, tmp_path / "t.onnx", (1, 1, 28, 28))
    parity_fp32(scripted, tmp_path / "t.onnx", x.numpy(), batch_sizes=[1, 4])
    run = edgekd.run({"name": "ts", "device": "cpu", "num_threads": 1, "stages": ["teacher"],
                      "data": {"dataset": "fashion_mnist", "root": str(FMNIST_DIR), "download": False, "val_size": 64,
                               "train_subset": 128, "test_subset": 64, "eval_batch_size": 64},
                      "teacher": {"arch": cfg.arch}, "teacher_train": {"epochs": 0}}, out=tmp_path / "runs")
    assert run.metrics("teacher")["epochs"] == 0
    with pytest.raises(ConfigError, match=r"returns \(2, 10\).*not \[2, 7\]"):
        build_teacher(cfg, SimpleNamespace(**{**vars(GREY), "classes": [f"c{i}" for i in range(7)]}))


def test_bad_outside_names_and_settings() -> None:
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet19'.*resnet18"):
        config_from_dict({"teacher": {"arch": "torchvision:resnet19"}})
    with pytest.raises(ConfigError, match=r"teacher\.width' is 0\.5; it must be 1\.0 for torchvision:resnet18"):
        config_from_dict({"teacher": {"arch": "torchvision:resnet18", "width": 0.5}})
    with pytest.raises(ConfigError, match=r"valid: mobilenet_v2, .*; or torchvision:NAME, timm:NAME, torchscript:PATH"):
        config_from_dict({"student": {"arch": "mobilenet_v9"}})
    with pytest.raises(ConfigError, match=r"student\.stem.*valid: auto, small, native"):
        config_from_dict({"student": {"stem": "tiny"}})


@HAS_TIMM
def test_timm_layers_become_plain_ones_computing_the_same() -> None:
    """timm's BatchNormAct2d (BN + activation) and Linear become plain layers with equal outputs: QAT would fold a
    BatchNormAct2d as a BatchNorm and silently drop its activation (timm:efficientnet_b0 once exported so)."""
    import copy

    import timm

    from edgekd.models.external import plain_layers

    torch.manual_seed(6)
    net = timm.create_model("efficientnet_b0", num_classes=10).eval()
    _set_bn_stats(net, RGB)
    plain = plain_layers(copy.deepcopy(net))
    kinds = {type(m).__name__ for m in plain.modules()}
    assert "BatchNormAct2d" not in kinds and all(type(m) in (nn.Linear,) for m in plain.modules() if isinstance(m, nn.Linear))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=0)  # the same ops in the same order


def test_student_that_qat_cannot_rewrite_is_refused_early(tmp_path: Path) -> None:
    """A student whose layers QAT cannot rewrite fails when it is built (before distillation), naming why."""
    class SameConv(nn.Conv2d):  # a Conv2d subclass computing more than a plain conv (like timm's Conv2dSame)
        pass

    from edgekd.models.external import check_quantizable

    net = nn.Sequential(SameConv(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(ConfigError, match=r"layer types edgekd's QAT cannot rewrite: .*SameConv"):
        check_quantizable(net, "timm:custom")
    assert np.isfinite(net(torch.rand(1, 3, 8, 8)).detach().numpy()).all()
