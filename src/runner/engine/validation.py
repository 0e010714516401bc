"""A validation: evaluate → record → best.pt.

Each evaluated set (`val`, and `train_eval` with trainer.train_eval=true) is evaluated in eval
mode with BatchNorm's running statistics, then, with trainer.bn_recalibrate ≠ 0, again with
statistics recomputed on training images (core.evaluation: the two evaluations and their names,
core.headline: which one is the headline). The probes add their figures inside the
recalibration (runner.probes); everything is read in one device→host transfer, written as one
record, and best.pt is saved when the headline accuracy improves.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager

from runner.core.evaluation import bn_statistics, evaluate, recalibrated_bn
from runner.engine import checkpoint
from runner.engine.progress import Progress
from runner.engine.readback import read
from runner.engine.run import Run
from runner.probes import ValidationPoint


def validation(run: Run, progress: Progress) -> None:
    tick, s, t = time.perf_counter(), run.state, run.trainee
    with progress.validation_bar(run) as bar:
        values = evaluations(run, "_running", bar)
        running = bn_statistics(t.model)
        with recalibration(run) as recalibrated:
            if recalibrated is not None:
                values.update(evaluations(run, "_recal", bar))
            point = ValidationPoint(s.step, running, recalibrated, lambda: evaluate_val(run))
            for probe in run.probes:
                values.update(probe.at_validation(point))
            (values,) = read(values)  # the host waits for the device here
            rec = {
                "step": s.step,
                "epoch": s.step / run.steps_per_epoch,
                **run.headline.record(values),
            }
            best = s.best_acc_recal if run.headline.recalibrated else s.best_acc_running
            acc = run.headline.loss_acc(rec)[1]
            if best is None or acc > best:  # inside the recalibration: best.pt holds its statistics
                save_best(run, acc)
    s.best_acc_running = max(rec["val_acc_running"], s.best_acc_running or -1.0)
    if "val_acc_recal" in rec:
        s.best_acc_recal = max(rec["val_acc_recal"], s.best_acc_recal or -1.0)
    s.last_val = rec
    run.out.recorder.write(rec)
    run.stats.val_times.append(time.perf_counter() - tick)
    run.stats.clock.restart()
    progress.validation(rec)


def evaluations(run: Run, suffix: str, bar) -> dict:
    """{name_loss<suffix>, name_acc<suffix>} of every evaluated set, as device tensors."""
    t, out = run.trainee, {}
    for name, loader in run.data.evals.items():
        loss, acc = evaluate(t.model, t.eval_forward, loader, bar and bar.update)
        out[f"{name}_loss{suffix}"], out[f"{name}_acc{suffix}"] = loss, acc
    return out


def evaluate_val(run: Run):
    """The validation set evaluated with the statistics in place now (a probe's own reference)."""
    return evaluate(run.trainee.model, run.trainee.eval_forward, run.data.evals.val)


@contextmanager
def recalibration(run: Run):
    """Inside: BatchNorm holds statistics recomputed on the run's recalibration images, and the
    block gets a copy of them; None and nothing changed when recalibration is off."""
    images = run.data.recal_images
    if images is None:
        yield None
        return
    with recalibrated_bn(run.trainee.model, images, run.trainee.autocast):
        yield bn_statistics(run.trainee.model)


def save_best(run: Run, acc: float) -> None:
    """best.pt: the weights (with the BatchNorm statistics) of the best headline accuracy so far."""
    checkpoint.save_best(
        run.out.run_dir / "checkpoints",
        {
            "model": run.trainee.model.state_dict(),
            "step": run.state.step,
            "val_acc": acc,
            "val_metric": run.headline.name,
            "config": dataclasses.asdict(run.cfg),
            **dataclasses.asdict(run.data.inference),
        },
    )
