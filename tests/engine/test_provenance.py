"""Provenance: the git commit and dirtiness of the code that ran, and the machine and software it
ran on."""

import platform
import shutil
import subprocess

import pytest
import torch

from runner.engine import provenance
from runner.engine.provenance import code_version, environment

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with one commit of one file, isolated from the user's git configuration."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # never the repository around tmp_path, if any
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    r = tmp_path / "repo"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "mod.py").write_text("x = 1\n")
    git(r, "init", "-q")
    git(r, "add", ".")
    git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return r


@needs_git
def test_a_clean_checkout_gives_its_commit_and_not_dirty(repo):
    assert code_version(repo / "pkg") == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    # a file: its folder
    assert code_version(repo / "pkg" / "mod.py")["commit"] == git(repo, "rev-parse", "HEAD")


@needs_git
def test_a_modified_tracked_file_makes_it_dirty_an_untracked_one_does_not(repo):
    (repo / "notes.txt").write_text("outputs, data, scratch\n")
    assert code_version(repo)["dirty"] is False
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    assert code_version(repo) == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": True}
    git(repo, "add", "pkg/mod.py")  # staged but not committed is still not the commit
    assert code_version(repo)["dirty"] is True


@needs_git
def test_outside_a_checkout_everything_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert code_version(tmp_path) == {"commit": None, "dirty": None}
    assert code_version(tmp_path / "missing") == {"commit": None, "dirty": None}


@needs_git
def test_an_untracked_folder_inside_someone_elses_repository_is_not_that_repositorys_code(repo):
    # e.g. the package installed into a venv in a project
    venv = repo / ".venv" / "site-packages" / "runner"
    venv.mkdir(parents=True)
    (venv / "__init__.py").write_text("")
    assert code_version(venv) == {"commit": None, "dirty": None}


@needs_git
def test_a_repository_without_commits_has_no_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("")
    git(tmp_path, "add", "a.py")
    assert code_version(tmp_path) == {"commit": None, "dirty": None}


@needs_git
def test_missing_or_hanging_git_gives_none_and_never_raises(repo, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert code_version(repo) == {"commit": None, "dirty": None}
    monkeypatch.undo()

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert code_version(repo) == {"commit": None, "dirty": None}


def test_this_package_reports_a_commit_or_none_and_never_raises():
    v = code_version()
    assert set(v) == {"commit", "dirty"}
    assert (v["commit"] is None) == (v["dirty"] is None)
    assert v["commit"] is None or len(v["commit"]) == 40


def test_environment_names_the_software_and_the_cpu():
    env = environment(torch.device("cpu"))
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert (
        env["torchvision"]
        and env["cuda"] == torch.version.cuda
        and "cudnn" in env
        and env["platform"]
    )
    assert env["device"] == "cpu" and env["device_name"] == env["cpu_name"] and env["cpu_name"]
    assert env["cpu_count"] >= 1


def test_environment_without_a_device_does_not_touch_cuda(monkeypatch):
    def no(*args):
        raise AssertionError("CUDA was queried")

    monkeypatch.setattr(torch.cuda, "get_device_name", no)
    env = environment()
    assert env["device"] is None and env["device_name"] is None
    assert environment("cpu")["device"] == "cpu"  # a device string works too


def test_environment_names_the_gpu_on_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    env = environment(torch.device("cuda", 0))
    assert env["device"] == "cuda" and env["device_name"] == "NVIDIA H100 80GB HBM3"
