"""The training loop, top to bottom in the order the algorithm happens.

For each optimizer step k at fractional epoch t = k / steps_per_epoch, as core.step_plan decides:
    η_t   = schedule(t)                       lr_t = lr·η_t
    g     = ∇ data loss (+ λ₂·θ when l2 > 0)
    θ     ← θ·(1 − d_t)                       decoupled decay, d_t by `optimizer.wd_scaling`
    θ     ← θ − Adam/SGD update(g, lr_t)
On CUDA the whole step is replayed as one CUDA graph by default (engine.step), the same body and update.
Losses stay on the device and are read in one transfer at logging points, so a GPU never waits for the host
inside the step. A run folder that holds a checkpoint continues from it, bit for bit.

`train()` is setup (engine.build) → loop → summary (engine.summary). `loop()` yields after every step, so one
process can also interleave the steps of several runs (runner.sweeps.pack); a single run just drains it.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch

from runner.config import RunConfig
from runner.core.bn_staleness import bn_statistics, measure_inside_recalibration
from runner.core.evaluation import evaluate, recalibrated_bn
from runner.engine import checkpoint
from runner.engine.build import setup, torch_settings_kept
from runner.engine.interrupts import StopRequests
from runner.engine.records import Diverged
from runner.engine.run import Run
from runner.engine.state import StepRecord
from runner.engine.summary import completed_summary, finish

# ---------------------------------------------------------------- the loop


def take_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[StepRecord, bool]:
    """Step k on batch (x, y), as the plan says (engine.step: eagerly or as the graph's replay); returns its record
    and whether it was a start-up step (compilation, autotuning, a graph's warm-up or capture), timed apart."""
    k = run.state.step
    loss, correct, grad_norm, startup = run.step(x, y, k, want_grad_norm=(k + 1) % run.cfg.trainer.log_every == 0)
    lr, d = run.plan.at(k)
    return StepRecord(k + 1, run.opt.lr_value(lr), d, loss, grad_norm, correct, len(y)), startup


def loop(run: Run, stop: StopRequests) -> Iterator[None]:
    """Train until `total` steps or a stop request, yielding after every optimizer step."""
    s, spe = run.state, run.steps_per_epoch
    run.stats.clock.restart()
    try:
        while s.step < run.total and stop.signum is None:
            epoch, start = divmod(s.step, spe)
            if start == 0:
                s.epoch_loss_sum, s.epoch_steps, s.epoch_correct, s.epoch_seen = 0.0, 0, 0, 0
            for x, y in run.train_loader.epoch(epoch, start_step=start):
                record, startup = take_step(run, x, y)  # forward, backward, L2, shrink, update
                s.step += 1
                run.records.add(record)
                run.stats.clock.add(len(y), startup)
                if run.bar is not None:
                    run.bar.update(1)
                if startup:  # timed on its own: the host waits for the device
                    lap(run, sync=True)
                if s.step % run.val_every == 0 or s.step == run.total:
                    flush(run)
                    validate(run)
                elif s.step % run.cfg.trainer.log_every == 0:
                    flush(run)
                yield
                if s.step >= run.total or stop.signum is not None:
                    break
            end_epoch(run)
        if stop.signum is not None and s.step < run.total:
            run.stats.status = "interrupted"
    except Diverged as e:
        run.stats.status, run.stats.diverged_at = "diverged", s.step
        run.log.error("diverged: %s", e)
        if run.cfg.trainer.on_diverge == "raise":
            raise


def lap(run: Run, sync: bool = False) -> None:
    """Close the clock's window (the caller has just waited for the device, or asks for it with `sync`)."""
    if sync and run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    st = run.stats
    w = st.clock.lap()
    if w is not None:
        st.epoch_seconds += w.seconds
        st.epoch_images += w.images
        if st.first_step_s is None:
            st.first_step_s = w.seconds


def flush(run: Run, stats: bool = True) -> None:
    """Write the pending step records (a host sync) and log or show the latest loss (`stats`: Records.flush)."""
    s, tr = run.state, run.cfg.trainer
    loss = run.records.flush(run.model, stats)
    lap(run)
    if loss is None:
        return
    lr = run.records.last_finite["lr"]
    if run.bar is not None:
        acc = run.headline.loss_acc(s.last_val)[1] if s.last_val else None
        shown = {run.headline.key("val_acc"): "-" if acc is None else f"{acc:.3f}"}  # the evaluation's own name
        run.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", **shown)
    elif s.step % tr.log_every == 0 or s.step == run.total:
        run.log.info(
            "step %d/%d epoch %.2f loss %.4f lr %.3g", s.step, run.total, s.step / run.steps_per_epoch, loss, lr
        )


def validate(run: Run) -> None:
    """Evaluate every split with BatchNorm's running statistics, then with recalibrated ones (trainer.bn_recalibrate);
    one device→host read; best.pt when the headline accuracy improves."""
    tick, s = time.perf_counter(), run.state
    values, bar = {}, validation_bar(run)
    for name, loader in run.evals.items():
        values[f"{name}_loss_running"], values[f"{name}_acc_running"] = evaluate(
            run.model, run.eval_forward, loader, bar and bar.update
        )
    recal = nullcontext() if run.recal_images is None else recalibrated_bn(run.model, run.recal_images, run.autocast)
    running = bn_statistics(run.model) if run.recal_images is not None else None
    with recal:
        if run.recal_images is not None:
            for name, loader in run.evals.items():
                values[f"{name}_loss_recal"], values[f"{name}_acc_recal"] = evaluate(
                    run.model, run.eval_forward, loader, bar and bar.update
                )
            values.update(staleness_values(run, running))
        if bar is not None:
            bar.close()
        values = dict(zip(values, torch.stack(list(values.values())).tolist()))  # the host waits for the device here
        rec = {"step": s.step, "epoch": s.step / run.steps_per_epoch, **run.headline.record(values)}
        best = s.best_acc_recal if run.headline.recalibrated else s.best_acc_running
        acc = run.headline.loss_acc(rec)[1]
        if best is None or acc > best:  # inside the recalibration: best.pt holds the statistics it was measured with
            save_best(run, acc)
    s.best_acc_running = max(rec["val_acc_running"], s.best_acc_running or -1.0)
    if "val_acc_recal" in rec:
        s.best_acc_recal = max(rec["val_acc_recal"], s.best_acc_recal or -1.0)
    s.last_val = rec
    run.recorder.write(rec)
    run.stats.val_times.append(time.perf_counter() - tick)
    run.stats.clock.restart()
    own = " ".join(f"{k} {rec[k]:.4f}" for k in ("val_acc_recal", "val_loss_recal", "val_acc_running",
                   "val_loss_running") if k in rec)  # fmt: skip
    run.log.info("step %d epoch %.2f %s (val_acc = %s)", s.step, rec["epoch"], own, run.headline.key("val_acc"))


def validation_bar(run: Run):
    """A second bar under the run's bar for the validation's batches (both evaluations), so a long validation shows
    that it moves; None without a run bar (plain log lines)."""
    if run.bar is None:
        return None
    from tqdm import tqdm

    n = sum(len(loader) for loader in run.evals.values()) * (1 if run.recal_images is None else 2)
    images = sum(len(loader.y) for loader in run.evals.values())
    return tqdm(total=n, desc=f"validation ({images} images)", leave=False, dynamic_ncols=True, file=sys.stderr)


def staleness_values(run: Run, running) -> dict:
    """BatchNorm staleness at this validation (core.bn_staleness), from inside the recalibration."""
    val = lambda: evaluate(run.model, run.eval_forward, run.evals["val"])  # noqa: E731
    return measure_inside_recalibration(run.model, running, run.recal_aug_images, run.autocast, val)


def end_epoch(run: Run) -> None:
    """Flush, record the epoch's training time, and checkpoint at the epoch's end (or where the run stops)."""
    s, st = run.state, run.stats
    flush(run, stats=s.step % run.steps_per_epoch == 0)  # a stop mid-epoch: the step's record as a straight run has it
    if s.step % run.steps_per_epoch == 0 and st.epoch_images:
        run.recorder.write(
            {
                "step": s.step,
                "epoch": s.step / run.steps_per_epoch,
                "epoch_train_s": st.epoch_seconds,
                "epoch_images": st.epoch_images,
                **({"train_acc": s.epoch_correct / s.epoch_seen} if s.epoch_seen else {}),
            }
        )
        st.epoch_seconds, st.epoch_images = 0.0, 0
    run.recorder.flush(durable=True)  # the records up to this step are on disk before the checkpoint says they exist
    save_checkpoint(run)
    st.clock.restart()


def save_best(run: Run, acc: float) -> None:
    """best.pt: the weights (with the BatchNorm statistics) of the best headline accuracy so far."""
    checkpoint.save_best(
        run.run_dir / "checkpoints",
        {
            "model": run.model.state_dict(),
            "step": run.state.step,
            "val_acc": acc,
            "val_metric": run.headline.name,
            "config": dataclasses.asdict(run.cfg),
            **run.inference,  # classes, normalize, mean, std, image_size
        },
    )


def save_checkpoint(run: Run) -> None:
    checkpoint.save(
        {
            "step": run.state.step,
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "state": dataclasses.asdict(run.state),
            "rng": checkpoint.rng_state(),
            "config": dataclasses.asdict(run.cfg),
            "equilibrium": run.records.tracker_state(),
        },
        run.run_dir / "checkpoints",
    )


# ---------------------------------------------------------------- the run as a whole


@torch_settings_kept()  # trainer.deterministic stays this run's
def train(cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0, on_start=None) -> dict:
    """Train one configuration into `run_dir` (continuing from its checkpoint if it has one) and return the
    summary, also written to summary.json. `job_num` is the job's index in a sweep; `on_start()` is called once the
    run is set up (the CLI then names the folder: a run refused during setup leaves none to name)."""
    done = completed_summary(cfg, Path(run_dir))
    if done is not None:  # its summary (and timing) stays as it is
        logging.getLogger("runner").info("%s already completed %d steps: nothing to train", run_dir, done["steps"])
        return done
    run = setup(cfg, Path(run_dir), meta, job_num)
    if on_start is not None:
        on_start()
    show_bar = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    stop = StopRequests()
    try:
        with stop, ProgressBar(run) if show_bar else nullcontext():
            for _ in loop(run, stop):
                pass
    except KeyboardInterrupt as e:
        run.stats.status = "interrupted"
        run.log.warning("interrupted at step %d: %s", run.state.step, e)
    except BaseException:
        run.stats.status = "failed"  # a bug or a fatal error: the summary still says where the run stopped
        raise
    finally:
        with StopRequests() as late:  # a signal while the summary is written waits for it
            summary = finish(run)
    stop.pass_on()
    late.pass_on()
    return summary


class ProgressBar:
    """A tqdm bar for the run, with log lines routed through tqdm.write so the two never garble each other."""

    def __init__(self, run: Run):
        self.run = run

    def __enter__(self):
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.run.bar = tqdm(total=self.run.total, initial=self.run.state.step, dynamic_ncols=True, file=sys.stderr)
        self.redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self.redirect.__exit__(*exc)
        self.run.bar.close()  # left on screen: the last loss, lr and accuracy stay visible
        self.run.bar = None
        return False
