"""One writer per run folder: an exclusive lock (flock) on RUN/.lock, held from before Hydra writes
the folder until the run's summary is written. The OS drops it when the process ends, however it
ends, so a killed run leaves no stale lock; the file stays behind holding the pid of the last
process that held it (the one a refusal names). Nothing here imports torch."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runner.config import UserError

NAME = ".lock"
_held: dict[Path, int] = {}  # folder → file descriptor: a process takes each folder's lock once


class FolderBusy(UserError):
    """Another process is writing the run folder."""


def hold(folder: Path | str, key: str = "hydra.run.dir") -> None:
    """Take `folder`'s lock for this process (again: a no-op); FolderBusy naming the holder's pid if
    it is taken."""
    folder = Path(folder).absolute()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusy(
            f"the run folder {folder} is being written by another process (pid {other}): wait for "
            f"it to finish (or stop it: kill -TERM {other} checkpoints it), then continue it with "
            f"resume={folder}; or choose another folder with {key}=..."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = fd


def release(folder: Path | str) -> None:
    """Let go of `folder`'s lock (closing the descriptor drops the flock)."""
    fd = _held.pop(Path(folder).absolute(), None)
    if fd is not None:
        os.close(fd)
