"""What ran: the code's git commit and the software and hardware under it, for summary.json and
scripts/bench.py.

Both functions are cheap, never raise, and import nothing beyond the standard library and torch
(bench.py runs without hydra). A value that cannot be found is None, never a guess.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from runner.engine import allocator

GIT_TIMEOUT_S = 5.0  # a hung network file system or a huge work tree must not hold up a run


def _git(where: Path, *args: str) -> str | None:
    """git's stdout, or None when git is missing, fails or is slow."""
    try:
        # status must not take index.lock
        r = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def code_version(path: str | Path | None = None) -> dict:
    """{"commit": full hash of HEAD, "dirty": whether tracked files differ from it (staged or not;
    untracked files do not count)} of the git checkout holding `path` (default: this package's
    source). Both None when `path` is not tracked by a git checkout (an installed wheel, a venv
    inside someone's repository), git is missing or takes longer than GIT_TIMEOUT_S."""
    unknown = {"commit": None, "dirty": None}
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if not where.is_dir():
        where = where.parent
    # an enclosing repo that does not track us
    if not where.is_dir() or not _git(where, "ls-files", "--", "."):
        return unknown
    status = _git(where, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return unknown
    lines = status.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":  # a repository without commits
        return unknown
    return {"commit": commit, "dirty": any(not ln.startswith("#") for ln in lines)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    # macOS and Windows: the architecture at least
    return platform.processor() or platform.machine()


def _torchvision_version() -> str | None:
    try:  # the import, not the package metadata: only __version__ carries the build's "+cu130"
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def environment(device: torch.device | str | None = None) -> dict:
    """The software and hardware a number was measured on. device_name is the GPU's name on a CUDA
    device, the CPU's on a CPU device, None without a device; the CUDA driver is touched only for a
    CUDA device."""
    device = torch.device(device) if device is not None else None
    cpu_name = _cpu_name()
    if device is None:
        device_name = None
    elif device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        device_name = cpu_name
    else:
        device_name = device.type  # mps and others: torch gives no model name
    return {
        "device": device.type if device is not None else None,
        "device_name": device_name,
        "cpu_name": cpu_name,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "malloc": allocator.described(),  # set for CPU training (engine.allocator)
    }
