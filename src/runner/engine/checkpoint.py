"""Checkpoints that survive preemption, full disks and half-written files, and open with a plain
torch.load.

A run's `checkpoints/` folder:

    step-00000390-3f1c9a0b2d4e5f67.pt   one checkpoint per file, named by its step and the first 16
                                        hex digits
    step-00000780-9e8d7c6b5a493827.pt   of the SHA-256 of its bytes; the bytes are torch.save's and
                                        nothing else
    last.pt -> step-00000780-….pt       relative symlink to the newest (left out where symlinks
                                        fail)
    best.pt                             the weights of the best validation so far (save_best)

Every file opens with `torch.load(path, weights_only=True)`: the payload holds only tensors,
numbers, strings, lists, tuples and dicts (numpy's RNG state is stored as a tensor and ints), and
save() checks so.

Writing: bytes to `<name>.tmp`, fsync, rename, fsync the folder. The name verifies the bytes, so one
atomic rename publishes a checkpoint and there is no sidecar to keep in step. Then last.pt is
pointed at it (a new symlink renamed over the old one), and only then are older files deleted: the
new one and the newest older one whose bytes match its name are kept. Files of the same or a later
step go too, because the run that saves is the one that continues: a second save of a step replaces
the first, and steps past a damaged newest one belong to a timeline the run has left. At every
instant a complete, verified checkpoint exists.

Loading (load_latest) tries the step files newest first (by step), checks each against the hash in
its name and falls back to the previous one with a note when the newest is truncated or corrupt. A
file whose hash matches but which this runner cannot read is a CheckpointError, not a fallback: it
is intact, only newer.

best.pt (save_best): {"format", "model": state_dict, "step": int, "val_acc": float, "val_metric":
"recalibrated" | "running", "config": dict}, replaced atomically whenever the headline validation
accuracy improves. It has no hash in its name (it is the one file a user opens by hand): torch.load
notices a truncated best.pt, not a flipped bit in it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from runner.config import UserError
from runner.engine import files

log = logging.getLogger(__name__)

FORMAT = 2  # step files with a weights_only payload (the only format this runner has released)
HASH_CHARS = 16  # 64 bits of SHA-256: damage detection, not security
STEP_FILE = re.compile(r"step-(\d+)-([0-9a-f]{%d})\.pt" % HASH_CHARS)
LAST, BEST = "last.pt", "best.pt"
MAX_BYTES = 16 << 30  # past this a file named like a step file is not one of ours: damaged


class CheckpointError(UserError):
    """A checkpoint cannot be written or used; the message says why and what to do."""


class _Damaged(ValueError):
    """The file's bytes are not the ones that were written: skip it and try the previous one."""


# ---------------------------------------------------------------- random number generators


def rng_state() -> dict:
    """Every random number generator the next step could read (the data order is a function of seed
    and epoch), as values torch.load(weights_only=True) accepts: numpy's MT19937 keys become an
    int64 tensor."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    numpy = {
        "bit_generator": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(gauss),
    }
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> list[int]:
    """Restore what rng_state() returned; returns the GPUs whose saved CUDA state was left out
    (cuda_rng_states)."""
    version, internal, gauss_next = state["python"]
    # a list after some loaders: setstate wants a tuple
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.int64).astype(np.uint32)
    np.random.set_state((n["bit_generator"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    return cuda_rng_states(state.get("cuda", []))


def cuda_rng_states(saved: list) -> list[int]:
    """Restore the saved CUDA RNG state of each GPU this machine has (torch.cuda.set_rng_state_all
    would index every saved one, and fail on a machine with fewer GPUs); returns the indices of the
    saved states left out, which the log names. Training draws nothing from these generators (the
    data order and augmentation come from their own (seed, epoch) generators), so the run goes on
    the same; a later draw from them would not."""
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i, s in enumerate(saved[:present]):
        torch.cuda.set_rng_state(s, i)
    missed = list(range(present, len(saved)))
    if missed:
        gpus = ", ".join(map(str, missed))
        log.warning(
            "the checkpoint holds the CUDA random number generator states of %d GPUs and this "
            "machine has %d GPUs: those of GPUs %s are not restored",
            len(saved),
            present,
            gpus,
        )
    return missed


# ---------------------------------------------------------------- writing


def _serialize(state: dict) -> bytes:
    """torch.save bytes, checked to open with weights_only=True (a value that does not is a bug in
    the caller)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise TypeError(
            "a checkpoint may hold only tensors, numbers, strings, lists, tuples and dicts "
            f"(torch.load(weights_only=True) refuses the rest): {e}"
        ) from None
    return payload


def _write_atomic(path: Path, payload: bytes, what: str) -> None:
    """path holds either its old bytes or all of `payload`, never part of it, also after a crash;
    a link planted at its name or at its temporary name is replaced, never written through."""
    try:
        files.write_atomic(path, payload, durable=True)  # on disk before anything older goes
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else files.reason(e)
        raise CheckpointError(
            f"could not write {what} in {path.parent}: {why}. The previous {what} is intact; free "
            "space (or fix the folder's permissions) and start the run again in the same folder "
            "to continue."
        ) from None


def save(state: dict, folder: Path) -> Path:
    """Write `state` (a dict with an int "step") as folder/step-<step>-<sha256[:16]>.pt, point
    last.pt at it, keep the newest older verified one and delete the rest; return the new file's
    path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = _serialize({"format": FORMAT, **state})
    digest = hashlib.sha256(payload).hexdigest()[:HASH_CHARS]
    path = folder / f"step-{int(state['step']):08d}-{digest}.pt"
    _write_atomic(path, payload, "checkpoint")
    _point_last(folder, path)
    _prune(folder, path)
    return path


def save_best(folder: Path, state: dict) -> Path:
    """Replace folder/best.pt atomically with `state` ({"model", "step", "val_acc", "val_metric",
    "config"}: see the module docstring); return its path. Plain torch.save bytes, opened with
    torch.load(weights_only=True)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BEST
    _write_atomic(path, _serialize({"format": FORMAT, **state}), BEST)
    return path


def _point_last(folder: Path, target: Path) -> None:
    """last.pt → target, swapped in by one rename; silently left out where the file system has no
    symlinks."""
    link, tmp = folder / LAST, folder / (LAST + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target.name, tmp)
        os.replace(tmp, link)
    except (OSError, NotImplementedError):
        try:  # what is left at last.pt (an old link, a damaged file) would mislead: better nothing
            tmp.unlink(missing_ok=True)
            link.unlink(missing_ok=True)
        except OSError:
            pass


def _prune(folder: Path, new: Path) -> None:
    """Delete every checkpoint but `new` and the newest older one whose bytes match its name."""
    step = _step(new)
    others = [p for p in _step_files(folder) if p != new]
    previous = next((p for p in others if _step(p) < step and _verified(p)), None)
    doomed = [p for p in others if p != previous] + list(folder.glob("step-*.pt.tmp"))  # a crash's
    for p in doomed:
        try:
            p.unlink(missing_ok=True)
        except OSError as e:  # a leftover file costs disk space, not the run
            log.warning("could not delete the old checkpoint %s: %s", p, e.strerror or e)


# ---------------------------------------------------------------- reading


def _step(path: Path) -> int:
    return int(STEP_FILE.fullmatch(path.name)[1])


def _verified(path: Path) -> bytes | None:
    """The file's bytes if their SHA-256 starts with the hash in its name, else None."""
    try:
        raw = files.read_regular(path, MAX_BYTES)
    except OSError:
        return None
    return (
        raw
        if hashlib.sha256(raw).hexdigest()[:HASH_CHARS] == STEP_FILE.fullmatch(path.name)[2]
        else None
    )


def _step_files(folder: Path) -> list[Path]:
    """Step files, newest first: by step, then (two of one step only after a crash mid-save)
    last.pt's target."""
    try:
        current = os.readlink(folder / LAST)
    except OSError:
        current = None
    found = [p for p in folder.glob("step-*.pt") if STEP_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: (_step(p), p.name == current, _mtime(p)), reverse=True)


def _mtime(path: Path) -> int:
    try:
        return path.lstat().st_mtime_ns
    except OSError:  # gone meanwhile: _read says so
        return 0


def _read(path: Path) -> dict:
    """The checkpoint in step file `path`; _Damaged when its bytes are not the ones written."""
    try:  # a FIFO or a device named like a step file is not read (it would block)
        raw = files.read_regular(path, MAX_BYTES)
    except OSError as e:
        raise _Damaged(files.reason(e)) from None
    if hashlib.sha256(raw).hexdigest()[:HASH_CHARS] != STEP_FILE.fullmatch(path.name)[2]:
        raise _Damaged("checksum mismatch: truncated or corrupted")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # intact bytes this torch cannot read: a fallback would lose newer work
        raise CheckpointError(
            f"{path} is intact (its SHA-256 matches its name) but this runner cannot read it "
            f"({type(e).__name__}: {str(e)[:200]}): continue the run with the runner and torch "
            "versions that wrote it"
        ) from None


def _check_format(state, path: Path) -> None:
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt == FORMAT:
        return
    if isinstance(fmt, int) and fmt > FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {fmt}, newer than this runner reads (up to {FORMAT}): "
            "continue the run with the newer runner version that wrote it"
        )
    raise CheckpointError(
        f"{path} has checkpoint format {fmt!r}, this runner reads format {FORMAT}: start a new "
        "run (or resume with the runner version that wrote it)"
    )


def load_latest(folder: Path) -> tuple[dict | None, list[str]]:
    """(newest valid checkpoint or None, notes on the ones that were skipped and why). None with no
    notes only when `folder` does not exist (no checkpoint yet); a `folder` that cannot be listed
    (a dangling link: scratch space not mounted; a file; no permission) is a CheckpointError, never
    "no checkpoint", which would start the run again from step 0 over its records."""
    folder = Path(folder)
    notes = []
    for path in _step_files(folder) if _listable(folder) else []:
        try:
            state = _read(path)
        except _Damaged as e:  # report it and try the older one
            notes.append(f"{path} is unusable ({e}); trying the previous checkpoint")
            continue
        _check_format(state, path)
        return state, notes
    return None, notes


def _listable(folder: Path) -> bool:
    """False when there is nothing at `folder` (not even a link); True for a folder that lists;
    CheckpointError for anything else."""
    what = files.kind(folder)
    if what is None:
        return False
    try:
        os.listdir(folder)
        return True
    except OSError as e:
        target = f" to {os.readlink(folder)}" if what == "link" else ""
        why = "it points nowhere" if what == "link" and not folder.exists() else files.reason(e)
        raise CheckpointError(
            f"{folder} (a {what}{target}) cannot be read as the run's checkpoints: {why}. Mount or "
            "restore it and start again; to start this run over from step 0 instead, move the run "
            "folder away (its records would be replaced)"
        ) from None
