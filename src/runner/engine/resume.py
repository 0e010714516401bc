"""Resume policy: whether a run folder may be trained under this config, and from where.

A run folder keeps the training settings it ran with: a start whose settings differ from what the
folder's records say it ran (summary.json's hparams, the saved .hydra/config.yaml, the checkpoint's
config) is refused, checkpoints or not; only the settings declared resumable
(runner.config.resumable_keys) may change. Growing `epochs` needs trainer.extend_schedule=hold|
rescale, so the schedule it already ran stays explained.

"No checkpoint yet" (no `checkpoints` at all) starts from step 0. "Checkpoints I cannot read" never
does, since starting over would write a second history into the same records: a `checkpoints` that
is a dangling link or a file, checkpoints that are all damaged, a hash-valid one whose contents do
not fit, and a completed run whose checkpoints were removed are each refused with what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from runner.config import ConfigError, RunConfig, changes, refused_changes, resume_hint
from runner.engine import checkpoint, files
from runner.engine.state import RunState

log = logging.getLogger("runner")
MAX_SUMMARY_BYTES = 64 << 20
# what engine.loop.save_checkpoint writes, and the type each must have
CONTENTS = {
    "step": int,
    "model": dict,
    "optimizer": dict,
    "state": dict,
    "rng": dict,
    "config": dict,
    "probes": dict,
}


def saved_state(
    cfg: RunConfig, run_dir: Path, meta: dict | None
) -> tuple[dict | None, RunState, dict]:
    """(the folder's newest checkpoint or None, the RunState to start from, summary facts with
    `resumed`). FolderError, ConfigError or CheckpointError, before anything is written, for a
    folder this config may not train."""
    files.check_run_folder(run_dir)
    check_records(cfg, run_dir)
    ckpt_dir = run_dir / "checkpoints"
    saved, notes = checkpoint.load_latest(ckpt_dir)  # a requeued job simply starts again here
    for note in notes:
        log.warning(note)
    if saved is None and notes:  # starting over would write a second history into the same records
        raise checkpoint.CheckpointError(
            f"no checkpoint in {ckpt_dir} can be read ({'; '.join(notes)}): to start this run "
            f"again from step 0, move {run_dir} away (or delete it) and run the same command"
        )
    info = {**(meta or {})}
    if saved is None:
        refuse_lost_checkpoints(run_dir, ckpt_dir)
        return None, RunState(schedule_epochs=cfg.epochs), info
    check_contents(saved, ckpt_dir)
    state, info["resumed"] = resume_state(saved, cfg, ckpt_dir)
    return saved, state, info


def recorded_configs(run_dir: Path) -> list[tuple[str, dict]]:
    """(where, config) for each record of what ran in `run_dir` that can be read: summary.json's
    hparams and the saved .hydra/config.yaml (resolved as the run resolved it). One that cannot be
    read says nothing (the checkpoint's config is compared in resume_state)."""
    out = []
    try:
        summary = json.loads(files.read_regular(run_dir / "summary.json", MAX_SUMMARY_BYTES))
        if isinstance(summary, dict) and isinstance(summary.get("hparams"), dict):
            out.append(("summary.json", summary["hparams"]))
    except (OSError, ValueError):
        pass
    saved = run_dir / ".hydra" / "config.yaml"
    if files.kind(saved) == "file":
        config = _saved_run_config(saved)
        if config is not None:
            out.append((".hydra/config.yaml", config))
    return out


def _saved_run_config(path: Path) -> dict | None:
    """The saved config as the run validated it (engine and summary.json compare the same
    values), or None when it cannot be read or validated."""
    from omegaconf import OmegaConf

    from runner import saved_config
    from runner.config import UserError, validate

    try:
        plain = saved_config.load(path)
        return dataclasses.asdict(validate(OmegaConf.create(plain)))
    except (saved_config.SavedConfigError, UserError, ValueError):
        return None


def check_records(cfg: RunConfig, run_dir: Path) -> None:
    """ConfigError when `cfg` would change the training of the run `run_dir`'s records describe
    (runner.config.refused_changes, the one check), whether or not it has checkpoints."""
    new = _plain(dataclasses.asdict(cfg))
    for where, old in recorded_configs(run_dir):
        refused = refused_changes(_plain(old), new)
        if refused:
            raise ConfigError(
                f"{run_dir} holds a run with other training settings, as its {where} says "
                f"({refused}). A run keeps the settings it started with ({resume_hint()}): "
                "drop those overrides, or start the new run in a new folder"
            )


def _plain(config: dict) -> dict:
    """JSON's view of a config (tuples as lists), as summary.json holds it."""
    return json.loads(json.dumps(config, default=str))


def refuse_lost_checkpoints(run_dir: Path, ckpt_dir: Path) -> None:
    """A run whose summary.json says it completed saved a checkpoint at its end: with none left
    (checkpoints/ removed to free disk), training it further would start it over from step 0 and
    replace its records. (completed_summary has already let a run that asks for nothing more be.)"""
    try:
        summary = json.loads(files.read_regular(run_dir / "summary.json", MAX_SUMMARY_BYTES))
    except (OSError, ValueError):
        return
    steps = summary.get("steps") if isinstance(summary, dict) else None
    if summary.get("status") == "completed" and isinstance(steps, int) and steps > 0:
        raise checkpoint.CheckpointError(
            f"{run_dir} completed {steps} steps (summary.json) and {ckpt_dir} holds no checkpoint "
            "to continue from (removed?): it cannot train further, and starting over would "
            "replace its records. Start a longer run in a new folder"
        )


def check_contents(saved: dict, ckpt_dir: Path) -> None:
    """CheckpointError for a checkpoint (intact: its hash matched) that lacks what the loop saves
    or holds it as another type: it was not written by this runner's loop."""
    for key, kind in CONTENTS.items():
        if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool):
            got = "nothing" if key not in saved else type(saved[key]).__name__
            raise checkpoint.CheckpointError(
                f"the newest checkpoint in {ckpt_dir} holds {got} as its {key!r} where this "
                f"runner's checkpoints hold a {kind.__name__}: it was not written by this runner. "
                "Move it away to continue from the previous one, or start a new run in a new "
                "folder"
            )


def resume_state(saved: dict, cfg: RunConfig, ckpt_dir: Path) -> tuple[RunState, dict]:
    """The checkpoint's RunState and what the continued run changes ({"from_step", "changed",
    "schedule"}, and "torch_threads" [then, now] when the thread count differs). CheckpointError
    if it would change the training; ConfigError if it changes `epochs` without saying how."""
    old, new = saved["config"], dataclasses.asdict(cfg)
    refused = refused_changes(old, new)
    if refused:
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} belongs to a run with other training settings ({refused}). A continued "
            f"run keeps them ({resume_hint()}): drop those overrides, or start a new run in a "
            "new folder"
        )
    changed = {k: v for k, v in changes(old, new).items() if k != "resume"}
    state = _state(saved, ckpt_dir)
    state.schedule_epochs = state.schedule_epochs or old.get("epochs")
    how = _extension(cfg, old, state) if "epochs" in changed else None
    for k, (a, b) in changed.items():
        log.info("continuing with %s changed: %r → %r", k, a, b)
    resumed = {
        "from_step": state.step,
        "changed": {k: list(v) for k, v in changed.items()},
        "schedule": how,
    }
    threads = (saved.get("torch_threads"), torch.get_num_threads())
    if isinstance(threads[0], int) and threads[0] != threads[1]:
        resumed["torch_threads"] = list(threads)
        log.warning(
            "the run trained on %d CPU threads and continues on %d: on a CPU, sums split over "
            "threads round differently, so it is no longer bit for bit the run it would have been "
            "(summary.json: resumed.torch_threads; OMP_NUM_THREADS=%d restores it)",
            *threads,
            threads[0],
        )
    return state, resumed


def _state(saved: dict, ckpt_dir: Path) -> RunState:
    try:
        return RunState(**saved["state"])
    except TypeError as e:  # keys this RunState does not have, or lacks
        raise checkpoint.CheckpointError(
            f"the newest checkpoint in {ckpt_dir} holds a loop state this runner does not know "
            f"({e}): continue it with the runner version that wrote it"
        ) from None


def _extension(cfg: RunConfig, old: dict, state: RunState) -> str:
    """How a continued run with other `epochs` lays out its schedule (trainer.extend_schedule);
    ConfigError when it does not say."""
    how = cfg.trainer.extend_schedule
    if how is None:
        raise ConfigError(
            f"epochs changes {old['epochs']} → {cfg.epochs} on a continued run whose schedule "
            "(milestones, cosine, normalized λ) is laid out for "
            f"{state.schedule_epochs} epochs: say how to go on, trainer.extend_schedule=hold (the "
            "steps already run keep their schedule; later steps keep the last step's lr and "
            "decay) or trainer.extend_schedule=rescale (the schedule is laid out again for "
            f"{cfg.epochs} epochs: lr and decay jump to where the new schedule is at step "
            f"{state.step})"
        )
    if how == "rescale":
        state.schedule_epochs = cfg.epochs
    return how
