"""runner.engine.files: what a run writes goes where it says, never through a planted link, and what
it reads is a regular file of a sane size."""

import os
import threading

import pytest

from runner.engine import files
from runner.engine.files import FolderError, NotRegular


def planted(tmp_path):
    """A file outside the run folder that a planted link points at, and its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's own file\n")
    return victim


def test_a_write_replaces_a_link_at_its_name_and_never_writes_through_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = planted(tmp_path)
    (run / "summary.json").symlink_to(victim)
    (run / "summary.json.tmp").symlink_to(victim)
    files.write_atomic(run / "summary.json", b"{}")
    assert victim.read_bytes() == b"the user's own file\n"
    assert not (run / "summary.json").is_symlink() and (run / "summary.json").read_bytes() == b"{}"
    assert not (run / "summary.json.tmp").exists() and not (run / "summary.json.tmp").is_symlink()


def test_a_failed_write_leaves_the_old_bytes_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"old\n")

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OSError):
        files.write_atomic(target, b"new\n", durable=True)
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.jsonl"
    ]


def test_a_fifo_is_refused_without_blocking_and_so_is_a_file_past_the_limit(tmp_path):
    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)
    done = []
    reader = threading.Thread(target=lambda: done.append(_refused(fifo, 100)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert done == [True], "reading a FIFO blocked"
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    assert _refused(big, 100) and files.read_regular(big, 101) == b"x" * 101


def _refused(path, limit):
    try:
        files.read_regular(path, limit)
    except NotRegular:
        return True
    return False


def test_a_link_is_read_only_when_the_reader_follows_links(tmp_path):
    victim = planted(tmp_path)
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    assert files.read_regular(tmp_path / "metrics.jsonl", 1000) == victim.read_bytes()
    with pytest.raises(NotRegular, match="symbolic link"):
        files.read_regular(tmp_path / "metrics.jsonl", 1000, nofollow=True)


@pytest.mark.parametrize(
    "name, make",
    [
        ("metrics.jsonl", lambda p, v: p.symlink_to(v)),
        ("run.log", lambda p, v: p.symlink_to(v)),
        ("summary.json", lambda p, v: p.mkdir()),
        (".hydra", lambda p, v: p.symlink_to(v.parent)),
        (".hydra/config.yaml", lambda p, v: (p.parent.mkdir(), p.symlink_to(v))),
    ],
)
def test_a_run_folder_whose_own_names_are_links_or_of_the_wrong_type_is_refused(
    tmp_path, name, make
):
    run = tmp_path / "run"
    run.mkdir()
    victim = planted(tmp_path)
    make(run / name, victim)
    with pytest.raises(FolderError, match="Remove it"):
        files.check_run_folder(run)
    assert victim.read_bytes() == b"the user's own file\n"


def test_a_run_folder_of_plain_files_and_linked_checkpoints_passes(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name in ("metrics.jsonl", "summary.json", "run.log", ".hydra/config.yaml"):
        (run / name).write_text("")
    (tmp_path / "scratch").mkdir()
    (run / "checkpoints").symlink_to(tmp_path / "scratch")  # scratch space: a link is fine here
    files.check_run_folder(run)


def test_a_folder_is_known_by_its_resolved_path(tmp_path):
    real = tmp_path / "outputs" / "2026-01-01" / "r"
    real.mkdir(parents=True)
    (tmp_path / "outputs" / "latest").symlink_to("2026-01-01/r")
    through_dots = tmp_path / "outputs" / "2026-01-01" / ".." / "2026-01-01" / "r"
    assert files.resolved(tmp_path / "outputs" / "latest") == files.resolved(through_dots) == real
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(FolderError, match="cannot be resolved"):
        files.resolved(tmp_path / "loop")
