"""Errors of the positions and training steps that the CLI reports as one line (no torch import here),
and `writing_to`, which turns a full disk or a read-only folder into one of them."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SequenceTooShort(ValueError):
    """Training sequences cannot hold n_chunks rollouts with their margins."""


class RunDirError(RuntimeError):
    """train.out_dir does not fit the request (resume without a checkpoint, or a fresh run over one)."""


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row (train.max_bad_steps)."""


class TrainCheckpointError(RuntimeError):
    """A checkpoint is missing or corrupt; the message names the file and what to do."""


class OutputError(RuntimeError):
    """An output cannot be written (disk full, read-only, not permitted); the message names the folder,
    the field that chooses it and what to do."""


TRAINING_ERRORS: tuple[type[Exception], ...] = (
    SequenceTooShort,
    RunDirError,
    TrainingDiverged,
    TrainCheckpointError,
    OutputError,
)


# The errnos of a write the environment refused, and what the user can do about each.
STORAGE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
}
# safetensors' Rust errors quote the OS error as "(os error 28)" or "Os { code: 28, ... }".
_QUOTED_ERRNO = re.compile(r"os error (\d+)|Os \{ code: (\d+)")


def storage_errno(error: BaseException) -> int | None:
    """The errno of `error` when it is a write the environment refused (STORAGE_ERRNOS), else None."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and not isinstance(error, OSError):
        quoted = _QUOTED_ERRNO.search(str(error))
        code = int(quoted.group(1) or quoted.group(2)) if quoted else None
    return code if code in STORAGE_ERRNOS else None


def storage_message(code: int, path: str | Path, field: str | None, then: str) -> str:
    """One line: what stopped the write under `path`, and what to do before `then` (e.g. a command)."""
    reason, remedy = STORAGE_ERRNOS[code]
    elsewhere = f" or set {field} to another folder" if field else ""
    return f"{path}: cannot write ({reason}, errno {code}); {remedy}{elsewhere}, then {then}"


@contextmanager
def writing_to(path: str | Path, field: str | None, then: str = "run again") -> Iterator[None]:
    """Inside: a disk-full, read-only or permission error (an OSError, or safetensors' error quoting
    one) becomes an OutputError naming `path` and `field`; everything else passes through."""
    try:
        yield
    except Exception as e:
        code = storage_errno(e)
        if code is None:
            raise
        raise OutputError(storage_message(code, path, field, then)) from None
