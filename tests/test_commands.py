"""runner.commands: a printed command, pasted into a shell, gives Hydra back the very folder."""

import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from runner.commands import override, resume_command

AWKWARD = [
    "multirun/2026-01-01/12-00-00_abc/0_lr=0.1,wd=0.2",  # a sweep job: = and , break Hydra
    "runs/it's here",
    'a "quoted" name',
    "back\\slash\\",
    "dollar${HOME}and${x}",
    "tab\tand space",
    "[brackets](and)",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_an_awkward_folder_survives_the_shell_and_hydras_parser(value):
    (word,) = shlex.split(override("resume", value))
    parsed = OverridesParser.create().parse_override(word)
    assert parsed.key_or_group == "resume" and not parsed.is_sweep_override()
    # as the config holds it: an escaped ${ is text, not an interpolation
    assert OmegaConf.create({"resume": parsed.value()}).resume == value


def test_a_plain_folder_is_left_as_people_type_it():
    assert override("resume", "outputs/2026-01-31/12-00-00_abc123") == (
        "resume=outputs/2026-01-31/12-00-00_abc123"
    )


def test_the_resume_command_names_a_folder_below_here_relatively(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resume_command(tmp_path / "multirun" / "0_lr=1") == (
        """python -m runner 'resume="multirun/0_lr=1"'"""
    )
