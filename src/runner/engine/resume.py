"""Resume policy: whether a run folder's checkpoint may continue under this config, and from where.

A continued run keeps its training settings: only those declared resumable (runner.config.resumable_keys) may
change. Growing `epochs` needs trainer.extend_schedule=hold|rescale, so the schedule it already ran stays
explained. A folder whose checkpoints are all unreadable is refused rather than started again, which would write a
second history into the same records.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from runner.config import ConfigError, RunConfig, resumable_keys
from runner.engine import checkpoint
from runner.engine.records import flatten
from runner.engine.state import RunState

log = logging.getLogger("runner")


def saved_state(cfg: RunConfig, run_dir: Path, meta: dict | None) -> tuple[dict | None, RunState, dict]:
    """(the folder's newest checkpoint or None, the RunState to start from, summary facts with `resumed`)."""
    ckpt_dir = run_dir / "checkpoints"
    saved, notes = checkpoint.load_latest(ckpt_dir)  # a requeued job simply starts again here
    for note in notes:
        log.warning(note)
    if saved is None and notes:  # starting over would write a second history into the same records
        raise checkpoint.CheckpointError(
            f"no checkpoint in {ckpt_dir} can be read ({'; '.join(notes)}): to start this run again from step 0, "
            f"move {run_dir} away (or delete it) and run the same command"
        )
    info = {**(meta or {})}
    if saved is None:
        return None, RunState(schedule_epochs=cfg.epochs), info
    state, info["resumed"] = resume_state(saved, cfg, ckpt_dir)
    return saved, state, info


def resume_state(saved: dict, cfg: RunConfig, ckpt_dir: Path) -> tuple[RunState, dict]:
    """The checkpoint's RunState and what the continued run changes ({"from_step", "changed", "schedule"}).
    CheckpointError if it would change the training; ConfigError if it changes `epochs` without saying how."""
    old = saved["config"]
    changed = config_changes(old, dataclasses.asdict(cfg))
    resumable = resumable_keys()  # settings a continued run may change; any other would make it another run
    refused = {k: v for k, v in changed.items() if k not in resumable}
    if refused:
        what = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in refused.items())
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} belongs to a run with other training settings ({what}). A continued run keeps them "
            f"(only {', '.join(resumable)} may change): drop those overrides, or start a new run in a new folder"
        )
    if "state" in saved:
        state = RunState(**saved["state"])
    else:  # a checkpoint of the runner before RunState
        lv = saved["last_val"]
        state = RunState(
            step=saved["step"],
            best_acc_running=saved["best_acc"],
            initial_loss=saved["initial_loss"],
            last_val=None if lv is None else {"val_loss": lv[0], "val_acc": lv[1]},
            epoch_loss_sum=saved["epoch_loss"] * saved["n_epoch"],
            epoch_steps=saved["n_epoch"],
        )
    state.schedule_epochs = state.schedule_epochs or old["epochs"]
    how = None
    if "epochs" in changed:
        how = cfg.trainer.extend_schedule
        if how is None:
            raise ConfigError(
                f"epochs changes {old['epochs']} → {cfg.epochs} on a continued run whose schedule (milestones, "
                f"cosine, normalized λ) is laid out for {state.schedule_epochs} epochs: say how to go on, "
                f"trainer.extend_schedule=hold (the steps already run keep their schedule; later steps keep the last "
                f"step's lr and decay) or trainer.extend_schedule=rescale (the schedule is laid out again for "
                f"{cfg.epochs} epochs: lr and decay jump to where the new schedule is at step {state.step})"
            )
        if how == "rescale":
            state.schedule_epochs = cfg.epochs
    for k, (a, b) in changed.items():
        log.info("continuing with %s changed: %r → %r", k, a, b)
    return state, {"from_step": state.step, "changed": {k: list(v) for k, v in changed.items()}, "schedule": how}


def config_changes(old: dict, new: dict) -> dict:
    """{dotted key: (old, new)} for every setting that differs between two resolved configs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k != "resume"}
