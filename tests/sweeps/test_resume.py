"""Continuing a sweep (runner.sweeps.resume): `python -m runner resume=SWEEP_DIR` runs the sweep's
own command again in its folder; each job is left as it is, continues, or trains."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import TINY, cli_env, run_cli

from runner.config import ConfigError
from runner.engine.checkpoint import load_latest
from runner.engine.records import read_metrics
from runner.sweeps.resume import continue_sweep

# 3 jobs of 2 epochs of 4 steps; a checkpoint at each epoch's end
SWEEP = [
    *TINY,
    "data.n_train=128",
    "data.n_val=32",
    "batch_size=32",
    "trainer.bn_recalibrate=32",
    "trainer.log_every=1",
    "lr=1e-3,2e-3,3e-3",
]
TIMING = {"epoch_train_s", "epoch_images"}  # how long this process took: all a restart changes


def sweep_folder(tmp_path, task=("lr=1e-3,2e-3", "epochs=2"), hydra=("hydra.mode=MULTIRUN",)):
    """A sweep folder as the sweeper leaves it: multirun.yaml with the command's overrides."""
    folder = tmp_path / "multirun" / "2026-01-01" / "12-00-00_abc123"
    folder.mkdir(parents=True)
    saved = {"hydra": {"overrides": {"task": list(task), "hydra": list(hydra)}}, "lr": 0.001}
    (folder / "multirun.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "multirun" / "latest").symlink_to("2026-01-01/12-00-00_abc123")
    return folder


def test_resume_of_a_sweep_folder_is_the_sweeps_own_command_in_that_folder(tmp_path):
    folder = sweep_folder(tmp_path, hydra=("hydra/launcher=packed", "hydra.sweep.dir=x"))
    argv = continue_sweep([f"resume={tmp_path / 'multirun' / 'latest'}"])
    assert argv == [
        "--multirun",
        "hydra/launcher=packed",
        "lr=1e-3,2e-3",
        "epochs=2",
        f"hydra.sweep.dir={folder}",
    ]


def test_a_continued_sweep_may_change_what_a_continued_run_may_change(tmp_path):
    folder = sweep_folder(tmp_path)
    argv = continue_sweep(
        ["-m", f"resume={folder}", "epochs=3", "trainer.extend_schedule=hold", "hydra.verbose=1"]
    )
    assert argv[0] == "--multirun" and argv.count("--multirun") == 1 and "-m" not in argv
    assert "epochs=2" not in argv and argv[-4:-1] == [
        "epochs=3",
        "trainer.extend_schedule=hold",
        "hydra.verbose=1",
    ]
    with pytest.raises(ConfigError, match="lr would change its jobs' training"):
        continue_sweep([f"resume={folder}", "lr=0.5"])


def test_a_run_folder_or_no_folder_is_not_a_sweep_to_continue(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("lr: 0.001\n")
    assert continue_sweep([f"resume={run}"]) is None
    assert continue_sweep([f"resume={tmp_path / 'typo'}"]) is None
    assert continue_sweep(["lr=1e-3"]) is None


def test_a_damaged_multirun_yaml_is_one_clear_refusal(tmp_path):
    folder = sweep_folder(tmp_path)
    (folder / "multirun.yaml").write_text("hydra: [not, a, sweep]\n")
    with pytest.raises(ConfigError, match="multirun.yaml cannot be read"):
        continue_sweep([f"resume={folder}"])


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def jobs(sweep):
    return {p.name: p for p in sorted(sweep.iterdir()) if p.is_dir()}


def snapshot(folder):
    """Every file of a job with its bytes (the lock's pid aside)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def kill_after_first_job(sweep):
    """Start the sweep; SIGKILL it (no clean-up of any kind) once job 0 has completed and job 1 has
    written its first checkpoint, job 2 not started."""
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", *SWEEP, f"hydra.sweep.dir={sweep}"],
        cwd=sweep.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if list(sweep.glob("0_*/summary.json")) and list(sweep.glob("1_*/checkpoints/step-*.pt")):
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err[-3000:]


@pytest.mark.slow
def test_a_sweep_killed_after_its_first_job_continues_to_the_sweep_it_would_have_been(tmp_path):
    """Job 0 completed (left byte for byte as it is), job 1 interrupted by the kill (continues from
    its checkpoint), job 2 never started (trains): every job completed once, with the weights and
    records of the uninterrupted sweep, bit for bit."""
    ref = tmp_path / "ref" / "sweep"
    ref.parent.mkdir()
    r = run_cli(["-m", *SWEEP, f"hydra.sweep.dir={ref}"], cwd=ref.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "killed" / "sweep"
    sweep.parent.mkdir()
    kill_after_first_job(sweep)
    names = sorted(jobs(sweep))
    assert [n[0] for n in names] == ["0", "1"] and not (
        jobs(sweep)[names[1]] / "summary.json"
    ).exists()
    first, command = snapshot(jobs(sweep)[names[0]]), (sweep / "multirun.yaml").read_bytes()

    r = run_cli([f"resume={sweep}"], cwd=sweep.parent)  # the documented command
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{names[0]} already completed 8 steps: nothing to train" in r.stderr
    assert (
        snapshot(jobs(sweep)[names[0]]) == first
        and (sweep / "multirun.yaml").read_bytes() == command
    )
    assert sorted(jobs(sweep)) == sorted(jobs(ref))
    for name, job in jobs(sweep).items():
        s = json.loads((job / "summary.json").read_text())
        assert s["status"] == "completed" and s["steps"] == 8, name
        assert s.get("resumed", {}).get("from_step") == (4 if name[0] == "1" else None), name
        a, b = load_latest(job / "checkpoints")[0], load_latest(ref / name / "checkpoints")[0]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        ours, theirs = (
            read_metrics(job / "metrics.jsonl"),
            read_metrics(ref / name / "metrics.jsonl"),
        )
        assert untimed(ours) == untimed(theirs), name  # each step once, the same values
