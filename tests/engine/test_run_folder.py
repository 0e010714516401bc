"""One writer per run folder, and a refused run leaves the folder it was given exactly as it found
it."""

import json
import os

import pytest
from conftest import TINY, finished_run, run_cli

from runner.engine import lock

SHORT = [
    *TINY,
    "epochs=1",
    "data.n_train=64",
    "data.n_val=20",
    "batch_size=32",
    "trainer.bn_recalibrate=32",
]


def snapshot(folder):
    """Every file under `folder` with its bytes (the .lock's pid aside: which process held it
    last)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
        if p.name != lock.NAME
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory, "finished", SHORT)


@pytest.mark.slow
def test_hydra_run_dir_dot_with_a_bad_value_leaves_the_folder_intact(tmp_path):
    here = tmp_path / "e"
    here.mkdir()
    r = run_cli(["hydra.run.dir=.", "lr=-1"], cwd=here)
    assert r.returncode == 2 and "lr=-1.0 is invalid" in r.stderr and "Traceback" not in r.stderr
    assert here.is_dir() and list(here.iterdir()) == []


@pytest.mark.slow
def test_a_refused_run_in_another_runs_folder_leaves_it_as_it_was_and_it_still_resumes(
    tmp_path, finished
):
    import shutil

    run = tmp_path / "theirs"  # a copy: the module's finished run stays at 2 steps for the others
    shutil.copytree(finished, run, symlinks=True)
    before = snapshot(run)
    r = run_cli([*SHORT, "lr=5e-3", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 2 and "lr: 0.001 → 0.005" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(run) == before  # .hydra/config.yaml and the log included
    assert "run folder" not in r.stderr  # it never named a folder it did not train in
    r = run_cli([f"resume={run}", "epochs=2", "trainer.extend_schedule=hold"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_changes_nothing(tmp_path, finished):
    before = snapshot(finished)
    lock.hold(finished)  # this test process is the run still being written
    try:
        for args in ([*SHORT, f"hydra.run.dir={finished}"], [f"resume={finished}"]):
            r = run_cli(args, cwd=tmp_path)
            assert r.returncode == 2 and f"another process (pid {os.getpid()})" in r.stderr, (
                r.stderr[-2000:]
            )
            assert "Traceback" not in r.stderr and snapshot(finished) == before
    finally:
        lock.release(finished)


@pytest.mark.slow
def test_a_refusal_keeps_latest_at_the_previous_good_run_and_leaves_no_empty_folder(tmp_path):
    assert run_cli(SHORT, cwd=tmp_path).returncode == 0
    good = os.readlink(tmp_path / "outputs" / "latest")
    r = run_cli(
        ["model=resnet20v1", f"data.root={tmp_path / 'none'}", "data.download=false"], cwd=tmp_path
    )
    assert r.returncode == 2 and "data.download=true" in r.stderr
    assert os.readlink(tmp_path / "outputs" / "latest") == good
    (date,) = [p for p in (tmp_path / "outputs").iterdir() if p.name != "latest"]
    assert [p.name for p in date.iterdir()] == [good.split("/")[1]]


@pytest.mark.slow
def test_resume_without_a_checkpoint_still_refuses_a_training_change(tmp_path):
    run = tmp_path / "run"
    assert run_cli([*SHORT, f"hydra.run.dir={run}"], cwd=tmp_path).returncode == 0
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    records = (run / "metrics.jsonl").read_bytes()
    r = run_cli([f"resume={run}", "lr=5e-3"], cwd=tmp_path)
    assert r.returncode == 2 and "lr: 0.001 → 0.005" in r.stderr and "Traceback" not in r.stderr
    assert (run / "metrics.jsonl").read_bytes() == records


@pytest.mark.slow
def test_resume_of_a_completed_run_keeps_its_summary_and_a_null_override_applies(tmp_path):
    run = tmp_path / "run"
    assert (
        run_cli([*SHORT, "trainer.max_steps=1", f"hydra.run.dir={run}"], cwd=tmp_path).returncode
        == 0
    )
    first = (run / "summary.json").read_bytes()
    assert run_cli([f"resume={run}", "trainer.max_steps=1"], cwd=tmp_path).returncode == 0
    assert (
        run / "summary.json"
    ).read_bytes() == first  # nothing trained: its timing is not rewritten
    assert run_cli([f"resume={run}", "trainer.max_steps=null"], cwd=tmp_path).returncode == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 2  # null: the whole epoch


@pytest.mark.slow
def test_a_corrupt_saved_config_under_resume_is_one_line(tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / ".hydra" / "config.yaml").write_text("lr: [unclosed\n")
    r = run_cli([f"resume={run}"], cwd=tmp_path)
    assert r.returncode == 2 and "cannot be read" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- one folder, whatever names it


@pytest.mark.slow
def test_resume_through_latest_or_a_path_with_dots_continues_the_run(tmp_path):
    """The command README and --help teach: the lock, the trainer and the clean-up all know the
    folder by its resolved path, so the run is not refused as its own other writer."""
    r = run_cli([*SHORT, "epochs=2", "trainer.max_steps=1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("20*/*")
    dots = f"outputs/{run.parent.name}/../{run.parent.name}/{run.name}"
    for i, path in enumerate(["outputs/latest", dots], start=2):
        r = run_cli([f"resume={path}", f"trainer.max_steps={i}"], cwd=tmp_path)
        assert r.returncode == 0 and "another process" not in r.stderr, r.stderr[-2000:]
        assert json.loads((run / "summary.json").read_text())["steps"] == i
    assert os.readlink(tmp_path / "outputs" / "latest") == f"{run.parent.name}/{run.name}"


@pytest.mark.slow
def test_a_refused_resume_of_a_run_with_no_records_yet_leaves_the_folder_and_latest(
    tmp_path, finished
):
    """A run killed before its first record holds only .hydra/, its lock and its log: a refused
    resume= through outputs/latest must not take them for its own leftovers."""
    import shutil

    run = tmp_path / "outputs" / "2026-01-01" / "12-00-00_abc123"
    run.mkdir(parents=True)
    shutil.copytree(finished / ".hydra", run / ".hydra")
    (run / "run.log").write_text("[2026-01-01 12:00:00,000][runner][INFO] - set up\n")
    (tmp_path / "outputs" / "latest").symlink_to("2026-01-01/12-00-00_abc123")
    before = snapshot(run)
    r = run_cli(["resume=outputs/latest", "lr=0.5"], cwd=tmp_path)
    assert r.returncode == 2 and "would change the training" in r.stderr, r.stderr[-2000:]
    assert snapshot(run) == before and (tmp_path / "outputs" / "latest").is_symlink()


# ---------------------------------------------------------------- nothing changes unless it trains


@pytest.mark.slow
def test_a_start_in_an_already_completed_run_leaves_every_byte_its_log_too(tmp_path, finished):
    before = snapshot(finished)
    r = run_cli([*SHORT, f"hydra.run.dir={finished}"], cwd=tmp_path)
    assert r.returncode == 0 and "already completed 2 steps: nothing to train" in r.stderr
    assert snapshot(finished) == before


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep") / "sweep"
    r = run_cli(["-m", *SHORT, "lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"], cwd=sweep.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    return sweep


@pytest.mark.slow
def test_a_sweep_started_again_with_another_setting_is_refused_and_changes_no_byte(
    tmp_path, finished_sweep
):
    """Job 0's saved config keeps saying what ran (wd 0.0005, not 0.2), so it can still resume;
    multirun.yaml keeps the sweep's own command."""
    before = snapshot(finished_sweep)
    r = run_cli(
        ["-m", *SHORT, "lr=1e-3,2e-3", "wd=0.2", f"hydra.sweep.dir={finished_sweep}"],
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "wd: 0.0005 → 0.2" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and snapshot(finished_sweep) == before


@pytest.mark.slow
def test_a_sweep_started_into_a_running_one_is_refused_before_it_writes(tmp_path, finished_sweep):
    before = snapshot(finished_sweep)
    lock.hold(finished_sweep)  # this test process is the sweep still running
    try:
        r = run_cli(
            ["-m", *SHORT, "lr=1e-3,2e-3", f"hydra.sweep.dir={finished_sweep}"], cwd=tmp_path
        )
    finally:
        lock.release(finished_sweep)
    assert r.returncode == 2 and f"another process (pid {os.getpid()})" in r.stderr
    assert snapshot(finished_sweep) == before


# ---------------------------------------------------------------- not what they seem


@pytest.mark.slow
def test_a_log_planted_as_a_link_in_a_received_run_is_refused_and_never_written(tmp_path, finished):
    import shutil

    run = tmp_path / "received"
    shutil.copytree(finished, run, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    (run / "run.log").unlink()
    (run / "run.log").symlink_to(victim)
    r = run_cli([f"resume={run}", "epochs=2", "trainer.extend_schedule=hold"], cwd=tmp_path)
    assert r.returncode == 2 and "run.log is a link" in r.stderr, r.stderr[-2000:]
    assert victim.read_text() == "the user's own file\n" and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("what", ["a name too long", "a link loop", "an alias bomb"])
def test_a_resume_of_a_folder_that_is_not_what_it_seems_is_one_line(tmp_path, what):
    from conftest import ALIAS_BOMB

    if what == "a name too long":
        target = "x" * 300
    elif what == "a link loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        target = "loop"
    else:
        (tmp_path / "run" / ".hydra").mkdir(parents=True)
        (tmp_path / "run" / ".hydra" / "config.yaml").write_text(ALIAS_BOMB)
        target = "run"
    r = run_cli([f"resume={target}"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("runner: error:") == 1
