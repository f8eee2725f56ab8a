"""The KD loss interface, its registry, and the ``Distiller`` that pairs a student with a frozen teacher.

Adding a loss is adding one file in ``edgekd/losses/`` (every module there is imported by the
package) that subclasses ``KDLoss`` and registers it::

    @register_kd_loss("mine")
    class MyKD(KDLoss):
        def __init__(self, temperature: float) -> None: ...
        @classmethod
        def from_config(cls, cfg: DistillConfig) -> "MyKD":
            return cls(cfg.temperature)
        def forward(self, student_logits, teacher_logits, labels): ...

``KD_LOSSES.get(name)`` returns ``fn(cfg: DistillConfig) -> KDLoss`` (the class's ``from_config``).

What a loss may ask of ``Distiller.step`` (the one KD training step, used by the distill and QAT
stages and by the tests), each by a class attribute or an override:

- **features** (FitNets, attention transfer): ``bind(student, teacher, sample)`` sets
  ``student_layers`` / ``teacher_layers`` (module names); the step then taps those layers with
  forward hooks that exist only during the forward (``edgekd.models.features``), and calls
  ``forward(s, t, y, student_features=..., teacher_features=...)``.
- **learnable parameters** (FitNets adapters, the CTKD temperature): ordinary ``nn.Parameter`` of the
  loss module. The stages hand the loss to the engine as ``aux``: its parameters are optimized with
  the student and its state checkpointed for resume, but it is never part of the student, so never
  in the saved weights or the exported ONNX file. With ``carries_to_qat = True`` the distill stage
  saves that state (at the best epoch, ``kd_state.pt``) and the QAT stage starts from it, so QAT
  fine-tunes the learned adapters instead of training random ones against an already-trained student.
- **the student itself** (adversarial KD: ARD, RSLAD; augmented views: AugMix-style KD): define
  ``student_step(student, x, labels, teacher_logits) -> (loss, student_logits)``; the step calls it
  instead of ``student(x)`` + ``forward``. ``teacher_logits`` are always the teacher's logits on the
  clean input.
- **its own teacher** (self-distillation): ``self_teacher = True`` and ``make_teacher(student)``;
  the Distiller is then built with ``teacher=None``. ``before_step(student)`` runs before each step
  (the EMA update) and ``start_epoch(epoch, epochs)`` at each epoch start (curricula such as CTKD's).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
from torch import nn

from ..config import DistillConfig
from ..errors import ConfigError
from ..models.features import tap_features
from ..registry import Registry

KDLossFn = Callable[[DistillConfig], "KDLoss"]
KD_LOSSES: Registry[KDLossFn] = Registry("kd loss")

L = TypeVar("L", bound=type)
SHARED_KNOBS = ("temperature", "alpha")  # the DistillConfig fields every logit loss may read (KDLoss.uses)


class KDLoss(nn.Module):
    """Base class: ``forward(student_logits [B,K], teacher_logits [B,K], labels [B]) -> scalar loss``."""

    #: module names whose outputs ``forward`` receives as ``student_features`` / ``teacher_features``
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    #: the loss makes its own teacher from the student (``make_teacher``); no teacher stage output is read
    self_teacher: bool = False
    #: the QAT stage loads the distill stage's learned state (adapters, temperature) instead of starting afresh
    carries_to_qat: bool = False
    #: False: ``forward`` ignores ``teacher_logits`` (the no-KD baseline), so no teacher pass runs for it
    #: (the step passes an empty [B, 0] tensor, the distill stage caches nothing)
    reads_teacher: bool = True
    #: True: the teacher must run on every batch (it gives features, or it moves), so the distill stage's
    #: cached logits cannot serve the loss (``distill.cache_teacher_logits`` is refused for it)
    live_teacher: bool = False
    #: the shared KD knobs (``distill.temperature``, ``distill.alpha``) the loss reads; the distill stage records
    #: only these, so a run's metrics never show a temperature its loss ignored (a contract test checks it)
    uses: tuple[str, ...] = SHARED_KNOBS

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "KDLoss":
        """Build the loss from the distill config; override when the loss has parameters."""
        return cls()

    def bind(self, student: nn.Module, teacher: nn.Module, sample: Optional[torch.Tensor]) -> None:
        """Fit the loss to the two models (layer names, adapter shapes); ``sample`` is a small input batch."""

    def make_teacher(self, student: nn.Module, trained: bool = False) -> nn.Module:
        """The loss's own teacher made from ``student`` (``self_teacher``); ``trained``: the student is
        already trained (QAT's distilled student), not freshly initialised."""
        raise NotImplementedError(f"{type(self).__name__} needs a teacher")

    def before_step(self, student: nn.Module) -> None:
        """Called by ``Distiller.step`` before each step (self-distillation updates its EMA teacher here)."""

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of each 0-based ``epoch`` of ``epochs`` (curricula)."""

    def metrics(self) -> dict[str, float]:
        """What the loss learned, for the stage's metrics (CTKD: the temperature); {} for most losses."""
        return {}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(student_logits, teacher_logits, labels)")


def register_kd_loss(name: str) -> Callable[[L], L]:
    """Class decorator: register ``cls.from_config`` in ``KD_LOSSES`` under ``name``; returns the class."""

    def add(cls: L) -> L:
        unknown = set(getattr(cls, "uses", ())) - set(SHARED_KNOBS)
        if unknown:  # the distill stage records these from the config: fail at import, not after training
            raise ValueError(f"kd loss '{name}': uses names {sorted(unknown)}, but only {list(SHARED_KNOBS)} are shared "
                             "distill knobs; a loss's own settings live in its own config section")
        KD_LOSSES.register(name)(cls.from_config)
        return cls

    return add


def loss_class(name: str) -> type["KDLoss"]:
    """The ``KDLoss`` class registered as ``name`` (the registry holds its ``from_config``), for its class
    attributes (``live_teacher``, ``reads_teacher``, ``self_teacher``) without building the loss."""
    owner = getattr(KD_LOSSES.get(name), "__self__", None)
    if not (isinstance(owner, type) and issubclass(owner, KDLoss)):
        raise ConfigError(f"kd loss '{name}' is registered as {KD_LOSSES.get(name)!r}, not as a KDLoss class",
                          f"register its KDLoss subclass with @register_kd_loss('{name}') (edgekd.losses)")
    return owner


def uncompiled(model: nn.Module) -> nn.Module:
    """``model`` without a ``torch.compile`` wrapper (a DDP wrapper stays: it syncs the gradients).

    A feature step registers and removes hooks around each forward; in a compiled graph that would
    trigger a recompilation per step, so feature losses run the student eagerly.
    """
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


class Distiller(nn.Module):
    """A student trained against a frozen teacher with ``kd_loss``.

    The teacher never trains: its parameters have ``requires_grad=False``, it stays in eval mode
    (``train()`` puts only the student in training mode, so the teacher's BatchNorm statistics and
    dropout never change), and it runs under ``torch.inference_mode``.

    ``teacher=None`` is allowed for a loss with ``self_teacher`` (self-distillation; ``student_trained``:
    the student it copies is already trained, see ``KDLoss.make_teacher``). ``sample`` (a
    few input images) lets a feature loss probe the layer shapes when it is bound to the models.
    """

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], kd_loss: KDLoss,
                 sample: Optional[torch.Tensor] = None, student_trained: bool = False) -> None:
        super().__init__()
        if teacher is None:
            assert kd_loss.self_teacher, f"{type(kd_loss).__name__} needs a teacher"
            teacher = kd_loss.make_teacher(student, trained=student_trained)
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.kd_loss = kd_loss
        kd_loss.bind(student, self.teacher, sample)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` (no graph), as an ordinary tensor autograd code can use."""
        return self._teacher(x)[0]

    def _teacher(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher logits and tapped features (inference mode; cloned so autograd code can use them)."""
        self.teacher.eval()  # in case someone called teacher.train() directly
        layers = self.kd_loss.teacher_layers
        with torch.inference_mode(), (tap_features(self.teacher, layers) if layers else nullcontext({})) as feats:
            logits = self.teacher(x)
        # Inference tensors cannot enter autograd; a clone made outside inference mode can.
        return logits.clone(), {k: v.clone() for k, v in feats.items()}

    @classmethod
    def from_config(cls, student: nn.Module, teacher: Optional[nn.Module], cfg: DistillConfig,
                    sample: Optional[torch.Tensor] = None) -> "Distiller":
        """The distiller with the KD loss ``cfg.loss`` (``KD_LOSSES``) built from ``cfg``."""
        return cls(student, teacher, KD_LOSSES.get(cfg.loss)(cfg), sample)

    def epoch_hook(self, epochs: int) -> Callable[[int, Any], None]:
        """An engine hook ``hook(epoch, model)`` that tells the loss which epoch of ``epochs`` starts."""
        def hook(e: int, _model: Any) -> None:
            self.kd_loss.start_epoch(e, epochs)
        return hook

    def step(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The KD training step: ``(loss, student_logits)`` for one batch; the engine's ``step_fn``.

        ``model`` is the student to run: ``self.student`` itself, or its DDP wrapper under torchrun.
        ``batch`` is what the training loader yields (see ``edgekd.data.loader.BatchLoader``)::

            (x, y[, teacher_logits][, x_student])

        - ``x`` [B, C, H, W]: the clean (geometrically augmented) input; the teacher sees it.
        - ``teacher_logits`` [B, K] (or [B, M, K] for M teachers): cached logits of the teacher on
          ``x``; when present the teacher does not run (a feature loss needs it to run: the config
          check forbids caching then).
        - ``x_student`` [B, C, H, W], last: the student's view of ``x`` with the photometric
          augmentation (noise / corruption, robust KD option (a)); absent, the student sees ``x``.

        Losses with ``student_step`` (ARD, RSLAD, AugMix-style KD) build their inputs around the
        student's view themselves; their soft labels are still the teacher's logits on the clean ``x``.
        """
        x, y, *rest = batch
        x_student = rest.pop() if rest and rest[-1].shape == x.shape else x
        assert len(rest) <= 1, f"a KD batch is (x, y[, teacher_logits][, x_student]), got {len(batch)} items"
        loss_fn = self.kd_loss
        loss_fn.before_step(self.student)
        if not loss_fn.reads_teacher:  # the no-KD baseline: no teacher pass for logits it ignores
            t, t_feats = x.new_zeros((len(x), 0)), {}
        elif rest and not (loss_fn.live_teacher or loss_fn.teacher_layers or loss_fn.self_teacher):
            t, t_feats = rest[0].detach(), {}  # cached logits: of the run's teacher, never of a self-teacher
        else:
            t, t_feats = self._teacher(x)
        if hasattr(loss_fn, "student_step"):
            return loss_fn.student_step(model, x_student, y, t)
        if not loss_fn.student_layers:
            s = model(x_student)
            return loss_fn(s, t, y), s
        with tap_features(self.student, loss_fn.student_layers) as s_feats:  # hooks fire inside a DDP wrapper too
            s = uncompiled(model)(x_student)
        return loss_fn(s, t, y, student_features=s_feats, teacher_features=t_feats), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits (what is trained, evaluated and exported)."""
        return self.student(x)
