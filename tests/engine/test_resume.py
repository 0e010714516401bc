"""Reliability end to end: interrupted runs resume bit for bit; divergence ends a run cleanly."""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, cli_env, finished_run, run_cli

from runner.engine.records import read_metrics

# 3 epochs of 8 steps with crops and flips on; flushing every step so the test can pick its moment
RUN = [
    *TINY,
    "epochs=3",
    "batch_size=32",
    "data.n_train=256",
    "data.n_val=64",
    "trainer.log_every=1",
    "trainer.val_every=5",
]


def final_weights(run_dir):
    from runner.engine.checkpoint import load_latest

    return load_latest(run_dir / "checkpoints")[0]["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return finished_run(tmp_path_factory, "straight", RUN)


def interrupt_at(run_dir, n_steps, sig=signal.SIGTERM):
    """Start the run, send `sig` once `n_steps` train records are on disk; return the process
    result."""
    env = cli_env()
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if (
            metrics.exists()
            and sum("train_loss" in line for line in metrics.read_text().splitlines()) >= n_steps
        ):
            break
        time.sleep(0.01)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("sig, at", [(signal.SIGTERM, 11), (signal.SIGUSR1, 3)])
def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path, uninterrupted, sig, at):
    run_dir = tmp_path / "run"
    rc, err = interrupt_at(run_dir, at, sig)
    assert rc == 0, err[-2000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted" and 0 < s["steps"] < 24, s
    # the same job again: how a requeue looks
    r = run_cli([*RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 24 and s["resumed"]["from_step"] > 0
    a, b = final_weights(uninterrupted), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ours, ref = (
        read_metrics(run_dir / "metrics.jsonl"),
        read_metrics(uninterrupted / "metrics.jsonl"),
    )
    timed = lambda records: [r for r in records if "epoch_train_s" in r]  # noqa: E731  (seconds differ, of course)
    assert [r["step"] for r in timed(ours)] == [r["step"] for r in timed(ref)] == [8, 16, 24]
    # same values, once
    assert [r for r in ours if r not in timed(ours)] == [r for r in ref if r not in timed(ref)]


@pytest.mark.slow
def test_resume_refuses_a_training_change_and_allows_more_epochs(tmp_path, uninterrupted):
    r = run_cli([f"resume={uninterrupted}", "lr=0.5"], cwd=tmp_path)
    assert r.returncode == 2 and "lr: 0.001 → 0.5" in r.stderr and "Traceback" not in r.stderr
    before = (uninterrupted / ".hydra" / "config.yaml").read_text()
    r = run_cli(
        [f"resume={uninterrupted}", "epochs=4", "trainer.extend_schedule=hold"], cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((uninterrupted / "summary.json").read_text())
    assert s["steps"] == 32 and s["resumed"]["changed"] == {
        "epochs": [3, 4],
        "trainer.extend_schedule": [None, "hold"],
    }
    assert s["resumed"]["schedule"] == "hold"
    assert (uninterrupted / ".hydra" / "config.yaml").read_text() == before, (
        "the saved config is the record"
    )
    assert not (tmp_path / "outputs").exists()


def test_resume_refuses_epochs_that_end_before_the_steps_already_run(tmp_path, uninterrupted):
    before = (uninterrupted / "metrics.jsonl").read_bytes()
    r = run_cli(
        [f"resume={uninterrupted}", "epochs=2", "trainer.extend_schedule=hold"], cwd=tmp_path
    )
    assert (
        r.returncode == 2
        and "epochs=2 ends at step 16, before step" in r.stderr
        and "Traceback" not in r.stderr
    )
    assert (uninterrupted / "metrics.jsonl").read_bytes() == before  # the refusal changed nothing


@pytest.mark.slow
def test_resume_of_a_folder_with_no_run_says_so(tmp_path):
    r = run_cli(["resume=" + str(tmp_path / "nothing")], cwd=tmp_path)
    assert r.returncode == 2 and "no run there" in r.stderr


@pytest.mark.slow
def test_a_diverging_run_stops_with_status_diverged_and_exit_0(tmp_path):
    r = run_cli(
        [
            *TINY,
            "lr=1e6",
            "optimizer=adam_l2",
            "trainer.log_every=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "diverged" and s["diverged_at_step"] < 16
    assert s["last_finite"]["step"] == s["diverged_at_step"] - 1


@pytest.mark.slow
def test_on_diverge_raise_raises(tmp_path):
    r = run_cli([*TINY, "lr=1e6", "trainer.log_every=1", "trainer.on_diverge=raise"], cwd=tmp_path)
    assert r.returncode != 0 and "Diverged" in r.stderr


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once_and_damages_nothing(tmp_path):
    run_dir = tmp_path / "run"
    env = cli_env()
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("train_loss") >= 10):
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert "Traceback" not in err, err[-2000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted"
    records = read_metrics(metrics)
    assert len(records) == len(metrics.read_text().splitlines())  # every line is whole JSON
    from runner.engine.checkpoint import load_latest

    state, notes = load_latest(run_dir / "checkpoints")
    assert notes == [] and state is not None  # the epoch-end checkpoint is intact


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_before_training(tmp_path, uninterrupted):
    r = run_cli([*RUN, "model=resnet20v2", f"hydra.run.dir={uninterrupted}"], cwd=tmp_path)
    assert (
        r.returncode == 2
        and "model.name: 'resnet20v1' → 'resnet20v2'" in r.stderr
        and "Traceback" not in r.stderr
    )


@pytest.mark.slow
def test_an_unwritable_output_folder_is_one_clear_line(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    r = run_cli([*TINY, "hydra.run.dir=afile/run"], cwd=tmp_path)
    assert (
        r.returncode == 2
        and "cannot write the run folder" in r.stderr
        and "hydra.run.dir=" in r.stderr
    )
    assert "Traceback" not in r.stderr and (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.slow
def test_missing_data_without_network_names_the_path_and_the_fix(tmp_path):
    r = run_cli(
        ["model=resnet20v1", f"data.root={tmp_path / 'none'}", "data.download=false"], cwd=tmp_path
    )
    assert (
        r.returncode == 2 and "cifar-10-batches-py" in r.stderr and "data.download=true" in r.stderr
    )
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_more_epochs_on_a_finished_run_need_a_stated_schedule_and_get_it(tmp_path):
    """A schedule laid out in fractions of the run would silently move under a new `epochs`: the
    user says how."""
    short = [
        *TINY,
        "epochs=2",
        "batch_size=32",
        "data.n_train=128",
        "data.n_val=32",
        "trainer.log_every=1",
    ]
    first = tmp_path / "first"
    # lr 1e-3, 1e-4, then 1e-5
    assert run_cli([*short, f"hydra.run.dir={first}"], cwd=tmp_path).returncode == 0
    import shutil

    second = tmp_path / "second"
    shutil.copytree(first, second)

    r = run_cli([f"resume={first}", "epochs=3"], cwd=tmp_path)
    assert (
        r.returncode == 2
        and "trainer.extend_schedule=hold" in r.stderr
        and "trainer.extend_schedule=rescale" in r.stderr
    )
    assert json.loads((first / "summary.json").read_text())["steps"] == 8  # refused before any step

    def lrs(run_dir):
        return {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl") if "lr" in r}

    assert (
        run_cli(
            [f"resume={first}", "epochs=3", "trainer.extend_schedule=hold"], cwd=tmp_path
        ).returncode
        == 0
    )
    held = lrs(first)
    assert [held[k] for k in range(9, 13)] == pytest.approx([held[8]] * 4) and held[
        8
    ] == pytest.approx(1e-5)
    assert (
        run_cli(
            [f"resume={second}", "epochs=3", "trainer.extend_schedule=rescale"], cwd=tmp_path
        ).returncode
        == 0
    )
    rescaled = lrs(second)
    # laid out again for 12 steps: step 9 sits at 2/3 of the run (factor 0.1), steps 10-12 past 3/4
    # (factor 0.01)
    assert [rescaled[k] for k in range(9, 13)] == pytest.approx([1e-4, 1e-5, 1e-5, 1e-5])
    # what ran stays as it ran
    assert [rescaled[k] for k in range(1, 9)] == [held[k] for k in range(1, 9)]
    for d, how in ((first, "hold"), (second, "rescale")):
        assert json.loads((d / "summary.json").read_text())["resumed"]["schedule"] == how


def test_a_run_continued_with_fewer_gpus_records_the_cuda_states_left_out(tmp_path, monkeypatch):
    """Its checkpoint holds three GPUs' CUDA RNG states, this machine has one: the run continues
    and its summary's `resumed` names GPUs 1 and 2 (engine.checkpoint.cuda_rng_states)."""
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine import build, checkpoint
    from runner.engine.train import train

    first = train(validate(compose_cfg(*TINY, "trainer.max_steps=2")), tmp_path)
    assert first["status"] == "completed" and "resumed" not in first
    saved, _ = checkpoint.load_latest(tmp_path / "checkpoints")
    saved["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 3  # as three GPUs saved it
    checkpoint.save({k: v for k, v in saved.items() if k != "format"}, tmp_path / "checkpoints")
    real_restore = build.restore

    def restore_on_one_gpu(*args):  # the restore sees one GPU; the training itself stays on the CPU
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            m.setattr(torch.cuda, "device_count", lambda: 1)
            m.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": None)
            return real_restore(*args)

    monkeypatch.setattr(build, "restore", restore_on_one_gpu)
    s = train(validate(compose_cfg(*TINY, "trainer.max_steps=4")), tmp_path)
    assert s["status"] == "completed" and s["resumed"]["from_step"] == 2
    assert s["resumed"]["cuda_rng_not_restored"] == [1, 2]


# ---------------------------------------------------------------- the records decide, not the
# checkpoints alone


def folder_of(tmp_path, *overrides, summary=None, saved_yaml=True):
    """A run folder as a run with `overrides` leaves it without checkpoints: its records (a line of
    metrics.jsonl), its saved config as Hydra writes it, and `summary` (status, steps)."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    from runner.config import validate

    cfg = compose_cfg(*TINY, *overrides)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "epoch": 0.125, "train_loss": 2.3}\n')
    if saved_yaml:
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if summary is not None:
        hparams = dataclasses.asdict(validate(cfg))
        (run / "summary.json").write_text(json.dumps({**summary, "hparams": hparams}))
    return run


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("record", ["summary.json", ".hydra/config.yaml"])
def test_a_start_with_other_settings_is_refused_by_the_records_checkpoints_or_not(tmp_path, record):
    """checkpoints/ deleted to free disk, metrics and summary kept: a new run with another lr
    started into the folder would replace its results."""
    from conftest import compose_cfg

    from runner.config import ConfigError, validate
    from runner.engine.resume import saved_state

    summary = {"status": "completed", "steps": 16} if record == "summary.json" else None
    run = folder_of(tmp_path, "lr=0.002", summary=summary, saved_yaml=record != "summary.json")
    before = snapshot(run)
    with pytest.raises(ConfigError, match=rf"as its {record} says \(lr: 0.002 → 0.001\)"):
        saved_state(validate(compose_cfg(*TINY)), run, None)
    assert snapshot(run) == before


def test_a_completed_run_whose_checkpoints_were_removed_is_not_started_over(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.checkpoint import CheckpointError
    from runner.engine.resume import saved_state

    run = folder_of(tmp_path, summary={"status": "completed", "steps": 16})
    longer = validate(compose_cfg(*TINY, "epochs=3", "trainer.extend_schedule=hold"))
    with pytest.raises(CheckpointError, match="holds no checkpoint to continue from"):
        saved_state(longer, run, None)
    # an interrupted run that had no checkpoint yet starts from step 0, as a requeue does
    (run / "summary.json").unlink()
    saved, state, _ = saved_state(validate(compose_cfg(*TINY)), run, None)
    assert saved is None and state.step == 0


@pytest.mark.parametrize("kind", ["dangling link", "file"])
def test_checkpoints_that_cannot_be_read_never_restart_the_run_from_step_0(tmp_path, kind):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.checkpoint import CheckpointError
    from runner.engine.resume import saved_state

    run = folder_of(tmp_path)
    if kind == "file":
        (run / "checkpoints").write_bytes(b"")
    else:  # scratch space that is not mounted on this node
        (run / "checkpoints").symlink_to(tmp_path / "scratch" / "run")
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="Mount or restore it"):
        saved_state(validate(compose_cfg(*TINY)), run, None)
    assert snapshot(run) == before  # its records are not touched


def test_a_hash_valid_checkpoint_without_what_the_loop_saves_is_refused(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine import checkpoint
    from runner.engine.resume import saved_state

    cfg = validate(compose_cfg(*TINY))
    run = folder_of(tmp_path)
    checkpoint.save({"step": 3, "config": dataclasses.asdict(cfg)}, run / "checkpoints")
    with pytest.raises(checkpoint.CheckpointError, match="holds nothing as its 'model'"):
        saved_state(cfg, run, None)


def test_a_checkpoint_whose_tensors_do_not_fit_the_model_is_refused(tmp_path):
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine import checkpoint
    from runner.engine.train import train

    assert train(validate(compose_cfg(*TINY, "trainer.max_steps=2")), tmp_path)["steps"] == 2
    saved, _ = checkpoint.load_latest(tmp_path / "checkpoints")
    name = next(k for k, v in saved["model"].items() if v.ndim == 4)
    saved["model"][name] = torch.zeros(1)  # intact bytes, misshapen contents
    checkpoint.save({k: v for k, v in saved.items() if k != "format"}, tmp_path / "checkpoints")
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this run"):
        train(validate(compose_cfg(*TINY, "trainer.max_steps=4")), tmp_path)


def test_a_run_continued_on_another_thread_count_says_so_in_resumed(tmp_path):
    """On a CPU the continued run is then not bit for bit the uninterrupted one: it is recorded."""
    from conftest import compose_cfg

    from runner.config import validate
    from runner.engine.train import train

    threads = torch.get_num_threads()
    assert train(validate(compose_cfg(*TINY, "trainer.max_steps=2")), tmp_path)["steps"] == 2
    torch.set_num_threads(threads + 1)
    try:
        s = train(validate(compose_cfg(*TINY, "trainer.max_steps=4")), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert s["resumed"]["torch_threads"] == [threads, threads + 1]
