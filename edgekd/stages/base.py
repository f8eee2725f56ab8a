"""What every stage receives and returns. A stage reads verified artifacts and writes its own into its staging folder."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..config import Config
from ..manifest import Manifest

if TYPE_CHECKING:  # torch-side types only for hints
    from ..data.base import DatasetBundle


def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class StageContext:
    """The run a stage works in: config, run folder, manifest, and shared lazily built data."""

    cfg: Config
    run_dir: Path  # where the running stage writes: its staging folder, laid out like the run folder
    manifest: Manifest  # the staged run's manifest: read inputs through it (paths resolve in the shadow run folder)
    resume: bool = False
    fingerprint: str = ""  # hash of the stage's config sections + input artifacts; guards resume
    log: Callable[[str], None] = _print
    _bundle: "DatasetBundle | None" = field(default=None, repr=False)

    def dataset(self) -> "DatasetBundle":
        """The dataset with its seeded validation split (built once per run, numpy only)."""
        if self._bundle is None:
            from ..data import build_dataset

            self._bundle = build_dataset(self.cfg.data, self.cfg.seed)
        return self._bundle

    def stage_dir(self, name: str) -> Path:
        d = self.run_dir / "stages" / name
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass
class StageResult:
    """What a stage hands back: files it wrote (recorded with sha256), metrics, and extra manifest fields."""

    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
