"""Continuing a sweep: `python -m runner resume=SWEEP_DIR [KEY=VALUE ...]`.

A sweep folder keeps the command that started it in multirun.yaml (hydra.overrides: the task's and
Hydra's own, written by the sweeper before its first job; a sweep started into an existing folder
keeps the first one's). Continuing the sweep is that command again, with hydra.sweep.dir set to the
folder: the sweep composes the same jobs in the same order, so each lands in its own folder again,
and each job then does what a job does when started in its folder: a completed one (or one that
diverged) is left exactly as it is, an interrupted one continues from its checkpoint, a failed one
or one that never started trains (from its checkpoint when it has one), and a report=true sweep
reports on all of them at its end. It works however the sweep ended, a SIGKILL of the sweep process
included. The launcher is the sweep's own: the packed launcher forms its packs again from the jobs
left to train (completed jobs join none), joblib runs the jobs in its workers again.

Overrides given with resume= may change what a continued run may change (runner.config.
resumable_keys) and Hydra's own settings (hydra.*, e.g. hydra.launcher.n_jobs); they replace the
sweep's own value of the same key. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from runner import saved_config
from runner.commands import hydra_override, shown
from runner.config import ConfigError, resumable_keys
from runner.engine import files

SWEEP_FILE = "multirun.yaml"
MULTIRUN = ("-m", "--multirun")


def _key(override: str) -> str:
    """An override's key as the command line gives it (`+x=1` → x, `hydra/launcher=packed` →
    hydra/launcher)."""
    return override.split("=", 1)[0].lstrip("+~")


def _resume_value(argv: list[str]) -> tuple[str, int] | None:
    """(the folder resume= names, its position in argv), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for i, arg in enumerate(argv):
        if arg.startswith("-") or _key(arg) != "resume":
            continue
        try:
            value = parser.parse_override(arg).value()
        except Exception:  # Hydra says what is wrong with it, as for any override
            return None
        return (value, i) if isinstance(value, str) and value else None
    return None


def sweep_folder(value: str) -> Path | None:
    """The sweep folder `value` names (resolved: multirun/latest is the sweep it points at), or
    None when it is not one (a run folder, a typo: resume= of a run says what is wrong)."""
    try:
        folder = files.resolved(value)
    except files.FolderError:
        return None
    is_run = files.kind(folder / ".hydra" / "config.yaml") is not None
    return folder if files.kind(folder / SWEEP_FILE) == "file" and not is_run else None


def saved_command(folder: Path) -> tuple[list[str], list[str]]:
    """(the sweep's task overrides, its Hydra overrides) from its multirun.yaml; ConfigError when
    that cannot be read."""
    where = folder / SWEEP_FILE
    try:
        saved = saved_config.load(where)
        overrides = saved["hydra"]["overrides"]
        task, hydra = overrides["task"], overrides["hydra"]
    except (saved_config.SavedConfigError, KeyError, TypeError) as e:
        raise ConfigError(
            f"resume={shown(folder)}: its {where} cannot be read ({e}): it is not a sweep this "
            "runner started, or it was damaged; continue its jobs one by one with resume=JOB_DIR"
        ) from None
    lines = [*(task or []), *(hydra or [])]
    if not all(isinstance(o, str) for o in lines):
        raise ConfigError(f"resume={shown(folder)}: {where} holds overrides that are not text")
    return list(task or []), list(hydra or [])


def continue_sweep(argv: list[str]) -> list[str] | None:
    """The command line (argv without the program) that continues the sweep `resume=` names in
    `argv`, or None when `argv` does not name a sweep folder. ConfigError for an override that the
    sweep's jobs may not change."""
    found = _resume_value(argv)
    folder = sweep_folder(found[0]) if found else None
    if folder is None:
        return None
    rest = [a for i, a in enumerate(argv) if i != found[1]]
    flags = [a for a in rest if a.startswith("-") and a not in MULTIRUN]
    given = [a for a in rest if not a.startswith("-")]
    allowed = set(resumable_keys()) - {"resume"}
    for o in given:
        key = _key(o)
        if key not in allowed and not key.startswith(("hydra.", "hydra/")):
            raise ConfigError(
                f"resume={shown(folder)} continues the sweep with its own settings: {key} would "
                f"change its jobs' training (a continued sweep may change "
                f"{', '.join(sorted(allowed))} and hydra.*); start a new sweep for other settings"
            )
    task, hydra = saved_command(folder)
    replaced = {_key(o) for o in given} | {"hydra.sweep.dir"}
    kept = [o for o in [*hydra, *task] if _key(o) not in replaced]
    return [*flags, "--multirun", *kept, *given, hydra_override("hydra.sweep.dir", str(folder))]
