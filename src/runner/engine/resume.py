"""Resume policy: whether a run folder's checkpoint may continue under this config, and from where.

A continued run keeps its training settings: only those declared resumable
(runner.config.resumable_keys) may change. Growing `epochs` needs
trainer.extend_schedule=hold|rescale, so the schedule it already ran stays explained. A folder whose
checkpoints are all unreadable is refused rather than started again, which would write a second
history into the same records.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from runner.config import ConfigError, RunConfig, changes, refused_changes, resume_hint
from runner.engine import checkpoint
from runner.engine.state import RunState

log = logging.getLogger("runner")


def saved_state(
    cfg: RunConfig, run_dir: Path, meta: dict | None
) -> tuple[dict | None, RunState, dict]:
    """(the folder's newest checkpoint or None, the RunState to start from, summary facts with
    `resumed`)."""
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
        return None, RunState(schedule_epochs=cfg.epochs), info
    state, info["resumed"] = resume_state(saved, cfg, ckpt_dir)
    return saved, state, info


def resume_state(saved: dict, cfg: RunConfig, ckpt_dir: Path) -> tuple[RunState, dict]:
    """The checkpoint's RunState and what the continued run changes ({"from_step", "changed",
    "schedule"}). CheckpointError if it would change the training; ConfigError if it changes
    `epochs` without saying how."""
    old, new = saved["config"], dataclasses.asdict(cfg)
    refused = refused_changes(old, new)
    if refused:
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} belongs to a run with other training settings ({refused}). A continued "
            f"run keeps them ({resume_hint()}): drop those overrides, or start a new run in a "
            "new folder"
        )
    changed = {k: v for k, v in changes(old, new).items() if k != "resume"}
    state = RunState(**saved["state"])
    state.schedule_epochs = state.schedule_epochs or old["epochs"]
    how = None
    if "epochs" in changed:
        how = cfg.trainer.extend_schedule
        if how is None:
            raise ConfigError(
                f"epochs changes {old['epochs']} → {cfg.epochs} on a continued run whose schedule "
                f"(milestones, cosine, normalized λ) is laid out for {state.schedule_epochs} "
                "epochs: say how to go on, trainer.extend_schedule=hold (the steps already run "
                "keep their schedule; later steps keep the last step's lr and decay) or "
                f"trainer.extend_schedule=rescale (the schedule is laid out again for {cfg.epochs} "
                f"epochs: lr and decay jump to where the new schedule is at step {state.step})"
            )
        if how == "rescale":
            state.schedule_epochs = cfg.epochs
    for k, (a, b) in changed.items():
        log.info("continuing with %s changed: %r → %r", k, a, b)
    return state, {
        "from_step": state.step,
        "changed": {k: list(v) for k, v in changed.items()},
        "schedule": how,
    }
