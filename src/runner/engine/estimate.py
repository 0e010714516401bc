"""How long a run on a CPU will take, said before it starts: the run's model is timed on a copy of
it, just now, on one batch of its training shape (forward and backward) and one of its evaluation
(forward), and those rates are scaled to the steps and validations the run has left. A CPU is slow
enough that a default run takes hours; the line says so and how to get a quick look instead.

The timed copy shares nothing with the run: the weights, BatchNorm buffers and optimizer the run
trains are untouched, and no random number is drawn."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from runner.engine.run import Run

LONG_S = 15 * 60  # past this, the line says how to get a quick look
QUICK_LOOK = (
    "for a quick look: python -m runner experiment=cpu_quick (real images, a few minutes) or "
    "debug=smoke (synthetic images, 1 minute)"
)
TIMED_IMAGES = 32  # per timed batch (at most the run's batch size): ~0.1-1 s a pass on 2 cores


def line(run: Run) -> str:
    """The run's estimate as one line, e.g. `about 3.1 h on this CPU (...); for a quick look:
    ...`."""
    train_s, eval_s = measure(run)
    seconds = run_seconds(run, train_s, eval_s)
    validations = validations_left(run.state.step, run.total, run.val_every)
    steps = run.total - run.state.step
    out = (
        f"about {duration(seconds)} on this CPU ({steps} steps of {run.cfg.batch_size} images, "
        f"{validations} validations; this model timed just now: {train_s * 1e3:.2f} ms a "
        f"training image)"
    )
    return out + (f"; {QUICK_LOOK}" if seconds > LONG_S else "")


@torch.no_grad()
def _forward_s(model, x: torch.Tensor, autocast) -> float:
    tick = time.perf_counter()
    with autocast:
        model(x)
    return time.perf_counter() - tick


def measure(run: Run) -> tuple[float, float]:
    """(seconds per training image, seconds per evaluated image) of the run's model here: a copy
    trained on a batch of zeros (the costs of dense convolutions do not depend on the values),
    the faster of two passes after an untimed one that sets up kernels and buffers (a pass that
    other processes slowed says less about this CPU), then evaluated alike."""
    n = min(run.cfg.batch_size, TIMED_IMAGES)
    model = copy.deepcopy(run.trainee.model).train()
    x = torch.zeros(n, *run.data.inference.image_size, device=run.device)
    y = torch.zeros(n, dtype=torch.long, device=run.device)
    autocast, times = run.trainee.autocast, []
    for _ in range(3):
        tick = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        times.append(time.perf_counter() - tick)
    model.eval()
    forward = [_forward_s(model, x, autocast) for _ in range(3)]
    return min(times[1:]) / n, min(forward[1:]) / n


def validations_left(step: int, total: int, val_every: int) -> int:
    """The validations at steps (step, total]: every val_every steps and at the last."""
    return total // val_every - step // val_every + (1 if total % val_every else 0)


def run_seconds(run: Run, train_s: float, eval_s: float) -> float:
    """The run's remaining steps at `train_s` a training image, and its validations at `eval_s` an
    evaluated image: each evaluated set once with running statistics and, with recalibration,
    once more after a forward pass over the recalibration images."""
    steps = run.total - run.state.step
    evaluated = sum(len(loader.y) for _, loader in run.data.evals.items())
    recal = run.data.recal_images
    per_validation = evaluated if recal is None else 2 * evaluated + len(recal)
    validations = validations_left(run.state.step, run.total, run.val_every)
    return steps * run.cfg.batch_size * train_s + validations * per_validation * eval_s


def duration(seconds: float) -> str:
    """`40 s`, `12 min`, `3.1 h`: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
