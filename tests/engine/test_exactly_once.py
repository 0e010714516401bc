"""Exactly-once records: after any kill, fallback or restart, metrics.jsonl and TensorBoard hold
each step once, the run ends bit for bit as an uninterrupted one, and summary.json agrees with
metrics.jsonl."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, cli_env, compose_cfg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.engine.records import Recorder, read_metrics

# 2 epochs of 4 steps, a validation every 3 steps and at each epoch end, every step flushed so kills
# land anywhere
RUN = [
    *TINY,
    "epochs=2",
    "batch_size=32",
    "data.n_train=128",
    "data.n_val=32",
    "trainer.log_every=1",
]
RUN += ["trainer.val_every=3", "trainer.bn_recalibrate=32", "model.bn_momentum=0.1"]
TOTAL = 8


def start(run_dir):
    env = {**cli_env(), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "runner", *RUN, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        cmd, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )


def train_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path) if "train_loss" in r] if path.exists() else []


def tb_steps(run_dir, tag="loss/train"):
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return [e.step for e in ea.Scalars(tag)]


def untimed(records):
    return [
        {k: v for k, v in r.items() if k != "epoch_train_s" and k != "epoch_images"}
        for r in records
    ]


@pytest.mark.slow
def test_random_sigkills_then_resume_leave_each_step_once_and_end_bit_exact(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    p = start(ref)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    seed = random.randrange(10**6)
    rng = random.Random(seed)  # the seed is in the assertion messages: a failure can be replayed
    run = tmp_path / "run"
    run.mkdir()
    for kill in range(4):
        have = len(train_steps(run))
        target = min(TOTAL - 1, have + rng.randint(1, 4))
        p = start(run)
        deadline = time.time() + 120
        while len(train_steps(run)) < target and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # anywhere: mid-step, mid-write, right after a checkpoint
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        steps = train_steps(run)
        assert steps == sorted(set(steps)), (
            f"seed {seed}, kill {kill}: a step twice after a kill: {steps}"
        )
    p = start(run)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    ours, theirs = read_metrics(run / "metrics.jsonl"), read_metrics(ref / "metrics.jsonl")
    # each record once, with the same values
    assert untimed(ours) == untimed(theirs), f"seed {seed}"
    assert tb_steps(run) == list(range(1, TOTAL + 1)), f"seed {seed}"
    assert tb_steps(run, "acc/val") == tb_steps(ref, "acc/val"), f"seed {seed}"
    from runner.engine.checkpoint import load_latest

    a, b = (
        load_latest(ref / "checkpoints")[0]["model"],
        load_latest(run / "checkpoints")[0]["model"],
    )
    assert all(torch.equal(a[k], b[k]) for k in a), f"seed {seed}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == max(r["step"] for r in ours) == TOTAL


def test_a_checkpoint_is_published_only_once_the_records_up_to_its_step_are_on_disk(
    tmp_path, monkeypatch
):
    from runner.config import validate
    from runner.engine import checkpoint
    from runner.engine.train import train

    seen = []
    real = checkpoint.save

    # what a reader (or a resumed run) finds the moment the checkpoint exists
    def save(state, folder):
        seen.append((state["step"], train_steps(tmp_path)))
        return real(state, folder)

    monkeypatch.setattr(checkpoint, "save", save)
    train(validate(compose_cfg(*RUN, "trainer.log_every=3")), tmp_path)
    assert seen == [(4, [1, 2, 3, 4]), (8, list(range(1, 9)))]


@pytest.fixture
def event_files_in_order(monkeypatch):
    """TensorBoard reads a folder's event files in name order; two writers of one process in one
    second differ only by a counter, compared as text (…9 after …10): give both two digits."""
    from tensorboard.summary.writer import event_file_writer as files

    monkeypatch.setattr(files, "_global_uid", files.AtomicCounter(10))


@pytest.mark.usefixtures("event_files_in_order")
def test_a_continued_run_drops_the_records_past_its_checkpoint_and_writes_them_once(tmp_path):
    rec = Recorder(tmp_path)
    for r in (
        {"step": 1, "epoch": 0.5, "train_loss": 2.0},
        {"step": 2, "epoch": 1.0, "train_loss": 1.9},
        {"step": 2, "epoch": 1.0, "val_loss": 2.1, "val_acc": 0.2},
        {"step": 3, "epoch": 1.5, "train_loss": 1.8},
    ):
        rec.write(r)
    rec.close()
    rec.tb.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 2.0, "train_lo')  # a line cut by a kill
    # continued from a checkpoint at step 2 (a fallback, say)
    again = Recorder(tmp_path, resume_step=2)
    again.write({"step": 3, "epoch": 1.5, "train_loss": 1.7})
    again.write({"step": 4, "epoch": 2.0, "train_loss": 1.6})
    again.close()
    again.tb.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("train_loss")) for r in records] == [
        (1, 2.0),
        (2, 1.9),
        (2, None),
        (3, 1.7),
        (4, 1.6),
    ]
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    losses = [(e.step, round(e.value, 3)) for e in ea.Scalars("loss/train")]
    assert losses == [(1, 2.0), (2, 1.9), (3, 1.7), (4, 1.6)]


def test_a_restart_from_step_0_shows_no_step_twice_in_tensorboard(tmp_path):
    for loss in (2.0, 1.0):  # killed before its first checkpoint, then started again
        rec = Recorder(tmp_path, resume_step=0)
        rec.write({"step": 1, "epoch": 0.5, "train_loss": loss})
        rec.close()
        rec.tb.close()
    assert [r["train_loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0]
    assert tb_steps(tmp_path) == [1]


def test_a_stop_mid_epoch_records_its_step_as_a_straight_run_does(tmp_path, monkeypatch):
    """With log_every > 1 the step a signal stops at is no logging step: no norms that a straight
    run lacks there."""
    from runner.config import validate
    from runner.engine import loop
    from runner.engine.train import train

    cfg = validate(compose_cfg(*RUN, "trainer.log_every=4", "trainer.val_every=100"))
    real = loop.note_step

    def note_step(run, *a):  # a SIGTERM that arrives during step 2
        if run.state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, *a)

    monkeypatch.setattr(loop, "note_step", note_step)
    s = train(cfg, tmp_path)
    (rec,) = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] == 2]
    assert (
        s["status"] == "interrupted"
        and s["steps"] == 2
        and "weight_norm" not in rec
        and "grad_norm" not in rec
    )
