"""Models: every registered teacher and student on 1-channel 28x28 and 3-channel 32x32 inputs,
the in-model normalization, the small-input adaptation, and weight loading (local and torchvision)."""
from __future__ import annotations

import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from edgekd.config import ModelConfig, config_from_dict
from edgekd.errors import CheckpointError, ConfigError
from edgekd.models import STUDENTS, TEACHERS, Normalized, build_student, build_teacher, load_weights

pytestmark = pytest.mark.usefixtures("torch_one_thread")


CIFAR_LIKE = SimpleNamespace(channels=3, classes=[f"c{i}" for i in range(7)], image_size=(32, 32),
                             mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
ALL = [("teacher", n) for n in TEACHERS.names()] + [("student", n) for n in STUDENTS.names()]


def _build(kind: str, cfg: ModelConfig, bundle) -> Normalized:
    torch.manual_seed(0)
    return (build_teacher if kind == "teacher" else build_student)(cfg, bundle)


def _real_batch(bundle, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(bundle.train.images[:n]).float() / 255.0, torch.from_numpy(bundle.train.labels[:n])


@pytest.mark.parametrize("kind,arch", ALL)
def test_shape_and_gradients_on_fashion_mnist(kind: str, arch: str, fmnist_small) -> None:
    """1-channel 28x28 real images: [B, 10] logits, finite gradients on every parameter, down to the stem."""
    x, y = _real_batch(fmnist_small)
    model = _build(kind, ModelConfig(arch=arch), fmnist_small).train()
    assert isinstance(model, Normalized) and model.channels == 1
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    stem = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1 and stem.weight.grad.abs().sum() > 0  # reaches the first layer


@pytest.mark.parametrize("kind,arch", ALL)
def test_shape_on_rgb_32(kind: str, arch: str) -> None:
    """3-channel 32x32 inputs (CIFAR-like, 7 classes): the stem takes 3 channels, logits are [B, 7]."""
    model = _build(kind, ModelConfig(arch=arch), CIFAR_LIKE).eval()
    assert next(m for m in model.net.modules() if isinstance(m, nn.Conv2d)).in_channels == 3
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


def test_normalized_normalizes() -> None:
    seen = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.sum(dim=(2, 3))

    model = Normalized(Record(), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = torch.rand(4, 3, 5, 5)
    model(x)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25, x[:, 2] / 2.0], dim=1)
    torch.testing.assert_close(seen[0], expected)
    assert model.mean.shape == (1, 3, 1, 1) and set(model.state_dict()) == {"mean", "std"}


def test_built_model_normalizes_with_dataset_stats(fmnist_small) -> None:
    model = _build("student", ModelConfig(arch="mobilenet_v3_small"), fmnist_small).eval()
    x, _ = _real_batch(fmnist_small, 4)
    mean, std = fmnist_small.mean[0], fmnist_small.std[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))


@pytest.mark.parametrize("stem_stride", [1, 2])
@pytest.mark.parametrize("arch", STUDENTS.names())
def test_student_keeps_torchvision_structure(arch: str, stem_stride: int, fmnist_small) -> None:
    """Same tensors as torchvision's (but the 1-channel stem and the 10-class head); final map >= 2x2."""
    model = _build("student", ModelConfig(arch=arch, stem_stride=stem_stride), fmnist_small)
    ref = getattr(torchvision.models, arch)(num_classes=10).state_dict()
    own = model.net.state_dict()
    assert set(own) == set(ref)
    assert [k for k in own if own[k].shape != ref[k].shape] == ["features.0.0.weight"]
    assert own["features.0.0.weight"].shape[1] == 1 and model.net.features[0][0].stride == (stem_stride, stem_stride)
    with torch.no_grad():
        fmap = model.net.features(torch.rand(1, 1, 28, 28))
    assert fmap.shape[-2:] == (2, 2)


@pytest.mark.parametrize("arch", STUDENTS.names())
def test_fresh_student_residual_blocks_start_as_identity(arch: str) -> None:
    """Issue 12: with torchvision's init (BN weight 1) the residual blocks add up un-scaled and a
    from-scratch MobileNetV2-0.5 stayed near chance for 2 epochs on 2 000 RGB 32x32 digits; every
    residual block of a fresh student now returns its input unchanged (its last BN weight is 0)."""
    model = _build("student", ModelConfig(arch=arch, width=0.5), CIFAR_LIKE).eval()
    blocks = [b for b in model.net.features if getattr(b, "use_res_connect", False)]
    assert len(blocks) >= 5  # V2-0.5 has 10, V3-Small 7, V3-Large 10
    with torch.no_grad():
        for block in blocks:
            c = block.block[0][0].in_channels if hasattr(block, "block") else block.conv[0][0].in_channels
            x = torch.randn(2, c, 4, 4)
            # exact up to float rounding of x + 0 * (...): relative to the input's scale (~1)
            torch.testing.assert_close(block(x), x, rtol=1e-6, atol=1e-6)


def test_teacher_options_change_the_network(fmnist_small) -> None:
    x = torch.rand(1, 1, 28, 28)
    full = _build("teacher", ModelConfig(arch="resnet18"), fmnist_small)
    assert isinstance(full.net.maxpool, nn.MaxPool2d) and full.net.conv1.kernel_size == (3, 3)
    ref = torchvision.models.resnet18().state_dict()
    own = full.net.state_dict()
    assert set(own) == set(ref) and {k for k in own if own[k].shape != ref[k].shape} == {"conv1.weight", "fc.weight", "fc.bias"}
    nopool = _build("teacher", ModelConfig(arch="resnet18", maxpool=False, stem_stride=2), fmnist_small)
    assert isinstance(nopool.net.maxpool, nn.Identity) and nopool.net.conv1.stride == (2, 2)
    half = _build("teacher", ModelConfig(arch="resnet18", width=0.5), fmnist_small).eval()
    assert half.net.fc.in_features == 256 and half.net.layer1[0].conv1.out_channels == 32
    assert sum(p.numel() for p in half.parameters()) < 0.3 * sum(p.numel() for p in full.parameters())
    assert half(x).shape == (1, 10)


def test_bad_configs_raise_config_error(fmnist_small) -> None:
    with pytest.raises(ConfigError, match="valid: .*resnet18"):
        build_teacher(ModelConfig(arch="resnet9000"), fmnist_small)
    for section in ("student", "teacher"):  # checked once, at config load; the models only assert it
        with pytest.raises(ConfigError, match="stem_stride"):
            config_from_dict({section: {"stem_stride": 3}})
    with pytest.raises(ConfigError, match="width 1.0"):
        build_student(ModelConfig(arch="mobilenet_v2", width=0.5, weights="torchvision:DEFAULT"), fmnist_small)
    with pytest.raises(ConfigError, match="no torchvision pretrained"):
        build_teacher(ModelConfig(arch="wrn16_4", weights="torchvision:DEFAULT"), fmnist_small)


def test_adapted_student_learns_real_images(fmnist_small) -> None:
    """20 Adam steps on 32 real images drive the training loss well down (the adapted net trains)."""
    model = _build("student", ModelConfig(arch="mobilenet_v3_small", width=0.5), fmnist_small).train()
    x, y = _real_batch(fmnist_small, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- weights


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_load_weights_round_trip(tmp_path: Path, fmnist_small) -> None:
    cfg = ModelConfig(arch="mobilenet_v2", width=0.5)
    src = _build("student", cfg, fmnist_small)
    x, _ = _real_batch(fmnist_small, 4)
    with torch.no_grad():  # move away from the init (tiny logits) so outputs tell models apart
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
        src.train()(x)  # non-trivial BN running statistics
    src.eval()
    torch.manual_seed(1)
    dst = build_student(cfg, fmnist_small).eval()
    assert (src(x) - dst(x)).abs().max() > 1e-2
    meta = load_weights(dst, _save({"state_dict": src.state_dict(), "meta": {"stage": "distill"}}, tmp_path / "a.pt"))
    assert meta == {"stage": "distill"}
    torch.testing.assert_close(dst(x), src(x))
    # a raw net's state_dict ('model' key) into a Normalized model, and a Normalized one into a raw net
    torch.manual_seed(2)
    dst2 = build_student(cfg, fmnist_small).eval()
    load_weights(dst2, _save({"model": src.net.state_dict()}, tmp_path / "b.pt"))
    torch.testing.assert_close(dst2(x), src(x))
    raw = build_student(cfg, fmnist_small).net.eval()
    load_weights(raw, _save(src.state_dict(), tmp_path / "c.pt"))
    torch.testing.assert_close(raw((x - src.mean) / src.std), src(x))
    # weights given in the config load at build time
    built = build_student(ModelConfig(arch="mobilenet_v2", width=0.5, weights=str(tmp_path / "a.pt")), fmnist_small).eval()
    torch.testing.assert_close(built(x), src(x))


def test_load_weights_mismatch_names_keys(tmp_path: Path, fmnist_small) -> None:
    path = _save(_build("student", ModelConfig(arch="mobilenet_v2", width=0.5), fmnist_small).state_dict(), tmp_path / "s.pt")
    five = SimpleNamespace(channels=1, classes=5, image_size=(28, 28), mean=(0.5,), std=(0.5,))
    expected = r"mis-shaped \(2\): net\.classifier\.1\.weight file \(10, 1280\) vs model \(5, 1280\)"
    with pytest.raises(CheckpointError, match=expected):
        load_weights(build_student(ModelConfig(arch="mobilenet_v2", width=0.5), five), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(_build("teacher", ModelConfig(arch="resnet18", width=0.25), fmnist_small), path)
    msg = str(err.value)
    assert "missing (" in msg and "net.conv1.weight" in msg and "unexpected (" in msg and "net.features.0.0.weight" in msg
    assert "fix:" in msg


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty", "pickled_object", "not_a_state_dict"])
def test_load_weights_corrupt_file(tmp_path: Path, content: str, fmnist_small) -> None:
    model = _build("student", ModelConfig(arch="mobilenet_v3_small", width=0.5), fmnist_small)
    good = _save(model.state_dict(), tmp_path / "good.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    if content == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif content == "garbage":
        bad.write_bytes(bytes(range(256)) * 8)
    elif content == "empty":
        bad.write_bytes(b"")
    elif content == "pickled_object":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": SimpleNamespace(a=1)}, bad)
    else:
        torch.save({"epoch": 3, "lr": 0.1}, bad)
    with pytest.raises(CheckpointError, match="unreadable or corrupt|holds no state_dict"):
        load_weights(model, bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")


@pytest.fixture
def hub_dir(tmp_path: Path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def test_torchvision_weights_from_hub_cache(hub_dir: Path, fmnist_small) -> None:
    """A weights file in the hub cache loads: RGB stem summed to grey, mismatched head left fresh."""
    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    torch.manual_seed(3)
    pretrained = torchvision.models.mobilenet_v3_small().state_dict()  # stands in for the ImageNet file
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(pretrained, hub_dir / "checkpoints" / Path(weights.url).name)
    model = build_student(ModelConfig(arch="mobilenet_v3_small", weights="torchvision:DEFAULT"), fmnist_small)
    own = model.net.state_dict()
    torch.testing.assert_close(own["features.0.0.weight"], pretrained["features.0.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(own["features.5.block.0.0.weight"], pretrained["features.5.block.0.0.weight"])
    torch.testing.assert_close(own["classifier.0.weight"], pretrained["classifier.0.weight"])
    assert own["classifier.3.weight"].shape == (10, 1024)


def test_torchvision_weights_offline_is_checkpoint_error(hub_dir: Path, monkeypatch, fmnist_small) -> None:
    def no_network(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(CheckpointError, match=r"no network.*\n.*fix: download .*resnet18-f37072fd\.pth") as err:
        build_teacher(ModelConfig(arch="resnet18", weights="torchvision:IMAGENET1K_V1"), fmnist_small)
    assert str(hub_dir / "checkpoints") in str(err.value)
    with pytest.raises(ConfigError, match="valid: DEFAULT, IMAGENET1K_V1"):
        build_teacher(ModelConfig(arch="resnet18", weights="torchvision:IMAGENET9K"), fmnist_small)
