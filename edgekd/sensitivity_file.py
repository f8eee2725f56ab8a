"""``sensitivity.json``, the layer ranking that ``edgekd sensitivity`` writes: its name and its one reader.

Ground floor: the config check (``qat.keep_float_most_sensitive``) reads the ranking at load, and the
qat stage reads it to pick the layers it keeps in float.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

SENSITIVITY_FILE = "sensitivity.json"


def load_ranking(path: str | Path) -> list[str]:
    """Layer names of a ``sensitivity.json`` (or of a run folder holding one), most sensitive first."""
    p = Path(path)
    if p.is_dir():
        p = p / SENSITIVITY_FILE
    if not p.is_file():
        raise ConfigError(f"no sensitivity file at {p}", "run 'edgekd sensitivity RUN' on a full-int8 run first, "
                          "and point qat.sensitivity to its run folder or its sensitivity.json")
    try:
        ranking = json.loads(p.read_text())["ranking"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p} is not a sensitivity.json written by edgekd sensitivity ({type(e).__name__}: {e})",
                          "run 'edgekd sensitivity RUN' again") from None
    if not isinstance(ranking, list) or not all(isinstance(n, str) for n in ranking):
        raise ConfigError(f"{p}: 'ranking' is not a list of layer names", "run 'edgekd sensitivity RUN' again")
    return list(ranking)
