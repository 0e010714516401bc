"""Checkpoints that survive preemption, full disks and half-written files.

A checkpoint file is one line with the SHA-256 of the payload, then the payload (torch.save bytes).
It is written to a temporary file, fsynced and renamed over `last.pt`, after the previous `last.pt`
has been renamed to `prev.pt`: at every instant one complete, verified checkpoint exists. Loading
verifies the checksum and falls back to `prev.pt` when `last.pt` is missing, truncated or corrupt.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from runner.config import UserError

FORMAT = 1
NAMES = ("last.pt", "prev.pt")


class CheckpointError(UserError):
    """A checkpoint cannot be written or used; the message says why and what to do."""


def rng_state() -> dict:
    """Every random number generator the next step could read (the data order is a function of seed and epoch)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(state: dict, folder: Path) -> Path:
    """Write `state` atomically as folder/last.pt, keeping the previous one as prev.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    payload = buf.getvalue()
    tmp, last, prev = folder / "last.pt.tmp", folder / "last.pt", folder / "prev.pt"
    try:
        with open(tmp, "wb") as f:
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise CheckpointError(f"could not write a checkpoint in {folder}: {why}. The previous checkpoint is "
                              "intact; free space (or fix the folder's permissions) and start the run again in "
                              "the same folder to continue.") from None
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def _read(path: Path) -> dict:
    raw = path.read_bytes()
    head, _, payload = raw.partition(b"\n")
    if len(head) != 64 or hashlib.sha256(payload).hexdigest().encode() != head:
        raise ValueError("checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def load_latest(folder: Path) -> tuple[dict | None, list[str]]:
    """(newest valid checkpoint or None, notes on the ones that were skipped and why)."""
    notes = []
    for name in NAMES:
        path = folder / name
        if not path.exists():
            continue
        try:
            state = _read(path)
        except Exception as e:  # any unreadable file: report it and try the older one
            notes.append(f"{path} is unusable ({e}); trying the previous checkpoint")
            continue
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r}, this runner reads format "
                                  f"{FORMAT}: start a new run (or resume with the runner version that wrote it)")
        return state, notes
    return None, notes
