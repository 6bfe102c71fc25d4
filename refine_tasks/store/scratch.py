"""Files a process writes under a name that carries its PID, `<name><mark><pid>` (temporary
checkpoints, a stage's outputs set aside while it runs): whose they are, and removing them."""

from __future__ import annotations

import shutil
from pathlib import Path


def marked_pid(path: Path, mark: str) -> int | None:
    """The PID in `path`'s name after `mark`, or None when the name carries none."""
    pid = path.name.rpartition(mark)[2]
    return int(pid) if mark in path.name and pid.isdigit() else None


def remove_path(path: Path) -> None:
    """Remove a folder (with its contents), a file or a link; nothing when it does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
