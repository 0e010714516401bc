"""`python -m runner` around the training: where runs go, what they are called, how to find them,
and what a sweeper gets back."""

import json
import re

import pytest
from conftest import TINY, make_run, run_cli
from omegaconf import OmegaConf

from runner.sweeps import callbacks

SHRINK = {
    "epochs": "1",
    "data.n_train": "64",
    "data.n_val": "20",
    "batch_size": "32",
    "trainer.max_steps": "2",
}
# TINY with each key given once (a sweep's job names list a key given twice once, a plain compose
# twice)
SMALL = [o for o in TINY if o.split("=")[0] not in SHRINK] + [f"{k}={v}" for k, v in SHRINK.items()]
callbacks.register_resolvers()


def folder_lines(stderr: str) -> list[str]:
    return re.findall(r"^runner: (?:run|sweep) folder .*$", stderr, flags=re.M)


# --- sweep job folder names
# -----------------------------------------------------------------------------------


# --- latest links
# ---------------------------------------------------------------------------------------------


# --- the Optuna preset
# ----------------------------------------------------------------------------------------


# --- end to end
# -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_says_its_folder_at_start_and_end_and_becomes_latest(tmp_path):
    r = run_cli(SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("20*/*")
    rel = run.relative_to(tmp_path).as_posix()
    assert folder_lines(r.stderr) == [
        f"runner: run folder {rel}",
        f"runner: run folder {rel} (completed)",
    ]
    assert r.stderr.rstrip().endswith(f"runner: run folder {rel} (completed)")
    assert (tmp_path / "outputs" / "latest").resolve() == run.resolve()
    assert (run / "run.log").is_file() and not (run / "__main__.log").exists()


@pytest.mark.slow
def test_a_resume_to_a_folder_without_a_run_fails_before_creating_anything(tmp_path):
    r = run_cli(["resume=typo/path", "epochs=3"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "resume='typo/path': no run there" in r.stderr and "give the folder of a run" in r.stderr
    assert list(tmp_path.iterdir()) == [], "nothing created: not the typo's folder, not outputs/"


@pytest.mark.slow
def test_a_run_stopped_by_a_user_error_leaves_no_folder_and_no_link(tmp_path):
    r = run_cli(
        ["model=resnet20v1", f"data.root={tmp_path / 'none'}", "data.download=false"], cwd=tmp_path
    )
    assert r.returncode == 2 and "data.download=true" in r.stderr
    assert (
        not list((tmp_path / "outputs").glob("*/*"))
        and not (tmp_path / "outputs" / "latest").is_symlink()
    )


@pytest.mark.slow
def test_a_sweep_names_jobs_by_their_overrides_links_latest_reports_and_says_its_folder_last(
    tmp_path,
):
    r = run_cli(["-m", *SMALL, "optimizer=adamw,adam_l2", "report=true"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("20*/*")
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == ["0_optimizer=adamw", "1_optimizer=adam_l2"]  # the swept key only
    assert not any(k in jobs[0] for k in ("trainer.progress", "trainer.device", "report"))
    names = {
        json.loads((sweep / j / "summary.json").read_text())["hparams"]["optimizer"]["name"]
        for j in jobs
    }
    assert names == {"adamw", "adam_l2"}
    assert (tmp_path / "multirun" / "latest").resolve() == sweep.resolve()
    assert (sweep / "report" / "report.md").is_file() and (sweep / "report" / "runs.csv").is_file()
    lines = folder_lines(r.stderr)
    assert (
        len(lines) == 5
        and lines[-1] == f"runner: sweep folder {sweep.relative_to(tmp_path).as_posix()}"
    )
    assert r.stderr.rstrip().endswith(lines[-1])


def image_tree(root, classes=("ant", "bee"), per_class=16):
    """A tiny train/<class>/*.png + test/<class>/*.png folder for data=image_folder."""
    import numpy as np
    from PIL import Image

    for split, n in (("train", per_class), ("test", 2)):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((32, 32, 3), 40 * ci + i, np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


IMAGES = [o for o in SMALL if not o.startswith(("data.n_train", "data.n_val"))]
IMAGES += ["data=image_folder", "data.n_train=null", "data.n_val=null"]


def earlier_sweep(tmp_path):
    """multirun/latest pointing at an earlier sweep that trained."""
    old = make_run(tmp_path / "multirun", "2026-01-01", "10-00-00_before")
    (tmp_path / "multirun" / "latest").symlink_to("2026-01-01/10-00-00_before")
    return old


@pytest.mark.slow
def test_a_named_sweep_carries_its_name_and_tags_into_folders_summary_tensorboard_and_report(
    tmp_path,
):
    """name= and tags= (and the decoupled λ the step plan applies, which optimizer.wd_tau sets
    from other settings) as TensorBoard's HParams show them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    args = ["-m", *SMALL, "name=lrscan", "tags=[first,cpu]", "lr=1e-3,2e-3", "report=true"]
    r = run_cli([*args, "optimizer.wd_tau=5"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("20*/*")
    assert sweep.name.endswith("_lrscan")
    job = sweep / "0_lr=0.001"
    summary = json.loads((job / "summary.json").read_text())
    assert (summary["name"], summary["tags"]) == ("lrscan", ["first", "cpu"])
    ea = EventAccumulator(str(job), size_guidance={"tensors": 0})
    ea.Reload()
    read = plugin_data_pb2.HParamsPluginData.FromString
    content = ea.PluginTagToContent("hparams")
    columns = read(content["_hparams_/experiment"]).experiment.hparam_infos
    start = read(content["_hparams_/session_start_info"]).session_start_info
    assert [c.name for c in columns][:2] == ["name", "lr"] and [c.differs for c in columns][:2] == [
        False,
        True,
    ]  # in a sweep its swept keys lead: the name is the sweep's
    assert start.hparams["name"].string_value == "lrscan"
    assert start.hparams["tags"].string_value == "first, cpu"
    assert start.group_name == job.relative_to(tmp_path).as_posix()  # the trial: its folder
    applied = start.hparams["wd_applied"].number_value
    assert applied != summary["hparams"]["wd"]  # wd_tau set λ from the run's length
    assert f"θ·(1 − η_t·{applied:g})" in summary["regularization"][0]
    report = (sweep / "report" / "report.md").read_text()
    assert "| run | name | tags | status | seed |" in report
    assert "| 0_lr=0.001 | lrscan | first, cpu | completed |" in report


@pytest.mark.slow
def test_a_sweep_whose_jobs_all_fail_at_setup_leaves_latest_where_it_was(tmp_path):
    """No job found its images: the sweep folder holds no run that trained, so `latest` (what the
    report and TensorBoard are pointed at) keeps showing the earlier sweep."""
    old = earlier_sweep(tmp_path)
    r = run_cli(["-m", *IMAGES, f"data.root={tmp_path / 'none'}", "seed=1,2"], cwd=tmp_path)
    assert r.returncode == 2 and "no such folder" in r.stderr, r.stderr[-3000:]
    assert len(list((tmp_path / "multirun").glob("20*/*"))) == 2  # the failed sweep's folder exists
    assert (tmp_path / "multirun" / "latest").resolve() == old.resolve()


@pytest.mark.slow
def test_a_sweep_that_partly_fails_is_latest_once_a_job_trains(tmp_path):
    earlier_sweep(tmp_path)
    good = image_tree(tmp_path / "images")
    r = run_cli(["-m", *IMAGES, f"data.root={good},{tmp_path / 'none'}"], cwd=tmp_path)
    assert r.returncode == 2 and "no such folder" in r.stderr, r.stderr[-3000:]
    (sweep,) = [p for p in (tmp_path / "multirun").glob("20*/*") if "before" not in p.name]
    trained = [p.parent.name.split("_")[0] for p in sweep.glob("*/summary.json")]
    assert trained == ["0"]  # job 1 did not train
    assert (tmp_path / "multirun" / "latest").resolve() == sweep.resolve()


@pytest.mark.slow
# optuna 2's own use of SQLAlchemy 1.4
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
def test_a_two_trial_optuna_sweep_maximizes_what_each_run_returns(tmp_path):
    """main() returns summary[trainer.objective]; Optuna's sweeper records it per trial and writes
    the best one."""
    study = tmp_path / "study.db"
    r = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.direction=maximize",
            "hydra.sweeper.sampler.seed=0",
            f"hydra.sweeper.storage=sqlite:///{study}",
            "hydra.sweeper.study_name=t",
            "lr=interval(1e-4,1e-2)",
            *SMALL,
            "trainer.val_every=1",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("20*/*")
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [t.name.split("_", 1)[0] for t in trials] == ["0", "1"] and all(
        "lr=" in t.name for t in trials
    )
    accs = [json.loads((t / "summary.json").read_text())["best_val_acc"] for t in trials]
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == max(accs)
    import optuna  # the database storage is what needs SQLAlchemy 1.x (pyproject's sqlalchemy<2)

    values = sorted(
        t.value for t in optuna.load_study(study_name="t", storage=f"sqlite:///{study}").trials
    )
    assert values == sorted(accs)


def test_help_shows_the_projects_own_examples_and_groups(tmp_path):
    r = run_cli(["--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "python -m runner debug=smoke" in r.stdout and "resume=outputs/latest" in r.stdout
    assert "resume=multirun/latest" in r.stdout  # continuing a sweep
    # the groups, from the configs themselves
    assert "optimizer: adam_l2, adamw, sgd_l2, sgdw" in r.stdout


def test_a_run_that_stops_early_says_how_to_continue_it(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    callbacks.run_ends(run, "interrupted")
    assert "resume=" not in capsys.readouterr().err  # nothing to continue from yet
    (run / "checkpoints" / "step-00000008-0123456789abcdef.pt").write_bytes(b"x")
    callbacks.run_ends(run, "interrupted")
    assert f"runner: continue it with: python -m runner resume={run}" in capsys.readouterr().err
    callbacks.run_ends(run, "completed")
    assert "resume=" not in capsys.readouterr().err


def test_the_hint_for_a_stopped_sweep_job_parses_as_hydra_reads_it(tmp_path, capsys):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = tmp_path / "0_optimizer=adamw,wd=0.1"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "step-00000008-0123456789abcdef.pt").write_bytes(b"x")
    callbacks.run_ends(job, "interrupted")
    hint = capsys.readouterr().err.split("continue it with: ")[1].strip()
    *command, word = shlex.split(hint)
    assert command == ["python", "-m", "runner"]
    assert OverridesParser.create().parse_override(word).value() == str(job)
