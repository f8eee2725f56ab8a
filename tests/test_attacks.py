"""White-box and black-box attacks on a small CNN trained here on real Fashion-MNIST images."""
from __future__ import annotations

from dataclasses import replace

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import fmnist_prefix
from edgekd.config import RobustnessEvalConfig
from edgekd.pixels import to_float
from edgekd.robustness.attacks import ATTACKS, fgsm, fgsm_rs, pgd
from edgekd.robustness.blackbox import margin, square_attack
from edgekd.robustness.evaluate import add_mce, eps_key, evaluate_robustness, torch_predict_fn, transfer_attack

def _read(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = fmnist_prefix(split, n)  # the tests' one raw reader: the first n images, in file order
    return to_float(x), y


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A tiny CNN trained for two passes over 2000 real training images; 300 test images."""
    torch.manual_seed(0)
    x, y = _read("train", 2000)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(2):
        for i in torch.randperm(2000).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[i]), yt[i]).backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    xs, ys = _read("test", 300)
    return model, xs, ys


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _onnx_predict(model: nn.Module):  # noqa: ANN202 - returns a predict_fn over an onnxruntime session
    pytest.importorskip("onnxruntime")
    from edgekd.deploy.runtime import make_session, onnx_logits

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)
    sess = make_session(buf.getvalue())
    return lambda a: onnx_logits(sess, a)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "fgsm_rs"])
def test_attacks_stay_in_the_ball_and_the_box(name: str, trained) -> None:
    model, xs, ys = trained
    x, y = torch.from_numpy(xs[:64]), torch.from_numpy(ys[:64])
    for eps in (0.03, 0.1, 0.3):
        adv = ATTACKS.get(name)(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0))
        assert adv.shape == x.shape and not adv.requires_grad
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert (adv - x).abs().max() > eps / 2  # it does move
    assert all(p.grad is None for p in model.parameters())  # attacks touch input gradients only
    assert not model.training


def test_pgd_beats_random_sign_noise(trained) -> None:
    model, xs, ys = trained
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    clean = _acc(model, x, y)
    assert clean > 0.6, f"the tiny CNN did not learn ({clean:.2f})"
    eps = 0.1
    g = torch.Generator().manual_seed(0)
    noise = torch.clamp(x + eps * torch.sign(torch.rand(x.shape, generator=g) - 0.5), 0, 1)
    adv = pgd(model, x, y, eps, steps=10, generator=g)
    acc_noise, acc_pgd, acc_fgsm = _acc(model, noise, y), _acc(model, adv, y), _acc(model, fgsm(model, x, y, eps), y)
    assert acc_pgd < acc_noise - 0.2, (clean, acc_noise, acc_pgd)
    assert acc_pgd <= acc_fgsm + 0.02  # iterating is at least as strong as one step
    assert _acc(model, fgsm_rs(model, x, y, eps, generator=g), y) < acc_noise - 0.2
    # epsilon 0 is the identity
    assert torch.equal(pgd(model, x, y, 0.0, steps=3), x)


def test_pgd_is_deterministic_with_a_generator(trained) -> None:
    model, xs, ys = trained
    x, y = torch.from_numpy(xs[:32]), torch.from_numpy(ys[:32])
    a = pgd(model, x, y, 0.05, steps=3, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, 0.05, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_square_attack_on_an_onnxruntime_session(trained) -> None:
    model, xs, ys = trained
    predict = _onnx_predict(model)
    x, y = xs[:100], ys[:100]
    eps = 0.2
    noise = np.clip(x + eps * np.sign(np.random.default_rng(0).random(x.shape) - 0.5), 0, 1).astype(np.float32)
    acc_noise = float((predict(noise).argmax(1) == y).mean())
    adv = square_attack(predict, x, y, eps, queries=200, rng=np.random.default_rng(0), p_init=0.3)
    assert adv.dtype == np.float32 and adv.shape == x.shape
    assert np.abs(adv - x).max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    acc = float((predict(adv).argmax(1) == y).mean())
    assert acc < acc_noise - 0.15, (acc_noise, acc)
    again = square_attack(predict, x, y, eps, queries=200, rng=np.random.default_rng(0), p_init=0.3)
    np.testing.assert_array_equal(adv, again)
    np.testing.assert_allclose(margin(np.array([[1.0, 3.0, 2.0]]), np.array([1])), [1.0])


def test_transfer_attack_scores_torch_pgd_on_onnx(trained) -> None:
    model, xs, ys = trained
    predict = _onnx_predict(model)
    acc, adv = transfer_attack(model, predict, xs[:100], ys[:100], 0.1, steps=10, seed=0)
    own = float((torch_predict_fn(model)(adv).argmax(1) == ys[:100]).mean())
    clean = float((predict(xs[:100]).argmax(1) == ys[:100]).mean())
    # the ONNX file computes the same function, so the transferred attack is as strong as white-box
    assert abs(acc - own) <= 0.02 and acc < clean - 0.2


def test_evaluate_robustness_schema(trained) -> None:
    model, xs, ys = trained
    predict = _onnx_predict(model)
    cfg = RobustnessEvalConfig(corruptions=["gaussian_noise", "contrast"], severities=[1, 5], images=120,
                               epsilons=[0.1], pgd_steps=5, square_queries=40, adversarial_images=40)
    val = (xs[200:], ys[200:])
    res = evaluate_robustness(predict, xs[:200], ys[:200], cfg, seed=0, val=val, torch_model=model)
    corr = res["corruption"]
    assert set(corr["by_corruption"]) == {"gaussian_noise", "contrast"}
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in corr["by_corruption"].values())
    assert corr["by_corruption"]["contrast"][1] <= corr["clean_accuracy"]
    adv = res["adversarial"]
    assert set(adv) == {"square", "pgd", "fgsm", "transfer"}
    k = eps_key(0.1)
    assert k == "0.1000"
    assert adv["pgd"][k] < corr["clean_accuracy"] - 0.15
    cal = res["calibration"]
    assert 0 <= cal["ece"] <= 1 and cal["temperature"] > 0 and cal["ece_temperature_scaled"] is not None
    assert set(res["ood"]) == {"uniform", "blobs", "inverted"}
    assert all(0 <= v["auroc_msp"] <= 1 and 0 <= v["auroc_energy"] <= 1 for v in res["ood"].values())
    # the same seed reproduces every number; the model against itself has mCE exactly 1
    again = evaluate_robustness(predict, xs[:200], ys[:200], cfg, seed=0, val=val, torch_model=model)
    assert again["corruption"] == res["corruption"] and again["adversarial"] == res["adversarial"]
    add_mce(res, again)
    assert res["corruption"]["mce"] == pytest.approx(1.0) and res["corruption"]["relative_mce"] == pytest.approx(1.0)
    # without a torch model only the black-box attack runs (the ONNX-only path)
    onnx_only = evaluate_robustness(predict, xs[:200], ys[:200], cfg, seed=0)
    assert set(onnx_only["adversarial"]) == {"square"} and onnx_only["calibration"]["temperature"] is None
    # square_queries 0 turns the black-box attack off; the white-box numbers are unchanged
    no_square = evaluate_robustness(predict, xs[:200], ys[:200], replace(cfg, square_queries=0), seed=0, val=val,
                                    torch_model=model)
    assert set(no_square["adversarial"]) == {"pgd", "fgsm", "transfer"}
    assert no_square["adversarial"]["pgd"] == res["adversarial"]["pgd"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_white_box_on_cuda(trained) -> None:
    from edgekd.robustness.evaluate import white_box

    model, xs, ys = trained
    cuda_model = _cnn().cuda().eval()
    cuda_model.load_state_dict(model.state_dict())
    adv = white_box(cuda_model, "pgd", xs[:64], ys[:64], 0.1, steps=5, seed=0, device="cuda")
    assert np.abs(adv - xs[:64]).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
