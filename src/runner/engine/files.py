"""The files of a run folder, written and read as what they claim to be.

A run folder may come from elsewhere (copied, received, on a shared disk, restored from a backup),
so any name in it may be a symbolic link planted to redirect a write, a folder where a file should
be, a FIFO that blocks whoever opens it, or far larger than the file it stands for. Hence:

- `write_atomic` writes a new file exclusively beside the target (a link or a leftover at the
  temporary name is removed first, never followed: O_CREAT | O_EXCL does not follow links) and
  renames it over the target, which replaces a link there instead of writing through it;
- `check_run_folder` refuses a folder in which a name the run writes is a link or of the wrong type,
  before the run writes anything;
- `read_regular` reads a regular file only (never a FIFO or a device), up to a size, and `nofollow`
  does not read through a link;
- `resolved` names a folder by the one path every part of the runner uses for it.

Nothing here imports torch.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from runner.config import UserError

# the names a run writes itself (Hydra's job log included), each a plain file when it exists
RUN_FILES = ("metrics.jsonl", "summary.json", "run.log")
SAVED = (".hydra", ("config.yaml", "hydra.yaml", "overrides.yaml"))  # .hydra/: the saved config
CHECKPOINTS = "checkpoints"  # a folder, or a link to one (scratch space)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class FolderError(UserError):
    """A run folder (or a name in it) is not what the runner writes there."""


class NotRegular(OSError):
    """A file that is not a regular file, or larger than its reader allows."""


def reason(e: BaseException) -> str:
    """An OS error in words, without the file name the message around it already gives."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def resolved(path: Path | str) -> Path:
    """`path` as one folder's identity: absolute as Hydra makes it (os.path.abspath, which folds
    `..` by the text), then with every link resolved, so outputs/latest, a path through a link and
    the folder itself are one folder for the lock, the `latest` links and the clean-up. FolderError
    for a link loop."""
    try:
        return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: Python < 3.13's "Symlink loop"
        raise FolderError(f"{path} cannot be resolved ({reason(e)}): give a folder") from None


def kind(path: Path) -> str | None:
    """What is at `path` without following a link there: None (nothing), "link", "folder", "file"
    or "special file"."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:  # a name too long, a file or a loop on the way: nothing can be there
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return None
        raise
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "special file"


def check_run_folder(run_dir: Path) -> None:
    """FolderError unless every name the run writes in `run_dir` is absent or of its own type: its
    files plain files, `.hydra` a folder of plain files, none of them a link (a link there would
    send the run's writes to wherever it points). `checkpoints` is checked where it is read."""
    run_dir = Path(run_dir)
    names = [run_dir / n for n in RUN_FILES] + [run_dir / SAVED[0] / n for n in SAVED[1]]
    wrong = [(p, k) for p in names if (k := kind(p)) not in (None, "file")]
    if (k := kind(run_dir / SAVED[0])) not in (None, "folder"):
        wrong.insert(0, (run_dir / SAVED[0], k))
    if wrong:
        path, what = wrong[0]
        expected = "folder" if path.name == SAVED[0] else "file"
        where = f" (to {os.readlink(path)})" if what == "link" else ""
        raise FolderError(
            f"{path} is a {what}{where} where the runner writes its own {expected}: a run folder "
            "received from elsewhere may hold links that redirect writes. Remove it (the run "
            "writes it anew), or start the run in a new folder"
        )


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """`path` holds its old bytes or all of `data`, never part of them, and never a write through
    a link: `data` goes into PATH.tmp created exclusively (whatever was at that name is removed
    first), which is renamed over `path`. `durable`: fsync the file before the rename and the
    folder after it. An OSError leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)  # a crash's leftover, or a planted link: gone, never followed
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path (a folder: the renames in it are on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int, nofollow: bool = False) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; NotRegular (an
    OSError) for a FIFO, a device, a folder or a larger file, without blocking on any of them;
    `nofollow`: a link is not read either. Other OSErrors as they come."""
    flags = os.O_RDONLY | _NONBLOCK | (_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and nofollow:
            raise NotRegular(errno.ELOOP, "a symbolic link, not read", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise NotRegular(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # it grew while being read
            raise NotRegular(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        return data
    finally:
        os.close(fd)


def is_regular(path: Path) -> bool:
    """Whether `path` (a link followed) is a regular file: never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
