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


class DivergenceError(EdgekdError):
    """A training stage diverged (loss not finite or rising, accuracy at chance); its outputs are not kept."""


class InputError(EdgekdError):
    """A path or value given on the command line cannot be used (missing, unwritable, not a folder)."""


# errno -> what the user can do about it; the OS message alone says what went wrong, not the fix.
_OS_FIXES = {
    "ENOENT": "check the path: the file or a folder above it does not exist",
    "ENOTDIR": "a folder on that path is a regular file: choose a path whose parents are folders",
    "EISDIR": "the path is a folder: pass a file path instead",
    "EACCES": "check the permissions, or choose a path you can write to",
    "EPERM": "check the permissions, or choose a path you can write to",
    "EROFS": "the file system is read-only: choose a writable path",
    "ENOSPC": "the disk is full: free space or choose another path",
    "EEXIST": "a file is in the way (where a folder is needed?): remove it or choose another path",
}


def from_os_error(e: OSError, doing: str = "access", target: str | None = None) -> InputError:
    """An OSError as an InputError naming the path, the OS's reason and a fix (the traceback says neither).

    ``target`` is the path the user gave, when the OS error names another one (a parent folder).
    """
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    where = str(e.filename) if e.filename is not None else None
    also = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    reason = e.strerror or str(e)
    if target is not None and where is not None and where != str(target):
        head = f"cannot {doing} {target} ({where}{also}: {reason})"
    else:
        head = f"cannot {doing} {target or where or 'a path'}{also}: {reason}"
    return InputError(head, _OS_FIXES.get(name, "check the path and its permissions"))


def user_error(e: BaseException) -> EdgekdError | None:
    """The user-facing form of ``e`` when it comes from a bad input; None for an internal error (a bug).

    EdgekdError passes through; OSError names its path; ValueError (which includes JSON decode
    errors) and YAML errors come from a value or file the user gave.
    """
    if isinstance(e, EdgekdError):
        return e
    if isinstance(e, OSError):
        return from_os_error(e)
    if isinstance(e, ValueError):
        return InputError(f"invalid value: {e}", "fix the value named above (see --help and the config reference)")
    try:
        import yaml
    except ImportError:  # yaml is a core dependency; without it no YAML error can occur either
        return None
    if isinstance(e, yaml.YAMLError):
        return InputError(f"invalid YAML: {e}", "fix the YAML syntax at the line shown")
    return None


def report_error(e: BaseException, prog: str, debug: bool = False) -> int:
    """Print ``e`` for the user and return the exit code: 2 for a user error, 3 for an internal error.

    With ``debug`` the exception is re-raised so Python prints the traceback. Exit 1 is never
    returned: it means "the gate failed".
    """
    import sys

    if debug:
        raise e
    err = user_error(e)
    if err is not None:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"{prog}: internal error: {type(e).__name__}: {e}\n"
          "  fix: this is a bug in edgekd; re-run with --debug for the traceback and report it", file=sys.stderr)
    return 3
