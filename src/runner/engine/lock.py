"""One writer per run folder: an exclusive lock (flock) on RUN/.lock, held from before anything is
written into the folder until the run's summary is written. The OS drops it when the process ends,
however it ends, so a killed run leaves no stale lock; the file stays behind holding the pid of the
last process that held it (the one a refusal names).

A folder is locked under its resolved path (engine.files.resolved): outputs/latest, a path through a
link or with `..` and the folder itself are one folder, whichever this process is given first.
`.lock` is opened without following a link: a link planted there is refused, not followed. Nothing
here imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from runner.commands import resume_command
from runner.engine.files import FolderError, reason, resolved

NAME = ".lock"
_held: dict[Path, int] = {}  # folder → file descriptor: a process takes each folder's lock once


class FolderBusy(FolderError):
    """Another process is writing the run folder."""


def hold(folder: Path | str, key: str = "hydra.run.dir") -> None:
    """Take `folder`'s lock for this process (again: a no-op); FolderBusy naming the holder's pid if
    it is taken, FolderError if RUN/.lock is not a plain file (a link, a folder)."""
    folder = resolved(folder)
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open(folder / NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusy(
            f"the run folder {folder} is being written by another process (pid {other}): wait for "
            f"it to finish (or stop it: kill -TERM {other} checkpoints it), then continue it with "
            f"{resume_command(folder)}; or choose another folder with {key}=..."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = fd


def _open(path: Path) -> int:
    """RUN/.lock opened for the lock, created if absent, never through a link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        what = "a symbolic link" if e.errno == errno.ELOOP else reason(e)
        raise FolderError(
            f"{path} cannot be this run folder's lock file ({what}): remove it and start again"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FolderError(f"{path} is not a plain file: remove it and start again")
    return fd


def held(folder: Path | str) -> bool:
    """Whether this process holds `folder`'s lock."""
    try:
        return resolved(folder) in _held
    except FolderError:
        return False


def release(folder: Path | str) -> None:
    """Let go of `folder`'s lock (closing the descriptor drops the flock)."""
    try:
        fd = _held.pop(resolved(folder), None)
    except FolderError:
        return
    if fd is not None:
        os.close(fd)
