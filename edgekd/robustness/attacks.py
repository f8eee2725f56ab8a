"""White-box L-inf attacks in [0, 1] pixel space (torch).

The model takes [0, 1] pixels (normalization lives inside it), so the eps-ball and the
[0, 1] box are both simple clamps. The attacks never change the model's train/eval mode:
evaluation callers put the model in eval mode, and robust-KD training decides for itself.
Gradients are taken w.r.t. the input only (``torch.autograd.grad``), so no parameter
``.grad`` is touched.

- ``fgsm``: Goodfellow et al. 2015, one signed-gradient step of size epsilon.
- ``pgd``: Madry et al. 2018, random start plus ``steps`` projected signed-gradient steps.
- ``fgsm_rs``: Wong, Rice & Kolter 2020 ("Fast is better than free"): a random start then
  one step of 1.25 * epsilon, projected; the cheap inner attack for adversarial training.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")


def _check_eps(epsilon: float) -> None:
    if epsilon < 0:
        raise ConfigError(f"attack epsilon must be >= 0, got {epsilon}", "use an L-inf radius such as 8/255")


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Clamp ``x_adv`` into the L-inf ball of radius ``epsilon`` around ``x`` and into [0, 1]."""
    return torch.clamp(torch.min(torch.max(x_adv, x - epsilon), x + epsilon), 0.0, 1.0)


def uniform_start(x: torch.Tensor, epsilon: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A uniform random point of the eps-ball around ``x``, clamped to [0, 1]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    return torch.clamp(x + epsilon * noise, 0.0, 1.0)


def _input_grad(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


@ATTACKS.register("pgd")
def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: Optional[float] = None,
    random_start: bool = True,
    loss_fn: Optional[LossFn] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """L-inf PGD: maximise ``loss_fn(model(x'), y)`` (default cross-entropy) over the eps-ball.

    ``step_size`` defaults to ``2.5 * epsilon / steps`` (Madry et al.); ``y`` is whatever
    ``loss_fn`` takes as its target (labels, or teacher probabilities for robust KD).
    Returns detached adversarial images inside the eps-ball and [0, 1].
    """
    _check_eps(epsilon)
    x = x.detach()
    if epsilon == 0 or steps <= 0:
        return x.clone()
    loss_fn = loss_fn or _ce
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    x_adv = uniform_start(x, epsilon, generator) if random_start else x.clone()
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y, loss_fn)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, epsilon)
    return x_adv.detach()


@ATTACKS.register("fgsm")
def fgsm(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int = 1,
    step_size: Optional[float] = None,
    random_start: bool = False,
    loss_fn: Optional[LossFn] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """FGSM: one step of ``epsilon * sign(grad)`` from the clean input, clamped to [0, 1].

    ``steps``, ``step_size``, ``random_start`` and ``generator`` are accepted so that every
    attack in ``ATTACKS`` takes the same keywords; FGSM ignores them by definition.
    """
    _check_eps(epsilon)
    x = x.detach()
    if epsilon == 0:
        return x.clone()
    grad = _input_grad(model, x, y, loss_fn or _ce)
    return project(x + epsilon * grad.sign(), x, epsilon).detach()


@ATTACKS.register("fgsm_rs")
def fgsm_rs(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    steps: int = 1,
    step_size: Optional[float] = None,
    random_start: bool = True,
    loss_fn: Optional[LossFn] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """FGSM with a uniform random start and step ``1.25 * epsilon`` (Wong et al. 2020), projected.

    ``steps`` and ``random_start`` are accepted for a uniform ``ATTACKS`` call and ignored:
    the method is one step from a random start.
    """
    _check_eps(epsilon)
    x = x.detach()
    if epsilon == 0:
        return x.clone()
    alpha = step_size if step_size is not None else 1.25 * epsilon
    x_adv = uniform_start(x, epsilon, generator)
    grad = _input_grad(model, x_adv, y, loss_fn or _ce)
    return project(x_adv + alpha * grad.sign(), x, epsilon).detach()


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` summed over classes, averaged over the batch (KLDivLoss 'batchmean')."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), teacher_probs, reduction="batchmean")


def kd_adversary(
    student: torch.nn.Module,
    x: torch.Tensor,
    teacher_probs: torch.Tensor,
    attack: str,
    epsilon: float,
    steps: int = 1,
    step_size: Optional[float] = None,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Inputs in the eps-ball around ``x`` that push the student away from the teacher's clean soft labels.

    The inner maximisation of ARD and RSLAD: maximise ``KL(teacher(x) || student(x') / T)``
    (``teacher_probs`` already softened at the same T) with the
    attack ``attack`` (``fgsm_rs`` or ``pgd``, from ``ATTACKS``). The student is put in eval mode
    while the attack runs (so adversarial batches do not move BatchNorm statistics) and its mode
    is restored afterwards.
    """
    fn = ATTACKS.get(attack)

    def objective(student_logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return kd_kl(student_logits / temperature, probs)

    was_training = student.training
    student.eval()
    try:
        return fn(student, x, teacher_probs.detach(), epsilon, steps=steps, step_size=step_size, loss_fn=objective,
                  generator=generator)
    finally:
        student.train(was_training)
