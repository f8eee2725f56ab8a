"""edgekd: distill a large image classifier into a small, robust INT8 ONNX model for edge CPUs, and prove it.

Public API (the CLI calls exactly these):

- ``edgekd.run(config=None, overrides=None, out=None, stages=None, resume=False, force=False) -> Run``
- ``edgekd.load_config(path=None, overrides=None) -> Config``

Importing ``edgekd`` does not import torch: the deployment side (gate, doctor, report) runs without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Config, load_config
from .errors import EdgekdError

__version__ = "0.1.0"
__all__ = ["Config", "EdgekdError", "Run", "load_config", "run", "__version__"]

if TYPE_CHECKING:
    from .pipeline import Run


def run(*args: Any, **kwargs: Any) -> "Run":
    """Run the pipeline; see :func:`edgekd.pipeline.run` for the arguments."""
    from .pipeline import run as _run

    return _run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from .pipeline import Run

        return Run
    raise AttributeError(name)
