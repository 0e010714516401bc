"""The training loop, top to bottom in the order the algorithm happens.

For each optimizer step k at fractional epoch t = k / steps_per_epoch:
    η_t   = schedule(t)                       lr_t = lr·η_t
    g     = ∇ data loss (+ λ₂·θ when l2 > 0)
    θ     ← θ·(1 − d_t)                       decoupled decay, d_t by `optimizer.wd_scaling`
    θ     ← θ − Adam/SGD update(g, lr_t)
On CUDA the whole step is replayed as one CUDA graph by default (runner.engine.step), the same update bit for bit.
Losses stay on the device and are read in one transfer at logging points, so a GPU never waits for the host
inside the step. A run folder that holds a checkpoint continues from it, bit for bit.

`train()` is setup (runner.engine.build) → loop → summary. `loop()` yields after every step, so one process can also
interleave the steps of several runs (runner.sweeps.pack); a single run just drains it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from runner.analysis.oscillation import oscillation_block
from runner.config import RunConfig
from runner.core.evaluation import evaluate, recalibrated_bn
from runner.core.update_rule import Optimizer
from runner.engine import checkpoint
from runner.engine.build import Diverged, Run, StepRecord, setup
from runner.engine.interrupts import StopRequests
from runner.engine.records import read_metrics
from runner.engine.timing import split_time

# ---------------------------------------------------------------- the loop


def train_step(model, opt: Optimizer, x, y, t: float, eta: float, autocast, want_grad_norm: bool = False):
    """One optimizer step; returns (loss, d_t, ‖g‖ or None) with the tensors left on the device."""
    with autocast:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    grad_norm = None
    if want_grad_norm:  # data-loss gradient, before L2 joins it
        grad_norm = torch.stack(torch._foreach_norm([p.grad for p in opt.params if p.grad is not None])).norm()
    d_t = opt.step(t, eta)
    opt.zero_grad()
    return loss.detach().float(), d_t, grad_norm


def take_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[StepRecord, bool]:
    """Step k on batch (x, y), eagerly or as the graph's replay; returns its record and whether it was a start-up
    step (compilation, autotuning, a graph's warm-up or capture), which the clock times apart."""
    k = run.state.step
    want_grad_norm = (k + 1) % run.cfg.trainer.log_every == 0
    if run.graphed is None:
        t = k / run.steps_per_epoch
        eta = run.schedule(t)
        loss, d, grad_norm = train_step(run.forward, run.opt, x, y, t, eta, run.autocast, want_grad_norm)
        lr, startup = run.opt.lr_value(run.cfg.lr * eta), run.first_step_s is None
    else:  # the same step as one CUDA graph; ‖g‖ is a buffer it rewrites, read at log points
        loss, grad_norm, startup = run.graphed(x, y, k)
        lr, d, grad_norm = run.opt.lr_value(run.lrs[k]), run.decays[k], grad_norm if want_grad_norm else None
    return StepRecord(k + 1, lr, d, loss, grad_norm), startup


def loop(run: Run, stop: StopRequests) -> Iterator[None]:
    """Train until `total` steps or a stop request, yielding after every optimizer step."""
    s, spe = run.state, run.steps_per_epoch
    run.clock.restart()
    try:
        while s.step < run.total and stop.signum is None:
            epoch, start = divmod(s.step, spe)
            if start == 0:
                s.epoch_loss_sum, s.epoch_steps = 0.0, 0
            for x, y in run.train_loader.epoch(epoch, start_step=start):
                record, startup = take_step(run, x, y)  # forward, backward, L2, shrink, update
                s.step += 1
                run.records.add(record)
                run.clock.add(len(y), startup)
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
            run.status = "interrupted"
    except Diverged as e:
        run.status, run.diverged_at = "diverged", s.step
        run.log.error("diverged: %s", e)
        if run.cfg.trainer.on_diverge == "raise":
            raise


def lap(run: Run, sync: bool = False) -> None:
    """Close the clock's window (the caller has just waited for the device, or asks for it with `sync`)."""
    if sync and run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    w = run.clock.lap()
    if w is not None:
        run.epoch_time[0] += w.seconds
        run.epoch_time[1] += w.images
        if run.first_step_s is None:
            run.first_step_s = w.seconds


def flush(run: Run) -> None:
    """Write the pending step records (a host sync) and log or show the latest loss."""
    s, tr = run.state, run.cfg.trainer
    loss = run.records.flush(run.model)
    lap(run)
    if loss is None:
        return
    lr = run.records.last_finite["lr"]
    if run.bar is not None:
        acc = headline(run, s.last_val)[1] if s.last_val else None
        run.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", acc="-" if acc is None else f"{acc:.3f}")
    elif s.step % tr.log_every == 0 or s.step == run.total:
        run.log.info(
            "step %d/%d epoch %.2f loss %.4f lr %.3g", s.step, run.total, s.step / run.steps_per_epoch, loss, lr
        )


def headline(run: Run, rec: dict) -> tuple[float, float]:
    """(loss, accuracy) of a validation record as summary.json reports them: recalibrated when that is on."""
    if run.recal_images is not None and "val_acc_recal" in rec:
        return rec["val_loss_recal"], rec["val_acc_recal"]
    return rec["val_loss"], rec["val_acc"]


def validate(run: Run) -> None:
    """Evaluate every split with BatchNorm's running statistics, then with recalibrated ones (trainer.bn_recalibrate);
    one device→host read; best.pt when the headline accuracy improves."""
    tick, s = time.perf_counter(), run.state
    values = {}
    for name, loader in run.evals.items():
        values[f"{name}_loss"], values[f"{name}_acc"] = evaluate(run.model, run.eval_forward, loader)
    recal = nullcontext() if run.recal_images is None else recalibrated_bn(run.model, run.recal_images, run.autocast)
    with recal:
        if run.recal_images is not None:
            for name, loader in run.evals.items():
                values[f"{name}_loss_recal"], values[f"{name}_acc_recal"] = evaluate(
                    run.model, run.eval_forward, loader
                )
        rec = {
            "step": s.step,
            "epoch": s.step / run.steps_per_epoch,
            **dict(zip(values, torch.stack(list(values.values())).tolist())),
        }
        improved = run.recal_images is None and (s.best_acc_running is None or rec["val_acc"] > s.best_acc_running)
        improved |= run.recal_images is not None and (
            s.best_acc_recal is None or rec["val_acc_recal"] > s.best_acc_recal
        )
        if improved:  # inside the recalibration: best.pt holds the statistics its accuracy was measured with
            checkpoint.save_best(
                run.run_dir / "checkpoints",
                {
                    "model": run.model.state_dict(),
                    "step": s.step,
                    "val_acc": headline(run, rec)[1],
                    "val_metric": "recalibrated" if run.recal_images is not None else "running",
                    "config": dataclasses.asdict(run.cfg),
                },
            )
    s.best_acc_running = max(rec["val_acc"], s.best_acc_running or -1.0)
    if "val_acc_recal" in rec:
        s.best_acc_recal = max(rec["val_acc_recal"], s.best_acc_recal or -1.0)
    s.last_val = rec
    run.recorder.write(rec)
    run.val_times.append(time.perf_counter() - tick)
    run.clock.restart()
    loss, acc = headline(run, rec)
    more = (
        f" (running statistics: loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f})" if "val_acc_recal" in rec else ""
    )
    run.log.info("step %d epoch %.2f val_loss %.4f val_acc %.4f%s", s.step, rec["epoch"], loss, acc, more)


def end_epoch(run: Run) -> None:
    """Flush, record the epoch's training time, and checkpoint at the epoch's end (or where the run stops)."""
    flush(run)
    s = run.state
    if s.step % run.steps_per_epoch == 0 and run.epoch_time[1]:
        run.recorder.write(
            {
                "step": s.step,
                "epoch": s.step / run.steps_per_epoch,
                "epoch_train_s": run.epoch_time[0],
                "epoch_images": run.epoch_time[1],
            }
        )
        run.epoch_time = [0.0, 0]
    save_checkpoint(run)
    run.recorder.flush()
    run.clock.restart()


def save_checkpoint(run: Run) -> None:
    checkpoint.save(
        {
            "step": run.state.step,
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "state": dataclasses.asdict(run.state),
            "rng": checkpoint.rng_state(),
            "config": dataclasses.asdict(run.cfg),
        },
        run.run_dir / "checkpoints",
    )


# ---------------------------------------------------------------- the run as a whole


def train(cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0) -> dict:
    """Train one configuration into `run_dir` (continuing from its checkpoint if it has one) and return the
    summary, also written to summary.json. `job_num` is the job's index in a sweep."""
    run = setup(cfg, Path(run_dir), meta, job_num)
    show_bar = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    stop = StopRequests()
    try:
        with stop, ProgressBar(run) if show_bar else nullcontext():
            for _ in loop(run, stop):
                pass
    except KeyboardInterrupt as e:
        run.status = "interrupted"
        run.log.warning("interrupted at step %d: %s", run.state.step, e)
    except BaseException:
        run.status = "failed"  # a bug or a fatal error: the summary still says where the run stopped
        raise
    finally:
        summary = finish(run)
    stop.pass_on()
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


def finish(run: Run) -> dict:
    """Write summary.json and the HParams end, close the records; returns the summary."""
    summary = summarize(run)
    run.recorder.close()
    summary["oscillation"] = oscillation_block(read_metrics(run.recorder.path), run.cfg.epochs)
    run.recorder.finish(summary)
    write_summary(run.run_dir, summary)
    best = summary["best_val_acc"]
    run.log.info(
        "%s after %d steps: best val acc %s (%s), %.1f s",
        summary["status"],
        run.state.step,
        "-" if best is None else f"{best:.4f}",
        summary["val_metric"],
        summary["wall_time_s"],
    )
    return summary


def summarize(run: Run) -> dict:
    """summary.json: the run's results, its time split honestly (runner.engine.timing), and what ran."""
    s, cfg = run.state, run.cfg
    recal = run.recal_images is not None
    last = s.last_val or {}
    times = split_time(run.clock.windows)
    rate = times["images_per_s"]
    capture_s = run.graphed.capture_s if run.graphed is not None else 0.0
    compile_s = (
        max(0.0, run.first_step_s - cfg.batch_size / rate) if run.path["compile"] and run.first_step_s and rate else 0.0
    )
    startup = {
        "first_step_s": run.first_step_s,
        "compile_s": compile_s,
        "capture_s": capture_s,
        "warmup_s": max(0.0, (times["startup_s"] or 0.0) - compile_s - capture_s),
        "eval_capture_s": run.eval_forward.capture_s,
    }
    summary = {
        "status": run.status,
        "n_params": run.info["n_params"],
        "steps": s.step,
        "epochs": s.step / run.steps_per_epoch,
        "val_metric": "recalibrated" if recal else "running",
        "best_val_acc": s.best_acc_recal if recal else s.best_acc_running,
        "final_val_acc": last.get("val_acc_recal" if recal else "val_acc"),
        "final_val_loss": last.get("val_loss_recal" if recal else "val_loss"),
        "best_val_acc_running": s.best_acc_running,
        "final_val_acc_running": last.get("val_acc"),
        "final_val_loss_running": last.get("val_loss"),
        "best_val_acc_recal": s.best_acc_recal,
        "final_val_acc_recal": last.get("val_acc_recal"),
        "final_val_loss_recal": last.get("val_loss_recal"),
        "final_train_loss": s.epoch_loss_sum / s.epoch_steps if s.epoch_steps else None,
        "wall_time_s": time.time() - run.t_start,
        **times,
        "startup": startup,
        "first_step_s": run.first_step_s,
        "val_time_s": sum(run.val_times),
        "val_first_s": run.val_times[0] if run.val_times else None,
        "val_s": statistics.median(run.val_times[1:]) if len(run.val_times) > 1 else None,
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else run.device.type,
        "hparams": dataclasses.asdict(cfg),
        **run.info,
    }
    if run.status == "diverged":
        summary.update(diverged_at_step=run.diverged_at, last_finite=run.records.last_finite)
    return summary


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, replaced atomically so a reader never sees half a file."""
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, run_dir / "summary.json")
