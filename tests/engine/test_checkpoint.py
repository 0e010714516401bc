"""Checkpoints: plain torch files, atomic, self-verifying by name, the last two kept, damage
reported and survived, nothing in them executed."""

import dataclasses
import errno
import hashlib
import io
import os
import pathlib
import random

import numpy as np
import pytest
import torch
from conftest import Creates

from runner.config import RunConfig
from runner.core.models import build_resnet
from runner.core.update_rule import Optimizer
from runner.engine import checkpoint
from runner.engine.checkpoint import CheckpointError, load_latest, save, save_best
from runner.engine.state import RunState


def step_files(folder):
    return sorted(p.name for p in folder.glob("step-*.pt"))


def draws():
    return random.random(), np.random.rand(), np.random.randn(), torch.rand(1).item()


def real_state(step=1):
    """What the loop saves (engine.loop.save_checkpoint): a ResNet-20 and its Adam state after one
    step, the loop's state, every RNG, the config and a probe's state."""
    torch.manual_seed(0)
    model = build_resnet(20, 1)
    opt = Optimizer(model, algorithm="adam")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.apply(1e-3, None)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": dataclasses.asdict(RunState(step=step, best_acc_running=0.5, initial_loss=2.3)),
        "rng": checkpoint.rng_state(),
        "config": dataclasses.asdict(RunConfig()),
        "probes": {
            "equilibrium": {
                "prev": [p.detach().clone() for p in opt.regularized],
                "prev_step": step,
            }
        },
    }


# ---------------------------------------------------------------- the files


def test_save_then_load_round_trips_and_keeps_the_last_two(tmp_path):
    for step in (1, 2, 3):
        path = save({"step": step, "w": torch.full((3,), float(step))}, tmp_path)
    assert path.name.startswith("step-00000003-") and path.name == f"step-00000003-{sha16(path)}.pt"
    assert step_files(tmp_path) == sorted(
        [path.name, next(tmp_path.glob("step-00000002-*.pt")).name]
    )
    assert (tmp_path / "last.pt").is_symlink() and (
        tmp_path / "last.pt"
    ).readlink() == pathlib.Path(path.name)
    state, notes = load_latest(tmp_path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((3,), 3.0)) and notes == []


def sha16(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_a_real_checkpoint_opens_with_a_plain_weights_only_torch_load(tmp_path):
    state = real_state(step=390)
    expected = draws()  # the draws right after the state was taken
    save(state, tmp_path)
    plain = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (
        plain["format"] == checkpoint.FORMAT
        and plain["step"] == 390
        and plain["config"]["lr"] == 1e-3
    )
    checkpoint.set_rng_state(plain["rng"])
    assert draws() == expected
    model = build_resnet(20, 1)
    model.load_state_dict(plain["model"])
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), state["model"].values())
    )


def test_rng_state_round_trips_through_a_weights_only_load():
    np.random.randn()  # an odd number of gaussians: numpy caches the second one in its state
    buf = io.BytesIO()
    torch.save(checkpoint.rng_state(), buf)
    expected = draws()
    checkpoint.set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert draws() == expected


def test_cuda_rng_states_are_restored_for_the_gpus_present_and_the_rest_named(monkeypatch, caplog):
    """A checkpoint of a 4-GPU machine continued on a 2-GPU one: torch.cuda.set_rng_state_all
    would index GPU 2 and fail; the states of GPUs 0 and 1 are restored, 2 and 3 named as not."""
    cuda = [torch.full((16,), k, dtype=torch.uint8) for k in range(4)]
    saved = {**checkpoint.rng_state(), "cuda": cuda}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.update({device: s}))
    refuse = lambda states: pytest.fail("indexes every saved GPU")  # noqa: E731
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    with caplog.at_level("WARNING"):
        missed = checkpoint.set_rng_state(saved)
    assert sorted(restored) == [0, 1] and all(int(restored[k][0]) == k for k in (0, 1))
    assert missed == [2, 3]
    assert "GPUs 2, 3" in caplog.text and "2 GPUs" in caplog.text
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    restored.clear()
    assert checkpoint.set_rng_state(saved) == [] and sorted(restored) == [0, 1, 2, 3]


def test_a_value_a_weights_only_load_refuses_is_a_bug_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError, match="weights_only"):
        save({"step": 1, "numpy": np.zeros(3)}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert load_latest(tmp_path / "checkpoints") == (None, [])


def test_without_symlinks_there_is_no_last_pt_and_loading_still_works(tmp_path, monkeypatch):
    save({"step": 1}, tmp_path)

    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "symlink", refuse)
    save({"step": 2}, tmp_path)
    # no link to a stale file
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "last.pt").is_symlink()
    assert load_latest(tmp_path) == ({"format": checkpoint.FORMAT, "step": 2}, [])


# ---------------------------------------------------------------- damage and crashes


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, damage):
    save({"step": 1}, tmp_path)
    newest = save({"step": 2}, tmp_path)
    raw = newest.read_bytes()
    newest.write_bytes(
        {
            "truncate": raw[: len(raw) // 2],
            "flip_byte": raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:],
            "empty": b"",
        }[damage]
    )
    state, notes = load_latest(tmp_path)
    assert state["step"] == 1
    assert len(notes) == 1 and newest.name in notes[0] and "checksum" in notes[0]


def test_when_every_checkpoint_is_damaged_there_is_none_and_a_note_for_each(tmp_path):
    for path in [save({"step": 1}, tmp_path), save({"step": 2}, tmp_path)]:
        path.write_bytes(b"")
    state, notes = load_latest(tmp_path)
    assert state is None and len(notes) == 2


def test_continuing_from_the_previous_checkpoint_leaves_the_damaged_newer_one_behind(tmp_path):
    save({"step": 10}, tmp_path)
    save({"step": 20}, tmp_path).write_bytes(b"garbage")
    assert load_latest(tmp_path)[0]["step"] == 10
    save({"step": 11}, tmp_path)  # the run continued from step 10
    assert [n[:13] for n in step_files(tmp_path)] == ["step-00000010", "step-00000011"]
    assert load_latest(tmp_path) == ({"format": checkpoint.FORMAT, "step": 11}, [])


def test_saving_the_same_step_twice_keeps_the_second_and_the_previous_step(tmp_path):
    save({"step": 1}, tmp_path)
    save({"step": 2, "val": "first"}, tmp_path)
    # identical bytes: the same name, replaced by itself
    save({"step": 2, "val": "first"}, tmp_path)
    assert len(step_files(tmp_path)) == 2
    save({"step": 2, "val": "second"}, tmp_path)
    assert [n[:13] for n in step_files(tmp_path)] == ["step-00000001", "step-00000002"]
    assert load_latest(tmp_path)[0]["val"] == "second"


class Crash(BaseException):
    """The process dies here (BaseException: no `except OSError` in the code under test sees it)."""


@pytest.mark.parametrize(
    "second", [{"step": 3}, {"step": 2, "val": "again"}], ids=["next step", "same step"]
)
def test_a_crash_at_any_point_of_a_save_leaves_the_old_or_the_new_checkpoint(
    tmp_path, monkeypatch, second
):
    """Every file-system call of save() in turn is where the process dies; each time a valid
    checkpoint remains and the next save tidies up."""
    real = {
        "replace": checkpoint.os.replace,
        "symlink": checkpoint.os.symlink,
        "fsync": checkpoint.os.fsync,
        "unlink": pathlib.Path.unlink,
    }
    for crash_at in range(100):
        folder = tmp_path / str(crash_at)
        save({"step": 1}, folder)
        save({"step": 2}, folder)
        calls = iter(range(10**6))

        def dying(name):
            def call(*args, **kwargs):
                if next(calls) == crash_at:
                    raise Crash
                return real[name](*args, **kwargs)

            return call

        for name in ("replace", "symlink", "fsync"):
            monkeypatch.setattr(checkpoint.os, name, dying(name))
        monkeypatch.setattr(pathlib.Path, "unlink", dying("unlink"))
        try:
            save(second, folder)
            finished = True
        except Crash:
            finished = False
        finally:
            monkeypatch.undo()
        state, notes = load_latest(folder)
        assert notes == [] and state["step"] in (2, second["step"]), (crash_at, state, notes)
        assert state == {"format": checkpoint.FORMAT, **second} or not finished
        save({"step": 4}, folder)
        assert len(step_files(folder)) == 2 and not list(folder.glob("*.tmp")), crash_at
        if finished:
            break
    assert finished and crash_at > 3  # the loop reached past every call of a complete save


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save({"step": 1}, tmp_path)
    before = (tmp_path / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        save({"step": 2}, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
    assert load_latest(tmp_path)[0]["step"] == 1


# ---------------------------------------------------------------- formats


def test_a_checkpoint_of_a_newer_format_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", 99)
    save({"step": 1}, tmp_path)
    monkeypatch.undo()
    with pytest.raises(
        CheckpointError, match="format 99, newer than this runner reads.*runner version that wrote"
    ):
        load_latest(tmp_path)


def test_a_checkpoint_of_an_unknown_older_format_is_refused_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT", 0)
    save({"step": 1}, tmp_path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format 0.*start a new run"):
        load_latest(tmp_path)


def test_an_intact_file_this_runner_cannot_read_is_an_error_not_a_fallback(tmp_path):
    save({"step": 1}, tmp_path)
    buf = io.BytesIO()
    torch.save({"format": 2, "step": 2, "numpy": np.zeros(3)}, buf)  # a type weights_only refuses
    raw = buf.getvalue()
    (tmp_path / f"step-00000002-{hashlib.sha256(raw).hexdigest()[:16]}.pt").write_bytes(raw)
    with pytest.raises(CheckpointError, match="is intact.*cannot read it"):
        load_latest(tmp_path)


# ---------------------------------------------------------------- best.pt


def test_best_pt_is_a_plain_weights_only_file_replaced_atomically(tmp_path):
    state = real_state()
    for step, acc in ((390, 0.61), (780, 0.72)):
        save_best(
            tmp_path,
            {
                "model": state["model"],
                "step": step,
                "val_acc": acc,
                "val_metric": "recalibrated",
                "config": state["config"],
            },
        )
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert (best["step"], best["val_acc"], best["val_metric"]) == (780, 0.72, "recalibrated")
    build_resnet(20, 1).load_state_dict(best["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    assert load_latest(tmp_path) == (None, [])  # best.pt is not a checkpoint to continue from


def test_disk_full_while_saving_best_keeps_the_previous_best(tmp_path, monkeypatch):
    save_best(tmp_path, {"step": 1, "val_acc": 0.5})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointError, match="best.pt.*disk is full"):
        save_best(tmp_path, {"step": 2, "val_acc": 0.6})
    monkeypatch.undo()
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_crafted_step_file_whose_name_matches_its_bytes_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": 2, "step": 5, "x": Creates(marker)}, buf)
    raw = buf.getvalue()
    (tmp_path / f"step-00000005-{hashlib.sha256(raw).hexdigest()[:16]}.pt").write_bytes(raw)
    with pytest.raises(CheckpointError):
        load_latest(tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- not what they seem


@pytest.mark.parametrize("kind", ["dangling link", "file", "link to a file"])
def test_a_checkpoints_that_cannot_be_listed_is_an_error_never_a_fresh_start(tmp_path, kind):
    """Scratch space not mounted on a requeue node leaves `checkpoints` a dangling link: "no
    checkpoint" would start the run over from step 0 and replace its records."""
    ckpt = tmp_path / "checkpoints"
    if kind == "dangling link":
        ckpt.symlink_to(tmp_path / "scratch" / "run")
    elif kind == "file":
        ckpt.write_bytes(b"")
    else:
        (tmp_path / "f").write_bytes(b"")
        ckpt.symlink_to(tmp_path / "f")
    with pytest.raises(CheckpointError, match="cannot be read as the run's checkpoints"):
        load_latest(ckpt)
    assert load_latest(tmp_path / "absent") == (None, [])  # no checkpoint yet


def test_a_fifo_named_as_a_step_file_is_skipped_without_blocking(tmp_path):
    save({"step": 1}, tmp_path)
    fifo = tmp_path / f"step-00000002-{'0' * checkpoint.HASH_CHARS}.pt"
    os.mkfifo(fifo)
    state, notes = load_latest(tmp_path)
    assert state["step"] == 1 and "not a regular file" in notes[0]


def test_links_planted_at_the_checkpoint_names_are_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "best.pt.tmp").symlink_to(victim)
    (folder / "best.pt").symlink_to(victim)
    save_best(folder, {"model": {}, "step": 1, "val_acc": 0.5})
    assert victim.read_text() == "the user's own file\n"
    assert not (folder / "best.pt").is_symlink() and torch.load(folder / "best.pt")["step"] == 1
