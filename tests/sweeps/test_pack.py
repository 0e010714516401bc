"""Packed sweeps (runner.sweeps.pack, hydra/launcher=packed): every job of a pack trains as it would
alone.

On a CPU the jobs of a pack take turns, one optimizer step each, with the same operations as alone:
their weights, optimizer state and records must come out bit for bit the same (float32, the CPU
default).
"""

import json
import os
import re
import signal
from contextlib import contextmanager

import pytest
import torch
from conftest import TINY, compose_cfg, run_cli

from runner.config import validate
from runner.engine.checkpoint import load_latest
from runner.engine.records import read_metrics
from runner.engine.train import train
from runner.sweeps.pack import Job, pack_key, plan_packs, start_rounds, train_pack

# 2 epochs of 4 steps; validations at steps 3, 6 and 8; weight and gradient norms every 2 steps
SMALL = [
    *TINY,
    "data.n_train=128",
    "data.n_val=40",
    "batch_size=32",
    "trainer.val_every=3",
    "trainer.log_every=2",
]
MIXED = {  # the four update rules of the studies, each with its own lr, λ and seed
    "adamw": ["optimizer=adamw", "lr=3e-3", "wd=1e-3", "seed=1"],
    "adam_l2": ["optimizer=adam_l2", "lr=1e-3", "l2=5e-4", "seed=2"],
    "sgdw": ["optimizer=sgdw", "lr=0.05", "wd=2e-3", "seed=3"],
    "sgd_l2": ["optimizer=sgd_l2", "lr=0.1", "l2=1e-3", "seed=4"],
}
# how long this process took: the one thing a pack changes
TIMING = {
    "epoch_train_s",
    "epoch_images",
}
RESULTS = (
    "status",
    "steps",
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "final_train_loss",
    "best_val_acc_running",
    "final_val_loss_running",
    "n_params",
    "regularization",
    "hparams",
    "timescale",
)


def config(*overrides):
    return validate(compose_cfg(*SMALL, *overrides))


def jobs(root, names, **extra):
    out = []
    for n, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        out.append(
            Job(
                config(*MIXED.get(name, []), *extra.get(name, [])),
                root / name,
                job_num=n,
                name=name,
            )
        )
    return out


def records(run_dir):
    """metrics.jsonl without its timing: train, validation and epoch records."""
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


def essentials(run_dir):
    """Each step's loss, lr and decay, and the validations: what an interruption leaves as it was
    (it adds weight norms to the step it stops at, and a continued epoch's record counts only this
    process's images)."""
    keep = ("step", "epoch", "train_loss", "lr", "decay")
    return [
        r if "val_loss" in r else {k: r[k] for k in keep}
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "val_loss" in r or "train_loss" in r
    ]


def saved_state(run_dir):
    """The last checkpoint's weights and optimizer state, flattened to {name: tensor}."""
    saved = load_latest(run_dir / "checkpoints")[0]
    flat = {f"model.{k}": v for k, v in saved["model"].items()}
    for n, state in saved["optimizer"]["state"].items():
        flat.update({f"opt.{n}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return flat, saved["step"]


def assert_bit_equal(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Each of MIXED trained on its own, by runner.engine.train.train."""
    root = tmp_path_factory.mktemp("alone")
    for job in jobs(root, MIXED):
        train(job.cfg, job.run_dir)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    return root, train_pack(jobs(root, MIXED))


def test_every_job_of_a_pack_ends_bit_for_bit_as_it_would_alone(alone, packed):
    root, outcomes = packed
    for name, outcome in zip(MIXED, outcomes):
        assert outcome.error is None and outcome.summary["status"] == "completed", name
        assert records(root / name) == records(alone / name), name
        assert_bit_equal(saved_state(root / name)[0], saved_state(alone / name)[0])
        by_itself = json.loads((alone / name / "summary.json").read_text())
        assert {k: outcome.summary[k] for k in RESULTS} == {k: by_itself[k] for k in RESULTS}, name
    # four trainings, not one copied four times
    assert len({o.summary["final_val_loss"] for o in outcomes}) == 4


def listing(run_dir):
    """The files of a run folder, less what names them apart: event files' time and host,
    checkpoints' checksums."""
    names = (p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
    return sorted(
        re.sub(r"tfevents\..*", "tfevents", re.sub(r"-[0-9a-f]{16}\.pt", ".pt", n)) for n in names
    )


def test_the_folder_of_a_packed_job_holds_what_a_run_alone_writes(alone, packed):
    root, _ = packed
    for name in MIXED:
        assert listing(root / name) == listing(alone / name)


def test_a_diverging_or_failing_job_stops_alone_and_its_pack_goes_on(tmp_path, alone):
    from runner.engine.loop import Diverged

    outcomes = train_pack(
        jobs(
            tmp_path,
            ["blows_up", "raises", "adamw"],
            blows_up=["optimizer=adamw", "lr=1e6"],
            raises=["optimizer=adamw", "lr=1e6", "trainer.on_diverge=raise"],
        )
    )
    (blown, _), (failed, error), (kept, _) = outcomes
    assert blown["status"] == "diverged" and blown["diverged_at_step"] == 2 and blown["steps"] == 2
    # its summary says where it stopped
    assert failed["status"] == "failed" and isinstance(error, Diverged)
    assert kept["status"] == "completed" and kept["steps"] == 8
    # untouched by its partners' fate
    assert records(tmp_path / "adamw") == records(alone / "adamw")


class SignalAt:
    """An `around` for train_pack that sends this process `sig` as turn number `at` begins."""

    def __init__(self, at, sig=signal.SIGTERM):
        self.turns, self.at, self.sig = 0, at, sig

    @contextmanager
    def __call__(self, i):
        self.turns += 1
        if self.turns == self.at:
            os.kill(os.getpid(), self.sig)
        yield


def test_sigterm_checkpoints_every_job_and_a_rerun_resumes_each_from_its_own_folder(
    tmp_path, alone
):
    names = ["adam_l2", "sgdw", "sgd_l2"]
    # turns: 3 setups, then one step per job and round; turn 3 + 3·4 + 2 begins job 1's 5th step
    outcomes = train_pack(jobs(tmp_path, names), around=SignalAt(3 + 3 * 4 + 2))
    assert [o.summary["status"] for o in outcomes] == ["interrupted"] * 3
    # each checkpointed where it stopped
    assert [saved_state(tmp_path / n)[1] for n in names] == [
        5,
        4,
        4,
    ]
    assert [o.summary["steps"] for o in outcomes] == [5, 4, 4]
    # the same pack again: how a requeue or a restart looks
    outcomes = train_pack(jobs(tmp_path, names))
    for name, outcome in zip(names, outcomes):
        assert outcome.summary["status"] == "completed" and outcome.summary["resumed"][
            "from_step"
        ] in (4, 5)
        assert_bit_equal(saved_state(tmp_path / name)[0], saved_state(alone / name)[0])
        assert essentials(tmp_path / name) == essentials(alone / name)


class Turns:
    """An `around` for train_pack that notes whose turn each one is."""

    def __init__(self):
        self.order = []

    @contextmanager
    def __call__(self, i):
        self.order.append(i)
        yield


def test_staggered_jobs_start_apart_so_they_never_validate_in_the_same_round_and_train_as_alone(
    tmp_path, alone
):
    assert start_rounds([390, 390, 390, 390]) == [0, 97, 195, 292]  # a quarter of an epoch apart
    assert start_rounds([3, 6]) == [0, 1] and start_rounds([]) == []
    names = ["adamw", "sgdw"]
    turns = Turns()
    # what a pack does on CUDA
    outcomes = train_pack(jobs(tmp_path, names), around=turns, stagger=True)
    # two setups; sgdw waits one round (val_every=3: 3·1/2 rounds), so its validations come a step
    # after adamw's
    assert turns.order[:6] == [0, 1, 0, 0, 1, 0]
    for name, outcome in zip(names, outcomes):
        assert outcome.summary["status"] == "completed"
        assert records(tmp_path / name) == records(alone / name)
        assert_bit_equal(saved_state(tmp_path / name)[0], saved_state(alone / name)[0])


def test_jobs_pack_by_model_batch_size_epochs_data_and_device_in_sweep_order():
    base = pack_key(config())
    assert pack_key(config("lr=0.1", "optimizer=sgd_l2", "seed=5", "schedule=cosine")) == base
    for other in (
        "batch_size=16",
        "epochs=3",
        "model=resnet20v2",
        "data.n_train=64",
        "trainer.device=auto",
    ):
        assert pack_key(config(other)) != base, other
    assert pack_key(config("resume=/somewhere")) is None
    assert plan_packs(["a", "b", "a", None, "a", "a", "b"], 2) == [[0, 2], [1, 6], [3], [4, 5]]
    assert plan_packs(["a", "a", "a"], 8) == [[0, 1, 2]]


def job_folders(sweep):
    return {d.name: d for d in sweep.iterdir() if d.is_dir()}


@pytest.mark.slow
def test_a_packed_sweep_writes_what_a_sweep_one_job_at_a_time_writes(tmp_path):
    """Two batch sizes never share a pack: of the 3 jobs of each, 2 pack and the third runs the
    usual way."""
    sweep = [
        *TINY,
        "data.n_train=64",
        "data.n_val=20",
        "trainer.max_steps=3",
        "batch_size=16,32",
        "lr=1e-3,2e-3,3e-3",
        "+hydra.callbacks.log_return._target_=hydra.experimental.callbacks.LogJobReturnCallback",
    ]
    runs = {}
    for launcher, folder in (
        (["hydra/launcher=packed", "hydra.launcher.pack=2"], "packed"),
        ([], "basic"),
    ):
        runs[folder] = run_cli(
            ["-m", *launcher, *sweep, f"hydra.sweep.dir={tmp_path / folder}"], cwd=tmp_path
        )
        assert runs[folder].returncode == 0, runs[folder].stderr[-3000:]
    # jobs 0+1 and 3+4; jobs 2 and 5 ran alone
    assert runs["packed"].stdout.count("pack of 2:") == 2
    packed, basic = job_folders(tmp_path / "packed"), job_folders(tmp_path / "basic")
    assert sorted(packed) == sorted(basic) and len(packed) == 6
    for name, d in packed.items():
        for f in (".hydra/config.yaml", ".hydra/overrides.yaml"):
            assert (d / f).read_text() == (basic[name] / f).read_text(), (name, f)
        assert records(d) == records(basic[name]), name
        s, b = (json.loads((x / "summary.json").read_text()) for x in (d, basic[name]))
        assert {k: s[k] for k in RESULTS} == {k: b[k] for k in RESULTS}, name
        assert list(d.glob("events.out.tfevents.*")) and (d / "checkpoints" / "last.pt").exists()
        # the job's own log file has its lines, and the objective went back to Hydra (python -m
        # runner's value)
        log = (d / "run.log").read_text()
        assert "completed after 3 steps" in log and f"return value: {s['best_val_acc']}" in log, (
            name
        )
        # a packed job's lines say its name
        assert (f"[#{name[0]}] completed" in log) == (name[0] not in "25"), name


@pytest.mark.slow
def test_sigterm_ends_a_packed_sweep_with_its_pack_checkpointed_and_resume_continues_it(
    tmp_path,
):
    import subprocess
    import sys
    import time

    sweep = [
        "-m",
        "hydra/launcher=packed",
        "hydra.launcher.pack=2",
        *TINY,
        "data.n_train=64",
        "data.n_val=20",
        "batch_size=16",
        "epochs=3",
        "trainer.log_every=1",
        "lr=1e-3,2e-3,3e-3,4e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *sweep],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and p.poll() is None
        and not any(
            len(m.read_text().splitlines()) >= 3
            for m in (tmp_path / "sweep").glob("0_*/metrics.jsonl")
        )
    ):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "2 jobs not started" in err, err[-3000:]
    assert "python -m runner resume=sweep continues it" in err
    first = sorted(job_folders(tmp_path / "sweep"))
    assert [n[0] for n in first] == ["0", "1"]  # the second pack never started
    assert all(
        json.loads((tmp_path / "sweep" / n / "summary.json").read_text())["status"] == "interrupted"
        for n in first
    )
    # the command it printed: the sweep's own command again in its folder, packed again
    r = run_cli([f"resume={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    done = {
        n: json.loads((d / "summary.json").read_text())
        for n, d in job_folders(tmp_path / "sweep").items()
    }
    assert len(done) == 4 and all(
        s["status"] == "completed" and s["steps"] == 12 for s in done.values()
    )
    assert all(done[n]["resumed"]["from_step"] > 0 for n in first)


def test_a_job_is_announced_only_once_it_is_set_up_so_a_refused_job_names_no_folder(tmp_path):
    started = []
    good = Job(
        validate(compose_cfg(*SMALL, "trainer.max_steps=1")),
        tmp_path / "good",
        on_start=lambda: started.append("good"),
    )
    bad_cfg = validate(
        compose_cfg(
            *SMALL,
            "data=image_folder",
            f"data.root={tmp_path / 'no_images'}",
            "~data.n_train",
            "~data.n_val",
        )
    )
    bad = Job(bad_cfg, tmp_path / "bad", on_start=lambda: started.append("bad"))
    (done, _), (refused, error) = train_pack([good, bad])
    assert done["status"] == "completed" and refused is None and error is not None
    assert started == ["good"]


def test_a_deterministic_pack_trains_every_job_so_and_leaves_the_process_as_it_found_it(tmp_path):
    """The first job to finish must not switch deterministic algorithms off under the others."""
    seen = []

    @contextmanager
    def watching(i):
        seen.append(torch.are_deterministic_algorithms_enabled())
        yield

    assert not torch.are_deterministic_algorithms_enabled()
    deterministic = {name: ["trainer.deterministic=true"] for name in ("adamw", "sgdw")}
    deterministic["adamw"].append("trainer.max_steps=2")  # ends first; sgdw trains on after it
    outcomes = train_pack(jobs(tmp_path, ["adamw", "sgdw"], **deterministic), around=watching)
    assert [o.summary["steps"] for o in outcomes] == [2, 8]
    assert len(seen) > 8 and all(seen[1:])  # on from the first job's setup, at every turn of either
    assert not torch.are_deterministic_algorithms_enabled()


def on_a_fake_gpu(monkeypatch):
    """train_pack believing it runs on cuda:0 of an H100, failing if it asks torch for a stream or
    sets up a job."""
    from types import SimpleNamespace

    from runner.sweeps import pack

    card = SimpleNamespace(major=9, minor=0, name="NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: card)
    monkeypatch.setattr(pack, "pick_device", lambda name, job_num=0: torch.device("cuda", 0))
    monkeypatch.setattr(pack, "use_device", lambda device: device)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: pytest.fail("asked for a stream"))
    monkeypatch.setattr(pack, "setup", lambda *a, **k: pytest.fail("set up a job"))
    return pack


def test_a_cuda_pack_taking_more_streams_than_torchs_pool_holds_is_refused(tmp_path, monkeypatch):
    """torch hands out 32 CUDA streams per device, round robin; a job on CUDA graphs holds three
    (its own, its step's and its eval forward's side streams), so 11 such jobs would share some.
    Refused before any stream is taken or anything written."""
    from runner.config import ConfigError

    pack = on_a_fake_gpu(monkeypatch)
    cuda, graphed, eager = torch.device("cuda", 0), config(), config("trainer.cuda_graphs=false")
    eleven = [Job(graphed, tmp_path / str(n), name=str(n)) for n in range(11)]
    outcomes = train_pack(eleven)
    assert all(o.summary is None and isinstance(o.error, ConfigError) for o in outcomes)
    refusal = r"11 jobs on CUDA needs 34 CUDA streams.*use hydra\.launcher\.pack=10 or fewer"
    assert re.search(refusal, str(outcomes[0].error))
    assert not any(tmp_path.iterdir())
    assert pack.cuda_streams(eleven[:10], cuda) == 31 <= pack.POOL_STREAMS  # ten fit
    many = [Job(eager, tmp_path, name=str(n)) for n in range(32)]
    assert pack.cuda_streams(many[:31], cuda) == 32 < pack.cuda_streams(many, cuda)  # one each
