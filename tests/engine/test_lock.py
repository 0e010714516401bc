"""runner.engine.lock: one writer per run folder, whatever path names the folder, and a lock file
that cannot be turned into a write elsewhere."""

import os
import subprocess
import sys

import pytest
from conftest import cli_env

from runner.engine import lock
from runner.engine.files import FolderError


@pytest.fixture
def folder(tmp_path):
    run = tmp_path / "outputs" / "2026-01-01" / "12-00-00_abc123"
    run.mkdir(parents=True)
    (tmp_path / "outputs" / "latest").symlink_to("2026-01-01/12-00-00_abc123")
    yield run
    lock.release(run)


def test_a_folder_is_locked_once_whatever_path_names_it(folder):
    lock.hold(folder.parent.parent / "latest")  # resume=outputs/latest
    lock.hold(folder)  # the run's own path, as the trainer has it: the same folder, no refusal
    lock.hold(folder.parent / ".." / folder.parent.name / folder.name)
    assert lock.held(folder) and lock.held(folder.parent.parent / "latest")
    assert (folder / lock.NAME).read_text() == f"{os.getpid()}\n"
    lock.release(folder.parent.parent / "latest")
    assert not lock.held(folder)


def test_another_process_is_refused_through_any_path_and_told_how_to_continue(folder):
    lock.hold(folder)
    code = (
        "import sys; from runner.engine import lock\n"
        "try: lock.hold(sys.argv[1])\n"
        "except lock.FolderBusy as e: print(e)\n"
    )
    for path in (folder, folder.parent.parent / "latest"):
        r = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=folder.parent.parent.parent,
        )
        assert f"another process (pid {os.getpid()})" in r.stdout, r.stderr
        assert "resume=outputs/2026-01-01/12-00-00_abc123" in r.stdout


def test_a_sweep_jobs_folder_is_named_in_the_hint_as_hydra_and_the_shell_read_it(tmp_path):
    job = tmp_path / "0_lr=0.1,wd=0.2"
    job.mkdir()
    lock.hold(job)
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from runner.engine import lock; lock.hold('0_lr=0.1,wd=0.2')"],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=tmp_path,
        )
        assert """python -m runner 'resume="0_lr=0.1,wd=0.2"'""" in r.stderr
    finally:
        lock.release(job)


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(folder, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    (folder / lock.NAME).symlink_to(victim)
    with pytest.raises(FolderError, match="symbolic link"):
        lock.hold(folder)
    assert victim.read_text() == "the user's own file\n" and not lock.held(folder)
