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
    before = snapshot(finished)
    r = run_cli([*SHORT, "lr=5e-3", f"hydra.run.dir={finished}"], cwd=tmp_path)
    assert r.returncode == 2 and "lr: 0.001 → 0.005" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(finished) == before  # .hydra/config.yaml and the log included
    assert "run folder" not in r.stderr  # it never named a folder it did not train in
    r = run_cli([f"resume={finished}", "epochs=2", "trainer.extend_schedule=hold"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((finished / "summary.json").read_text())["steps"] == 4


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
