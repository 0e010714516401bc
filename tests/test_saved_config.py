"""runner.saved_config: a run's saved config from someone else's folder is read within limits, and
only the runner's own interpolations are resolved."""

import os

import pytest
from conftest import ALIAS_BOMB

from runner import saved_config
from runner.saved_config import SavedConfigError


def write(tmp_path, text, name="config.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    assert len(ALIAS_BOMB) < 500  # before it is built: built, it would not fit in memory
    with pytest.raises(SavedConfigError, match="aliases expand it past"):
        saved_config.load(write(tmp_path, ALIAS_BOMB))


def test_an_alias_that_holds_itself_is_refused(tmp_path):
    with pytest.raises(SavedConfigError):
        saved_config.load(write(tmp_path, "a: &a [1, *a]\n"))


def test_interpolations_that_double_at_every_key_are_refused(tmp_path):
    lines = ["k0: x"] + [f"k{i}: ${{k{i - 1}}}${{k{i - 1}}}" for i in range(1, 40)]
    with pytest.raises(SavedConfigError, match="interpolations expand past"):
        saved_config.load(write(tmp_path, "\n".join(lines)))
    with pytest.raises(SavedConfigError, match="interpolations expand past"):
        saved_config.load(write(tmp_path, "a: ${b}\nb: ${a}\n"))


def test_a_file_too_large_a_fifo_or_a_list_is_refused(tmp_path):
    with pytest.raises(SavedConfigError, match="larger than"):
        saved_config.load(write(tmp_path, "x: " + "y" * saved_config.MAX_BYTES))
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(SavedConfigError, match="not a regular file"):
        saved_config.load(tmp_path / "fifo.yaml")
    with pytest.raises(saved_config.NotAMapping):
        saved_config.load(write(tmp_path, "- 1\n- 2\n"))


def test_only_the_runners_resolvers_are_resolved_and_no_environment_value_leaks(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2")
    text = (
        "lr: 0.1\nreg: null\nwd: ${reg_or:${reg},5.0e-4}\n"
        "token: ${oc.env:RUNNER_TEST_SECRET}\ncopy: ${token}\n"
        "nested: ${reg_or:${oc.env:RUNNER_TEST_SECRET},1}\n"
    )
    config, kept = saved_config.runner_resolved(saved_config.load(write(tmp_path, text)))
    assert config["wd"] == 5e-4 and config["lr"] == 0.1
    assert "hunter2" not in repr(config)
    assert config["token"] == "${oc.env:RUNNER_TEST_SECRET}"
    assert kept == ["token", "nested"]
