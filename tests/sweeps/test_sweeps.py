"""Sweeps: Hydra's launchers, GPU pinning, the experiment presets, and the report on a real
sweep."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_env, compose_cfg, run_cli

from runner.config import validate
from runner.engine.build import pick_device, use_device

SMALL = [*TINY, "epochs=2", "data.n_train=128", "data.n_val=40", "batch_size=32"]


def summaries(root):
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("summary.json")}


def test_sweep_job_i_runs_on_gpu_i_mod_n(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [pick_device("auto", i).index for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert pick_device("cuda", 4) == torch.device("cuda", 1)
    assert pick_device("cpu", 4) == torch.device("cpu")


def test_a_run_on_gpu_n_makes_gpu_n_the_current_device(monkeypatch):
    """What torch takes without a device (a graph capture's sync and pool, new streams) then means
    the run's GPU."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert use_device(pick_device("cuda", 3)) == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    use_device(torch.device("cpu"))
    assert current == [torch.device("cuda", 1)]  # a CPU run leaves CUDA alone


def test_experiment_presets_compose():
    k = validate(compose_cfg("experiment=keras_baseline"))
    assert (k.optimizer.name, k.l2, k.wd, k.batch_size, k.epochs) == ("adam_l2", 2e-4, 0.0, 32, 200)
    assert (k.optimizer.decay_on, k.optimizer.eps, k.data.normalize, k.data.pad_mode) == (
        "conv",
        1e-7,
        "pixel_mean",
        "replicate",
    )
    assert k.schedule.milestones == [0.405, 0.605, 0.805, 0.905]
    # Keras' lr_schedule(epoch) with its 0-based epoch index: `epoch > 80` → ×0.1, ...
    # (cifar10_resnet.py)
    from runner.core.schedules import make_schedule

    keras = lambda e: (
        0.5e-3 if e > 180 else 1e-3 if e > 160 else 1e-2 if e > 120 else 1e-1 if e > 80 else 1.0
    )  # noqa: E731
    eta = make_schedule(k.schedule, k.epochs)
    assert all(eta(e + f) == keras(e) for e in range(200) for f in (0.0, 0.5, 0.999))
    assert k.data.drop_last is False  # Keras trains on the last, smaller batch of each epoch too
    a = validate(compose_cfg("experiment=adamw_20ep"))
    assert (a.optimizer.name, a.l2, a.batch_size, a.epochs, a.schedule.shape) == (
        "adamw",
        0.0,
        64,
        20,
        "warm_restarts",
    )
    assert a.optimizer.wd_normalized and a.trainer.train_eval and a.trainer.bn_recalibrate != 0
    from runner.core.step_plan import normalized_lambda

    # what was measured
    assert normalized_lambda(a.wd, a.batch_size, 50_000, a.epochs) == pytest.approx(3.0e-4)
    o = validate(compose_cfg("experiment=adamw_oscillate"))
    assert (o.wd, o.epochs, o.optimizer.wd_normalized, o.trainer.val_every) == (
        1e-3,
        30,
        False,
        200,
    )
    for opt, key in (("adamw", "wd"), ("adam_l2", "l2")):
        b = validate(compose_cfg("experiment=blog_grid", f"optimizer={opt}", "reg=3e-4"))
        assert getattr(b, key) == 3e-4 and b.report and b.trainer.train_eval and b.epochs == 20
    for opt, key in (("adamw", "wd"), ("adam_l2", "l2")):
        p = validate(compose_cfg("experiment=paper_grid", f"optimizer={opt}", "reg=0.05"))
        assert getattr(p, key) == 0.05 and p.optimizer.wd_normalized and p.optimizer.l2_normalized


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_without_progress_bars(tmp_path):
    # only the swept key names the folder: no launcher keys, no keys every job shares
    r = run_cli(
        [
            "-m",
            "hydra/launcher=local_parallel",
            "hydra.launcher.n_jobs=2",
            *SMALL,
            "trainer.max_steps=2",
            "seed=1,2",
            "trainer.progress=null",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = summaries(tmp_path / "multirun" / "latest")
    assert sorted(s) == [f"{i}_seed={i + 1}" for i in (0, 1)]
    assert {v["hparams"]["seed"] for v in s.values()} == {1, 2}
    assert all(v["status"] == "completed" for v in s.values())
    assert "it/s" not in r.stderr  # no tqdm bars from parallel jobs


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_signal_to_a_joblib_sweep_checkpoints_every_job_and_leaves_no_worker(tmp_path):
    """SIGTERM to the sweep process alone: each running job checkpoints and stops, the job still
    queued does not start, no worker outlives the sweep, and resume= then completes all three."""
    sweep = [
        "-m",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        *SMALL,
        "epochs=10",  # 40 steps: a busy machine starts job 1 before job 0 has ended
        "trainer.log_every=1",
        "lr=1e-3,2e-3,3e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *sweep],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    deadline, metrics = time.time() + 300, tmp_path / "sweep"
    while time.time() < deadline and p.poll() is None:
        started = [m.read_text().count("train_loss") for m in metrics.glob("*/metrics.jsonl")]
        if len(started) == 2 and min(started) >= 2:
            break
        time.sleep(0.01)
    workers = children(p.pid)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "python -m runner resume=sweep continues it" in err, err[-3000:]
    s = summaries(tmp_path / "sweep")
    assert (
        sorted(s) == ["0_lr=0.001", "1_lr=0.002"]
        and not (tmp_path / "sweep" / "2_lr=0.003").exists()
    )
    assert all(v["status"] == "interrupted" for v in s.values()), s
    assert all(list((tmp_path / "sweep" / n / "checkpoints").glob("step-*.pt")) for n in s)
    ending = time.time() + 60  # a worker told to stop ends soon, not within the same instant
    while [w for w in workers if alive(w)] and time.time() < ending:
        time.sleep(0.1)
    assert workers and not [w for w in workers if alive(w)], "a worker outlived the sweep"
    r = run_cli([f"resume={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summaries(tmp_path / "sweep")
    assert len(s) == 3 and all(v["status"] == "completed" and v["steps"] == 40 for v in s.values())


@pytest.mark.slow
def test_paper_grid_then_report_gives_the_heat_maps(tmp_path):
    # the command line narrows the preset's grid
    r = run_cli(
        ["experiment=paper_grid", *SMALL, "trainer.max_steps=4", "lr=1e-3,2e-3", "reg=0.05"],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = summaries(tmp_path / "multirun")
    assert len(s) == 4
    assert {(v["hparams"]["optimizer"]["name"], v["hparams"]["lr"]) for v in s.values()} == {
        (o, lr) for o in ("adam_l2", "adamw") for lr in (1e-3, 2e-3)
    }
    (sweep,) = (tmp_path / "multirun").glob("20*/*")  # the dated folder, not latest/
    r = run_cli_report([str(sweep)])
    assert r.returncode == 0, r.stderr
    for name in ("report.md", "runs.csv", "heatmap.png", "val_curves.png"):
        assert (sweep / "report" / name).is_file(), name


def run_cli_report(args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "runner.analysis.report", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_report_on_a_real_2x2_sweep_and_hparams_in_each_run(tmp_path):
    r = run_cli(
        [
            "-m",
            *SMALL,
            "trainer.max_steps=3",
            "lr=1e-3,2e-3",
            "wd=1e-4,5e-4",
            "trainer.val_every=1",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("20*/*")  # the dated folder, not latest/
    rep = run_cli_report([str(sweep)])
    assert rep.returncode == 0, rep.stderr
    assert "4 runs (4 completed) in 4 configurations" in rep.stdout
    assert (sweep / "report" / "report.md").read_text().count("| completed |") == 4
    head = (sweep / "report" / "heatmap.png").read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n"
    from runner.analysis.runs import collect_runs, varying_keys

    runs = collect_runs(sweep)
    keys = varying_keys(runs)
    assert {"lr", "wd"} <= set(keys)
    # HParams: every run's own event file holds the same hyperparameter keys
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    key_sets = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()):
        acc = EventAccumulator(str(job), size_guidance={"tensors": 0})
        acc.Reload()
        plugin = acc.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in plugin
        from tensorboard.plugins.hparams import plugin_data_pb2

        info = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"])
        key_sets.append(frozenset(info.session_start_info.hparams.keys()))
        assert info.session_start_info.hparams["lr"].number_value in (1e-3, 2e-3)
    assert (
        len(key_sets) == 4
        and len(set(key_sets)) == 1
        and {"lr", "wd", "optimizer", "epochs"} <= key_sets[0]
    )


def _pids_writing(path) -> list[int]:
    """Processes that hold `path` open (submitit's local job ids are process ids, not sweep
    indices)."""
    import os
    from pathlib import Path

    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


@pytest.mark.slow
def test_submitit_local_requeues_an_interrupted_job_which_continues_in_its_folder(tmp_path):
    """Two jobs through submitit's local executor; job 1 gets the preemption signal (SIGUSR2)
    mid-run, checkpoints, is requeued by submitit, and continues where it stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "runner",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        *SMALL,
        "epochs=4",
        "trainer.log_every=1",
        "seed=1,2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    job1 = sweep / "1_seed=2"  # the swept key only
    metrics = job1 / "metrics.jsonl"
    deadline = time.time() + 240
    while (
        not (metrics.exists() and metrics.read_text().count("train_loss") >= 5)
        and time.time() < deadline
    ):
        time.sleep(0.05)
    pids = _pids_writing(metrics)
    assert len(pids) == 1, pids
    # what SLURM sends signal_delay_s before a timeout or on preemption
    os.kill(pids[0], signal.SIGUSR2)
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-3000:]
    (job0,) = sweep.glob("0_*")
    s = {n: json.loads((job / "summary.json").read_text()) for n, job in (("0", job0), ("1", job1))}
    assert all(v["status"] == "completed" and v["steps"] == 16 for v in s.values()), s
    assert "resumed" not in s["0"] and s["1"]["resumed"]["from_step"] >= 5
    steps = [
        r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "train_loss" in r
    ]
    assert steps == list(range(1, 17))  # appended across the requeue, no duplicates


def test_a_sweep_with_one_bad_value_refuses_before_any_job_trains_and_leaves_no_folder(tmp_path):
    (tmp_path / "multirun").mkdir()
    r = run_cli(["-m", *SMALL, "trainer.max_steps=2", "lr=1e-3,-1"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "sweep job [" in r.stderr and "lr=-1" in r.stderr and "lr=-1.0 is invalid" in r.stderr
    assert "completed" not in r.stdout + r.stderr  # job 0 (lr=1e-3) never trained
    assert list((tmp_path / "multirun").iterdir()) == []  # no sweep folder, no multirun/latest
