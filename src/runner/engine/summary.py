"""summary.json: a run's results, its time split honestly (engine.timing), and what ran
(engine.provenance).

The headline numbers best_val_acc, final_val_acc and final_val_loss are the evaluation
core.headline names (`val_metric`): final_val_acc is the last validation record's `val_acc`; both
evaluations are also reported under their own names (`*_running`, `*_recal`), as in
metrics.jsonl. `timescale` is the decay's EMA timescale of the run's plan in both conventions
(core.step_plan.timescale); `applied` the λ (`wd`) and λ₂ (`l2`) the plan applies, which `hparams`
(the configuration as given) need not show: optimizer.wd_tau and wd_normalized set λ from other
settings; `probes` what the probes measure on. `path` is the execution path that ran (at the end, in
this process); `path_fallback` lists each move to a safer one when compile or capture failed
(engine.execution), null when the run kept the path it set out on. Figures computed from the
records (the oscillation and equilibrium figures) are the report's:
python -m runner.analysis.report RUN_DIR.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from runner.config import RunConfig, refused_changes
from runner.core.step_plan import timescale
from runner.engine import files, lock
from runner.engine.run import Run
from runner.engine.selection import selected_note, selection
from runner.engine.timing import split_time

MAX_SUMMARY_BYTES = 64 << 20  # a summary.json is a few kB: past this it is not one


def finish(run: Run) -> dict:
    """Write summary.json and the HParams end, close the records; returns the summary."""
    summary = {**summarize(run), **selection(run)}
    recorder = run.out.recorder
    if not recorder.path.exists():  # removed by hand while the run wrote it: the summary goes on
        run.out.log.warning("%s was removed during the run", recorder.path)
    recorder.finish(summary)
    write_summary(run.out.run_dir, summary)
    lock.release(run.out.run_dir)  # the records are complete: another process may continue it
    best = summary["best_val_acc"]
    tests = "".join(
        f"; {k} {summary[k]:.4f}" for k in ("test_acc_selected", "test_acc_final") if k in summary
    )
    run.out.log.info(
        "%s after %d steps: best_val_acc %s (= %s, %s)%s, %.1f s",
        summary["status"],
        run.state.step,
        "-" if best is None else f"{best:.4f}",
        "best_val_acc" + run.headline.suffix,
        selected_note(summary),
        tests,
        summary["wall_time_s"],
    )
    return summary


def summarize(run: Run) -> dict:
    """summary.json: the run's results, its time split honestly (engine.timing), what ran."""
    s, cfg, st, head = run.state, run.cfg, run.stats, run.headline
    last = s.last_val or {}
    times = split_time(st.clock.windows)
    summary = {
        "name": cfg.name,  # what a person calls the run (name=...), and its tags
        "tags": list(cfg.tags),
        "status": st.status,
        "n_params": run.facts["n_params"],
        "steps": s.step,
        "epochs": s.step / run.steps_per_epoch,
        "val_metric": head.name,
        "best_val_acc": s.best_acc_recal if head.recalibrated else s.best_acc_running,
        "final_val_acc": last.get("val_acc"),
        "final_val_loss": last.get("val_loss"),
        "best_val_acc_running": s.best_acc_running,
        "final_val_acc_running": last.get("val_acc_running"),
        "final_val_loss_running": last.get("val_loss_running"),
        "best_val_acc_recal": s.best_acc_recal,
        "final_val_acc_recal": last.get("val_acc_recal"),
        "final_val_loss_recal": last.get("val_loss_recal"),
        "final_train_loss": s.epoch_loss_sum / s.epoch_steps if s.epoch_steps else None,
        "final_train_acc": s.epoch_correct / s.epoch_seen if s.epoch_seen else None,
        "wall_time_s": time.time() - st.t_start,
        **times,
        "startup": startup_parts(run, times),
        "first_step_s": st.first_step_s,
        "val_time_s": sum(st.val_times),
        "val_first_s": st.val_times[0] if st.val_times else None,
        "val_s": statistics.median(st.val_times[1:]) if len(st.val_times) > 1 else None,
        "device": device_name(run.device),
        "path": run.trainee.path.summary(),
        "path_fallback": [f.summary() for f in run.trainee.execution.fallbacks] or None,
        "hparams": dataclasses.asdict(cfg),
        "timescale": timescale(
            run.trainee.plan, run.total, cfg.optimizer.algorithm, run.trainee.opt.momentum
        ),
        **run.facts,
    }
    if st.status == "diverged":
        summary.update(diverged_at_step=st.diverged_at, last_finite=st.last_finite)
    return summary


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def startup_parts(run: Run, times: dict) -> dict:
    """startup_s in its parts: the first step, compilation, graph capture, warm-up, the eval
    graph's capture."""
    st, rate, t = run.stats, times["images_per_s"], run.trainee.execution
    capture_s = t.capture_s
    # the path it set out on: a compile that failed and gave way took its time too
    compiled = run.path.compile and st.first_step_s and rate
    compile_s = max(0.0, st.first_step_s - run.cfg.batch_size / rate) if compiled else 0.0
    return {
        "first_step_s": st.first_step_s,
        "compile_s": compile_s,
        "capture_s": capture_s,
        "warmup_s": max(0.0, (times["startup_s"] or 0.0) - compile_s - capture_s),
        "eval_capture_s": t.eval_capture_s,
    }


def completed_summary(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The summary of a run in `run_dir` that has already ended as `cfg` would end it, else None:
    completed with the same training settings, `epochs` and `trainer.max_steps`, or diverged with
    the same training settings (it would diverge again at the same step). Training it again has
    nothing to add, and writing its summary again would replace its timing: the caller leaves
    every file of it as it is. A summary.json that cannot be read, or says anything else, is None:
    the run is set up, and setup refuses what does not fit its records."""
    try:
        old = json.loads(files.read_regular(Path(run_dir) / "summary.json", MAX_SUMMARY_BYTES))
    except (OSError, ValueError):
        return None
    hp = old.get("hparams") if isinstance(old, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("trainer"), dict):
        return None
    if refused_changes(hp, dataclasses.asdict(cfg)):  # a training change is setup's to refuse
        return None
    if old.get("status") == "diverged":
        return old
    same_length = (hp.get("epochs"), hp["trainer"].get("max_steps")) == (
        cfg.epochs,
        cfg.trainer.max_steps,
    )
    return old if old.get("status") == "completed" and same_length else None


def ended(summary: dict) -> str:
    """How a run that completed_summary returned ended, in words."""
    if summary.get("status") == "diverged":
        return f"already diverged at step {summary.get('diverged_at_step')}"
    return f"already completed {summary.get('steps')} steps"


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, replaced atomically so a reader never sees half a file (and never written
    through a link planted at summary.json.tmp)."""
    text = json.dumps(summary, indent=2, default=str, ensure_ascii=False)
    files.write_atomic(Path(run_dir) / "summary.json", text.encode("utf-8"))
