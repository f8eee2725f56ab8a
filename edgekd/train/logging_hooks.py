"""TensorBoard scalars for the training stages: one event file per stage, one point per epoch.

``epoch_loggers(setting, log_dir)`` turns the config switch ``logging.tensorboard`` into the
``on_epoch`` callbacks of :func:`edgekd.train.engine.fit` (called on rank 0 after each epoch
with that epoch's record, the same record ``metrics.jsonl`` gets). ``auto`` logs when the
``tensorboard`` package is installed, ``on`` requires it, ``off`` never logs.
"""
from __future__ import annotations

import importlib.util
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError

EpochCallback = Callable[[dict[str, Any]], None]
INSTALL_HINT = "install with pip install 'edgekd[tensorboard]', or set logging.tensorboard: off"

# epoch record key (edgekd.train.engine) -> TensorBoard tag; the groups make TensorBoard's scalar
# dashboard show train and val of one quantity on one card
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
    "images_per_second": "throughput/images_per_second",
    "seconds": "time/epoch_seconds",
}


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which torch's SummaryWriter needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger:
    """An ``on_epoch`` callback writing an epoch record's scalars to ``log_dir``.

    The writer is opened on the first record, so a process that never logs (a torchrun rank other
    than 0) leaves no empty event file. Each epoch is flushed: a live TensorBoard sees it at once,
    and a killed stage keeps the epochs it finished.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        step = int(record["epoch"])
        for key, tag in TAGS.items():
            v = record.get(key)
            # skip NaN/inf (e.g. no train accuracy when the step returns no logits): TensorBoard cannot plot them
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._writer.add_scalar(tag, float(v), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (no-op when nothing was logged)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@contextmanager
def epoch_loggers(setting: str, log_dir: str | Path) -> Iterator[tuple[EpochCallback, ...]]:
    """The ``on_epoch`` callbacks for ``logging.tensorboard`` = ``setting``, closed on exit.

    ``on`` without the tensorboard package is a ConfigError naming the extra to install.
    """
    if setting == "off" or (setting == "auto" and not tensorboard_available()):
        yield ()
        return
    if not tensorboard_available():
        raise ConfigError("logging.tensorboard is 'on' but the tensorboard package is not installed", INSTALL_HINT)
    try:  # before training, not after its first epoch: a broken install fails the stage at once
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the tensorboard package is installed but torch cannot write its events ({e})",
                          "reinstall it: pip install 'edgekd[tensorboard]', or set logging.tensorboard: off") from None
    logger = TensorBoardLogger(log_dir)
    try:
        yield (logger,)
    finally:
        logger.close()
