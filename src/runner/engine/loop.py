"""The training loop, top to bottom in the order the algorithm happens.

For each optimizer step k at fractional epoch t = k / steps_per_epoch (core.step_plan decides):
    η_t   = schedule(t)                       lr_t = lr·η_t
    g     = ∇ data loss (+ λ₂·θ when l2 > 0)
    θ     ← θ·(1 − d_t)                       decoupled decay, d_t by `optimizer.wd_scaling`
    θ     ← θ − Adam/SGD update(g, lr_t)
The step itself is engine.step (eager, or replayed as one CUDA graph on CUDA by default). Losses
stay on the device and are read in one transfer at log points, so a GPU never waits for the host
inside the step. At a log point the loop writes the steps' records, the norms and the probes'
figures (runner.probes); at a validation it evaluates (engine.validation); at an epoch's end it
checkpoints. `loop()` yields after every step, so one process can interleave the steps of several
runs (runner.sweeps.pack); engine.train drains it for a single run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import torch

from runner.engine import checkpoint
from runner.engine.interrupts import StopRequests
from runner.engine.progress import Progress
from runner.engine.readback import read
from runner.engine.run import Run
from runner.engine.state import StepRecord
from runner.engine.validation import validation
from runner.probes import LogPoint, StepPoint


class Diverged(RuntimeError):
    """The training loss left the finite range or rose trainer.diverge_factor× above its start."""


def loop(run: Run, stop: StopRequests, progress: Progress | None = None) -> Iterator[None]:
    """Train until `run.total` steps or a stop request, yielding after every optimizer step."""
    s, spe, progress = run.state, run.steps_per_epoch, progress or Progress.quiet(run)
    run.stats.clock.restart()
    try:
        while s.step < run.total and stop.signum is None:
            epoch, start = divmod(s.step, spe)
            if start == 0:
                s.new_epoch()
            for x, y in run.data.train.epoch(epoch, start_step=start):
                out = run.trainee.step(x, y, s.step, log_point=run.log_point_due(s.step + 1))
                note_step(run, out, len(y), progress)
                observe_step(run)
                if s.step % run.val_every == 0 or s.step == run.total:
                    log_point(run, progress)
                    validation(run, progress)
                elif run.log_point_due(s.step):
                    log_point(run, progress)
                yield
                if s.step >= run.total or stop.signum is not None:
                    break
            end_epoch(run, progress)
        if stop.signum is not None and s.step < run.total:
            run.stats.status = "interrupted"
    except Diverged as e:
        run.stats.status, run.stats.diverged_at = "diverged", s.step
        run.out.log.error("diverged: %s", e)
        if run.cfg.trainer.on_diverge == "raise":
            raise


def note_step(run: Run, out, images: int, progress: Progress) -> None:
    """The step's bookkeeping: its record waits on the device for the next log point; its images
    count for the clock; a start-up step (compilation, capture) is timed on its own."""
    s, st = run.state, run.stats
    lr, d = run.trainee.plan.at(s.step)
    lr = run.trainee.opt.lr_value(lr)
    st.pending.append(StepRecord(s.step + 1, lr, d, out.loss, out.correct, images, out.grad_norms))
    s.step += 1
    st.clock.add(images, out.startup)
    progress.step()
    if out.startup:  # the host waits for the device, so that the window holds this step alone
        lap(run, sync=True)


def observe_step(run: Run) -> None:
    """The probes that watch every step (runner.probes: after_step) see it now, outside the step:
    device work only, so nothing here waits for the device."""
    if run.probes:
        s = run.state.step
        point = StepPoint(s, run.log_point_due(s), run.log_point_due(s + 1))
        for probe in run.probes:
            probe.after_step(point)


def lap(run: Run, sync: bool = False) -> None:
    """Close the clock's window (the caller has just waited for the device, or asks to)."""
    if sync and run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    st = run.stats
    w = st.clock.lap()
    if w is not None:
        st.epoch_seconds += w.seconds
        st.epoch_images += w.images
        if st.first_step_s is None:
            st.first_step_s = w.seconds


def log_point(run: Run, progress: Progress, stats: bool = True) -> None:
    """Write the pending step records, read in one transfer with the log point's norms and the
    probes' figures (`stats`; not at a step where a signal stopped the run mid-epoch, which a
    straight run records without them). Diverged on a bad loss."""
    pending, run.stats.pending = run.stats.pending, []
    if not pending:
        return
    opt = run.trainee.opt
    point = LogPoint(pending[-1].step, opt.weight_norms(), pending[-1].grad_norms)
    steps = {
        "loss": torch.stack([r.loss for r in pending]),
        "correct": torch.stack([r.correct for r in pending]),
    }
    base = weight_stats(opt, point) if stats else {}
    probed = [(p, p.at_log(point)) for p in run.probes] if stats else []
    steps, extra, *figures = read(steps, base, *[t for _, t in probed])  # the host waits here
    lap(run)
    for (probe, _), values in zip(probed, figures):
        extra.update(probe.read_log(values, point))
    write_steps(run, pending, steps["loss"], steps["correct"], extra)
    last = run.stats.last_finite
    progress.log_point(steps["loss"][-1], last["lr"] if last else None)


def weight_stats(opt, point: LogPoint) -> dict[str, torch.Tensor]:
    """weight_norm ‖θ‖ and l2_penalty λ₂/2·‖θ‖² of the regularized weights, grad_norm ‖g‖ of the
    data gradient of the log point's step (when it computed one)."""
    sq = point.weight_norms.pow(2).sum()
    out = {"weight_norm": sq.sqrt(), "l2_penalty": 0.5 * opt.l2 * sq}
    if point.grad_norms is not None:
        out["grad_norm"] = point.grad_norms.norm()
    return out


def write_steps(run: Run, pending: list, losses: list, corrects: list, extra: dict) -> None:
    """One record per step (the last one with the log point's figures); the divergence check;
    the epoch's sums of loss and correct images."""
    s, st, factor = run.state, run.stats, run.cfg.trainer.diverge_factor
    for r, loss, correct in zip(pending, losses, corrects):
        rec = {
            "step": r.step,
            "epoch": r.step / run.steps_per_epoch,
            "train_loss": loss,
            "lr": r.lr,
            "decay": r.decay,
            **(extra if r is pending[-1] else {}),
        }
        if s.initial_loss is None and math.isfinite(loss):
            s.initial_loss = loss
        run.out.recorder.write(rec)
        if not math.isfinite(loss) or (
            s.initial_loss is not None and loss > factor * s.initial_loss
        ):
            initial = "none finite" if s.initial_loss is None else f"{s.initial_loss:.4g}"
            raise Diverged(
                f"train_loss={loss} at step {r.step} (initial {initial}, "
                f"trainer.diverge_factor={factor:g})"
            )
        st.last_finite = rec
        s.epoch_loss_sum += loss
        s.epoch_steps += 1
        s.epoch_correct, s.epoch_seen = s.epoch_correct + int(correct), s.epoch_seen + r.images
    run.out.recorder.histograms(run.trainee.model, pending[-1].step)


def end_epoch(run: Run, progress: Progress) -> None:
    """Record the epoch's training time and accuracy, and checkpoint (at the epoch's end, or
    where the run stops)."""
    s, st = run.state, run.stats
    whole = s.step % run.steps_per_epoch == 0
    log_point(run, progress, stats=whole)  # a stop mid-epoch: the record a straight run has
    if whole and st.epoch_images:
        rec = {
            "step": s.step,
            "epoch": s.step / run.steps_per_epoch,
            "epoch_train_s": st.epoch_seconds,
            "epoch_images": st.epoch_images,
        }
        if s.epoch_seen:
            rec["train_acc"] = s.epoch_correct / s.epoch_seen
        run.out.recorder.write(rec)
        progress.epoch_end(rec)
        st.epoch_seconds, st.epoch_images = 0.0, 0
    run.out.recorder.sync(durable=True)  # on disk before a checkpoint says they exist
    save_checkpoint(run)
    st.clock.restart()


def save_checkpoint(run: Run) -> None:
    t = run.trainee
    checkpoint.save(
        {
            "step": run.state.step,
            "model": t.model.state_dict(),
            "optimizer": t.opt.state_dict(),
            "state": dataclasses.asdict(run.state),
            "rng": checkpoint.rng_state(),
            "config": dataclasses.asdict(run.cfg),
            "probes": {p.name: p.state_dict() for p in run.probes},
            # a CPU run continued on another thread count is not bit for bit (engine.resume)
            "torch_threads": torch.get_num_threads(),
        },
        run.out.run_dir / "checkpoints",
    )
