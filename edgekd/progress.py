"""Progress bars for the long steps (training epochs, teacher-logit caching, export parity, check).

One switch for the whole program: a bar is drawn only when stderr is a terminal, ``tqdm`` is
installed (it comes with the ``train`` extra), and progress is not turned off with ``--quiet`` or
``EDGEKD_PROGRESS=0``. ``--quiet`` sets that environment variable, so the processes a command
starts (torchrun ranks) stay quiet too. Otherwise every helper here returns a no-op bar, so
callers never branch. Torch-free (ground floor).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator, TextIO, TypeVar

ENV = "EDGEKD_PROGRESS"
T = TypeVar("T")


def set_quiet(quiet: bool = True) -> None:
    """Turn progress output off (``--quiet``) for this process and the processes it starts."""
    if quiet:
        os.environ[ENV] = "0"
    else:
        os.environ.pop(ENV, None)


def is_quiet() -> bool:
    """True when progress is turned off (``--quiet`` or ``EDGEKD_PROGRESS=0``)."""
    return os.environ.get(ENV, "1") == "0"


def enabled(stream: TextIO | None = None) -> bool:
    """Whether bars are drawn: not quiet, ``stream`` (default stderr) is a TTY, and tqdm is importable."""
    stream = sys.stderr if stream is None else stream
    if is_quiet() or not getattr(stream, "isatty", lambda: False)():
        return False
    try:
        import tqdm  # noqa: F401 - optional (train extra): without it there are no bars
    except ImportError:
        return False
    return True


class NullBar:
    """The bar used when progress is off: the subset of tqdm's interface edgekd calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        """Count ``n`` steps done (ignored)."""

    def set_postfix(self, **values: Any) -> None:
        """Show ``values`` after the bar (ignored)."""

    def set_description(self, desc: str) -> None:
        """Change the bar's label (ignored)."""

    def close(self) -> None:
        """Remove the bar (nothing to remove)."""

    def __enter__(self) -> "NullBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str = "it", stream: TextIO | None = None) -> Any:
    """A tqdm bar on ``stream`` (stderr) of ``total`` steps labelled ``desc``, or a :class:`NullBar` when off.

    The bar is removed when closed (``leave=False``): the log lines that report results stay
    readable, and a log captured from a terminal holds no stale bars.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled(stream):
        return NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=stream)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
          stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items``, advancing a bar per item (``total`` defaults to ``len(items)`` where it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, stream) as b:
        for item in items:
            yield item
            b.update(1)
