"""Checkpoints: atomic, checksummed, the last two kept, damage reported and survived."""
import errno

import pytest
import torch

from runner import checkpoint
from runner.checkpoint import CheckpointError, load_latest, save


def test_save_then_load_round_trips_and_keeps_the_last_two(tmp_path):
    for step in (1, 2, 3):
        save({"step": step, "w": torch.full((3,), float(step))}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]
    state, notes = load_latest(tmp_path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((3,), 3.0)) and notes == []


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, damage):
    save({"step": 1}, tmp_path)
    save({"step": 2}, tmp_path)
    last = tmp_path / "last.pt"
    raw = last.read_bytes()
    last.write_bytes({"truncate": raw[: len(raw) // 2], "flip_byte": raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:],
                      "empty": b""}[damage])
    state, notes = load_latest(tmp_path)
    assert state["step"] == 1
    assert len(notes) == 1 and "last.pt" in notes[0] and "checksum" in notes[0]


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert load_latest(tmp_path / "checkpoints") == (None, [])


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save({"step": 1}, tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    real_fsync = checkpoint.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        save({"step": 2}, tmp_path)
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not (tmp_path / "last.pt.tmp").exists()
    assert load_latest(tmp_path)[0]["step"] == 1


def test_a_checkpoint_of_another_format_is_refused_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", 0)
    save({"step": 1}, tmp_path)
    monkeypatch.setattr(checkpoint, "FORMAT", 1)
    with pytest.raises(CheckpointError, match="format 0.*start a new run"):
        load_latest(tmp_path)


def test_rng_state_round_trips():
    import random

    import numpy as np
    state = checkpoint.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == a
