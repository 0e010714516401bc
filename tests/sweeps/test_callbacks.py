"""Hydra's side of the run folders (runner.sweeps.callbacks): job folder names, the latest links,
the tune sweeper's direction."""

import os

import pytest
from conftest import CONFIG_DIR, make_run
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from runner.sweeps import callbacks
from runner.sweeps.callbacks import forget_latest, job_dirname, point_latest

callbacks.register_resolvers()  # ${job_dirname:...} in the composed Hydra config


def job_folder_name(num: int, *overrides: str) -> str:
    """The folder name Hydra gives sweep job `num` with these overrides (the real config,
    resolved)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = num
    return OmegaConf.select(cfg, "hydra.sweep.subdir")


def test_a_job_folder_is_its_number_then_what_it_overrides():
    assert job_folder_name(3, "optimizer=adamw", "wd=0.0005") == "3_optimizer=adamw,wd=0.0005"


def test_keys_that_do_not_change_the_training_stay_out_of_the_name():
    noisy = [
        "trainer.progress=false",
        "trainer.device=cpu",
        "data.root=/data/cifar",
        "data.download=false",
        "trainer.log_every=1",
        "trainer.val_every=5",
        "log.histograms_every=10",
        "report=true",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
    ]
    assert (
        job_folder_name(1, "optimizer=adam_l2", "l2=0.0001", *noisy)
        == "1_l2=0.0001,optimizer=adam_l2"
    )


def test_in_a_sweep_a_job_folder_names_only_the_keys_the_sweep_varies(monkeypatch):
    from runner.sweeps.callbacks import SWEPT_ENV, swept_keys

    cli = [
        "batch_size=32",
        "data.subset=400",
        "epochs=2",
        "optimizer=adamw,adam_l2",
        "reg=1e-4,1e-3",
        "model=resnet20v1",
        "hydra/launcher=packed",
        "seed=range(2)",
    ]
    sweep = OmegaConf.create(
        {"hydra": {"overrides": {"task": cli}, "sweeper": {"params": {"lr": "1e-3,2e-3"}}}}
    )
    assert swept_keys(sweep) == ["lr", "optimizer", "reg", "seed"]
    monkeypatch.setenv(SWEPT_ENV, "optimizer,reg")
    job = [
        "batch_size=32",
        "data.subset=400",
        "epochs=2",
        "optimizer=adam_l2",
        "reg=0.001",
        "model=resnet20v1",
    ]
    assert job_folder_name(1, *job) == "1_optimizer=adam_l2,reg=0.001"  # the README's promise
    monkeypatch.setenv(SWEPT_ENV, "")
    assert job_folder_name(4, *job) == "4"  # a sweep of one point varies nothing


def test_a_name_adds_itself_to_a_folder_unless_the_sweep_varies_it(monkeypatch):
    from runner.sweeps.callbacks import SWEPT_ENV, name_part

    assert (name_part(None), name_part(""), name_part("baseline")) == ("", "", "_baseline")
    assert name_part("a/b c") == "_a-b-c"  # one folder (validate then refuses the name)
    monkeypatch.setenv(SWEPT_ENV, "lr,name")  # each job would resolve the sweep folder alone
    assert name_part("baseline") == ""
    monkeypatch.setenv(SWEPT_ENV, "lr")
    assert name_part("baseline") == "_baseline"


def test_a_job_that_overrides_nothing_is_named_by_its_number():
    assert job_folder_name(0) == "0"
    assert job_folder_name(7, "trainer.device=cpu") == "7"
    assert job_dirname(0, []) == "0"


def test_two_jobs_never_share_a_folder():
    # the same overrides (a value given twice, an Optuna point drawn again) still give distinct
    # folders
    assert job_dirname(0, ["lr=0.001"]) != job_dirname(1, ["lr=0.001"])
    # jobs that differ only in a key left out of the name, too
    assert job_folder_name(0, "trainer.device=cpu") != job_folder_name(1, "trainer.device=cuda")


def test_a_long_or_slashed_override_set_is_one_valid_folder_name_that_keeps_the_job_number():
    long = ",".join(f"schedule.milestones=[{i}]" for i in range(100))
    for num in (3, 12):
        name = job_dirname(num, [*long.split(","), "+experiment=a/b"])
        assert name.startswith(f"{num}_experiment=a%2Fb,schedule.milestones=") and "/" not in name
        assert len(name.encode()) <= 255
    assert job_dirname(0, ["data.subset=a/b"]) == "0_data.subset=a%2Fb"
    # cut between characters, never inside one
    assert job_dirname(0, ["xy=" + "é" * 200]).endswith("é")


def test_latest_points_at_the_newest_run_with_a_relative_link(tmp_path):
    first, second = (
        make_run(tmp_path, "2026-11-28", "10-00-00_aaaaaa"),
        make_run(tmp_path, "2026-11-29", "09-00-00_b"),
    )
    point_latest(first)
    point_latest(second)
    latest = tmp_path / "latest"
    assert os.readlink(latest) == "2026-11-29/09-00-00_b" and latest.resolve() == second.resolve()
    # no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2026-11-28",
        "2026-11-29",
        "latest",
    ]


def test_a_folder_outside_the_date_layout_gets_no_link(tmp_path):
    run = tmp_path / "mine" / "run"
    run.mkdir(parents=True)
    point_latest(run)
    assert not list(tmp_path.rglob("latest"))


def test_a_link_that_cannot_be_made_is_a_note_not_a_failure(tmp_path, capsys):
    (tmp_path / "latest").mkdir()  # a real folder where the link would go
    point_latest(make_run(tmp_path, "2026-11-28", "10-00-00_aaaaaa"))
    assert (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()
    assert "runner: note: could not point" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_sweep_job_that_starts_training_makes_its_sweep_latest(tmp_path, capsys):
    sweep = make_run(tmp_path, "2026-11-28", "10-00-00_s")
    (sweep / "0_lr=0.1").mkdir()
    callbacks.run_starts(sweep / "0_lr=0.1", sweep)
    assert os.readlink(tmp_path / "latest") == "2026-11-28/10-00-00_s"
    assert "runner: run folder" in capsys.readouterr().err


def test_forgetting_a_removed_run_drops_only_its_own_link(tmp_path):
    a, b = make_run(tmp_path, "2026-11-28", "a"), make_run(tmp_path, "2026-11-28", "b")
    point_latest(a)
    forget_latest(b)
    assert os.readlink(tmp_path / "latest") == "2026-11-28/a"
    forget_latest(a)
    assert not (tmp_path / "latest").is_symlink()


def test_a_latest_link_this_process_did_not_move_is_left_as_it_is(tmp_path):
    """A refused resume=outputs/latest: the link is the user's, pointing at the run they named."""
    run = make_run(tmp_path, "2026-11-28", "a")
    (tmp_path / "latest").symlink_to("2026-11-28/a")
    forget_latest(run)
    assert os.readlink(tmp_path / "latest") == "2026-11-28/a"


def test_a_refused_sweep_job_leaves_a_folder_it_found_and_removes_one_made_for_it(tmp_path):
    """What Hydra made for the job (the folder and its empty log) goes; a folder that held a run
    keeps every entry and its log's length; a folder another process holds is not touched."""
    from runner.engine import lock

    made, found = tmp_path / "0_lr=0.1", tmp_path / "1_lr=0.2"
    made.mkdir()
    (made / "run.log").write_bytes(b"")
    found.mkdir()
    (found / "run.log").write_bytes(b"the run's log\n")
    (found / "metrics.jsonl").write_bytes(b'{"step": 1}\n')
    for job in (made, found):
        callbacks.job_starts(job, sweep_job=True)
        with open(job / "run.log", "a") as f:
            f.write("a refused start's line\n")
        callbacks.refused(job)
        assert not lock.held(job)
    assert not made.exists()
    assert sorted(p.name for p in found.iterdir()) == ["metrics.jsonl", "run.log"]
    assert (found / "run.log").read_bytes() == b"the run's log\n"


@pytest.mark.parametrize(
    "objective, direction",
    [(None, "maximize"), ("final_val_acc", "maximize"), ("final_val_loss", "minimize")],
)
def test_the_tune_sweeper_pushes_the_objective_the_right_way(objective, direction):
    overrides = ["hydra/sweeper=tune"] + ([f"++trainer.objective={objective}"] if objective else [])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
    assert (
        cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.sampler.seed == 0
    )
