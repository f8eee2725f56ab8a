"""Error types: each names the problem and the fix, so a user never has to read a traceback."""
from __future__ import annotations


class EdgekdError(Exception):
    """Base error. ``fix`` says what the user should do about it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class ConfigError(EdgekdError):
    """The configuration is invalid: an unknown key, a wrong type, a bad value."""


class DataError(EdgekdError):
    """A dataset file is missing, truncated, corrupt or has the wrong checksum."""


class CheckpointError(EdgekdError):
    """A checkpoint or weights file is unreadable or does not fit the model."""


class ArtifactError(EdgekdError):
    """A run artifact is missing, corrupt, or does not match its recorded sha256."""


class ParityError(EdgekdError):
    """Exported model disagrees with the torch model beyond tolerance."""
