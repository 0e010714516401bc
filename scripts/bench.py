#!/usr/bin/env python
"""The loop-overhead benchmark: the training loop that ships (runner.engine.loop) against a
tutorial-style PyTorch loop and against its own bare step, in one process.

  input pipeline  the Run's training DeviceLoader (run.data.train) against a torchvision-style
                  DataLoader: batches alone.
  loop rates      windows of next() on engine.loop.loop(run, stop), for Runs that engine.build.setup
                  built: the shipped loop with all its bookkeeping (step records, the one-transfer
                  read at every log point with its divergence check, Recorder.write, the probes'
                  figures and per-stage weight norms), one Run per execution path (--paths), no
                  validation or epoch end inside a window. Interleaved with them (A B C A B C ...):
                  the tutorial loop, and each Run's bare step (its engine.step on one fixed batch,
                  nothing else); loop overhead = 1 − loop rate / bare-step rate, per pair.

The tutorial reference: a torchvision.datasets.CIFAR10-style Dataset (uint8 HWC arrays, one PIL
image per item), RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
DataLoader(shuffle=True, num_workers=N, pin_memory on cuda), `.to(device)` per batch and
`loss.item()` per step, training an eager Run's model and optimizer (same initial weights, update,
autocast and memory layout): only the input pipeline and the loop differ. Every rate is the median
of timed windows after warm-up, CUDA synchronised at window ends (scripts/timing_harness.py). The
other measurements have scripts of their own: bench_evaluation.py, bench_e2e.py, bench_ops.py,
bench_pack.py. Runs without hydra/omegaconf and without the package installed.

    python scripts/bench.py                # CPU: ResNet20v1, batch 32, eager
    python scripts/bench.py --device cuda  # ResNet56v2, batch 128 and 64, three execution paths
    python scripts/bench.py --device cpu --model resnet56v2 --batch-sizes 128 --window-steps 10
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

# on a bare machine neither runner nor these scripts are installed: both come from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts.*
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runner

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from runner.core.loader import DeviceLoader
from runner.data import load_splits, normalization
from runner.engine.interrupts import StopRequests
from runner.engine.loop import log_point, loop
from runner.engine.progress import Progress
from runner.engine.records import read_metrics
from runner.engine.run import Run
from scripts.bench_common import (
    EPOCH_IMAGES,
    PATHS,
    Bench,
    close,
    execution,
    flat_header,
    parser,
    paths_arg,
    session,
)
from scripts.timing_harness import Timed, measure

# per device, on top of bench_common.COMMON; each but pipeline_batches can be set by its flag
OWN = {
    "cpu": dict(windows=5, window_steps=50, warmup_steps=3, log_every=50, budget_s=30.0),
    "cuda": dict(windows=5, window_steps=50, warmup_steps=15, log_every=50, budget_s=None),
    "quick": dict(windows=2, window_steps=2, warmup_steps=1, log_every=2, budget_s=None),
}
# the reference DataLoader's workers; batches per window of the input-pipeline measurement
for own, workers, batches in zip(OWN.values(), (2, min(8, os.cpu_count() or 1), 1), (40, 100, 4)):
    own.update(workers=workers, pipeline_batches=batches)


class LoopSteps(Timed):
    """next() on runner.engine.loop.loop(run, stop): one optimizer step of the loop that ships,
    bookkeeping included."""

    def __init__(self, run: Run):
        self.run = run
        self.steps = loop(run, StopRequests())  # never entered: no signal handlers

    def step(self) -> int:
        try:
            next(self.steps)
        except StopIteration:
            raise RuntimeError(
                f"the loop stopped at step {self.run.state.step} ({self.run.stats.status})"
            ) from None
        return self.run.cfg.batch_size  # data.drop_last: every batch is full

    def before_window(self, n: int) -> None:
        """Untimed steps until the next n hold no epoch end (its checkpoint is not the loop's rate)
        and, when n is a multiple of trainer.log_every, until the window ends exactly at a log
        point."""
        run = self.run
        spe, every = run.steps_per_epoch, run.cfg.trainer.log_every
        if n > spe:
            raise SystemExit(
                f"bench: windows of {n} steps do not fit in an epoch of {spe} steps: lower "
                "--window-steps or raise --n-train"
            )
        for _ in range(2 * (spe + every) + n):
            s = run.state.step
            # the call that makes step j runs end_epoch if j-1 is one
            next_epoch_end = max(spe, -(-s // spe) * spe)
            aligned = n % every != 0 or s % every == 0
            if next_epoch_end > s + n - 1 and aligned:
                return
            self.step()
        raise SystemExit(
            f"bench: found no window of {n} steps between epoch ends and log points (log_every "
            f"{every})"
        )


class BareStep(Timed):
    """The Run's own step (trainee.step, as the loop calls it, off a log point) on one fixed batch
    and nothing else: no loader, no records, no log points, no probes. It trains the Run's model
    but leaves the loop's state alone."""

    def __init__(self, run: Run):
        self.run = run
        self.x, self.y = next(run.data.train.epoch(0))

    def step(self) -> int:
        # a graphed step replays the graph the loop's warm-up recorded (same shape and layout)
        self.run.trainee.step(self.x, self.y, self.run.state.step, log_point=False)
        return len(self.y)

    def after_window(self) -> None:
        # a graphed step advanced its own step counter: give it back the loop's
        graphed = self.run.trainee.graphed
        if graphed is not None:
            graphed.counter.fill_(self.run.state.step)


class TutorialSteps(Timed):
    """The tutorial training loop body, one batch per call, on an eager Run's model and optimizer:
    zero_grad, forward, backward, the update with the Run's lr_t and d_t of step k, loss.item()."""

    def __init__(self, run: Run, loader):
        self.run, self.loader, self.batches = run, loader, forever(loader)
        self.k, self.running_loss = 0, 0.0

    def step(self) -> int:
        inputs, targets = next(self.batches)
        self.train(inputs, targets)
        return len(targets)

    def train(self, inputs, targets) -> None:
        t, device = self.run.trainee, self.run.device
        inputs, targets = inputs.to(device), targets.to(device)
        lr, d = t.plan.at(self.k)  # the Run's plan covers more steps than the tutorial takes
        t.opt.zero_grad()
        with t.autocast:
            loss = F.cross_entropy(t.model(inputs), targets)
        loss.backward()
        t.opt.apply(t.opt.lr_value(lr), t.opt.keep_value(d) if t.plan.wd else None)
        self.running_loss += loss.item()
        self.k += 1

    def close(self) -> None:
        self.batches.close()  # shuts the DataLoader's workers down


class Batches(Timed):
    """Batches alone (the input pipeline), moved to `device` when given (the DataLoader's)."""

    def __init__(self, batches, device=None):
        self.batches, self.device = batches, device

    def step(self) -> int:
        x, y = next(self.batches)
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        return len(y)


# ---------------------------------------------------------------- the tutorial-style reference


class TutorialCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does: uint8 HWC arrays in memory, a PIL image per item,
    then the transform."""

    def __init__(self, data: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        return self.transform(img), target


def forever(loader):
    """`for epoch in range(E): for x, y in loader:`: a fresh iterator (and fresh workers) every
    epoch."""
    while True:
        yield from loader


def device_batches(loader: DeviceLoader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


def reference_loader(b: Bench, batch_size: int, workers: int | None = None):
    """The tutorial's DataLoader over the bench's training images, normalised with the runner's
    own per-channel mean and std."""
    splits = load_splits(b.data, 0, b.cache)
    mean, std = normalization(b.data, splits)
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    to_input = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    images = splits.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = TutorialCIFAR(images, splits.train_y.tolist(), transforms.Compose(augment + to_input))
    workers = b.s["workers"] if workers is None else workers
    pin = b.device.type == "cuda"
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin
    )


# ---------------------------------------------------------------- sections


def input_pipeline(b: Bench, run: Run, ref_loader) -> dict:
    """Images/s of batches alone: the Run's DeviceLoader vs DataLoader batches moved to the
    device."""
    s, loader = b.s, run.data.train
    n = max(1, min(s["pipeline_batches"], 4 * len(loader)))
    ref = Batches(forever(ref_loader), run.device)
    timing = (b.clock, s["warmup_steps"], s["windows"], n, s["budget_s"])
    r = measure({"runner": Batches(device_batches(loader))}, *timing)
    r.update(measure({"reference": ref}, *timing))
    ref.batches.close()
    ratio = r["runner"]["images_per_s"] / r["reference"]["images_per_s"]
    row = {"batch_size": run.cfg.batch_size, **r, "ratio": ratio}
    print(
        f"input pipeline  batch {row['batch_size']:4d}: runner {r['runner']['images_per_s']:10.0f} "
        f"img/s   reference {r['reference']['images_per_s']:8.0f} img/s   ratio "
        f"{row['ratio']:6.1f}x",
        flush=True,
    )
    return row


def loop_epochs(b: Bench, spe: int) -> int:
    """Epochs for a timed Run: enough that its loop never reaches the end (where it would validate),
    counting the untimed steps `LoopSteps.before_window` may take before each window."""
    s = b.s
    steps = s["warmup_steps"] + s["windows"] * (s["window_steps"] + spe + s["log_every"]) + 10
    return 2 + math.ceil(steps / spe)


def loop_rates(b: Bench, batch_size: int) -> tuple[dict, list[dict]]:
    """The input pipeline, then interleaved windows of the tutorial loop and, per execution path,
    the Run's loop and its bare step. Returns (input pipeline row, one row per path)."""
    s = b.s
    epochs = loop_epochs(b, b.steps_per_epoch(batch_size))
    # no validation in a window; bare steps may overfit their batch; a log point every log_every
    # steps as configured
    far = dict(val_every=10**9, diverge_factor=1e9, log_every=s["log_every"])
    ref_run = b.run(batch_size, "eager", f"tutorial_b{batch_size}", epochs=epochs, **far)
    ref_loader = reference_loader(b, batch_size)
    pipeline = input_pipeline(b, ref_run, ref_loader)
    runs = {p: b.run(batch_size, p, f"{p}_b{batch_size}", epochs=epochs, **far) for p in s["paths"]}
    tutorial = TutorialSteps(ref_run, ref_loader)
    timed: dict[str, Timed] = {"tutorial": tutorial}
    for p, run in runs.items():
        timed[p], timed[f"{p}/bare"] = LoopSteps(run), BareStep(run)
    # (another loop joins here as one more Timed entry)
    m = measure(timed, b.clock, s["warmup_steps"], s["windows"], s["window_steps"], s["budget_s"])
    tutorial.close()
    close(ref_run)
    rows = [loop_row(b, p, run, m) for p, run in runs.items()]
    for run in runs.values():
        close(run)
    del runs, timed
    if any(PATHS[p][0] for p in s["paths"]):
        torch._dynamo.reset()  # compiled graphs of this batch size are not needed again
    if b.device.type == "cuda":
        torch.cuda.empty_cache()
    return pipeline, rows


def loop_row(b: Bench, path: str, run: Run, m: dict) -> dict:
    """One path's figures from the measurements `m`: its loop's, bare step's and the tutorial's
    rates, the loop overhead per interleaved pair of windows, start-up, what the loop recorded."""
    loop_r, bare, ref = m[path], m[f"{path}/bare"], m["tutorial"]
    log_point(run, Progress.quiet(run))  # the records still pending: the count covers every step
    share = statistics.median(1 - a / c for a, c in zip(loop_r["windows"], bare["windows"]))
    ex = run.trainee.execution
    graphs = len(ex.graphed.graphs) if ex.graphed is not None else 0
    row = {
        "batch_size": run.cfg.batch_size,
        "path": path,
        "execution": execution(run),
        "model": b.s["model"],
        "loop": loop_r,
        "bare": bare,
        "tutorial": ref,
        "ratio": loop_r["images_per_s"] / ref["images_per_s"],
        "epoch_s_est": EPOCH_IMAGES / loop_r["images_per_s"],
        "startup": {
            "first_step_s": run.stats.first_step_s,
            "capture_s": ex.capture_s,
            "graphs": graphs,
        },
        "overhead": {"share_raw": share, "share": min(1.0, max(0.0, share))},
        "records": records(run),
    }
    print(
        f"loop  {row['model']} batch {row['batch_size']:4d} {row['path']:15s}: "
        f"{loop_r['images_per_s']:8.1f} img/s   tutorial {ref['images_per_s']:8.1f} img/s   ratio "
        f"{row['ratio']:5.2f}   bare step {bare['images_per_s']:8.1f} img/s   loop overhead "
        f"{100 * share:5.1f} %   epoch (50k) {row['epoch_s_est']:.2f} s   first step "
        f"{loop_r['first_step_s']:.2f} s",
        flush=True,
    )
    return row


def records(run: Run) -> dict:
    """What the Run's loop wrote to metrics.jsonl: one train record per step, stage norms (the
    equilibrium probe's) at every log point."""
    recorder = run.out.recorder
    recorder.sync()
    train = [r for r in read_metrics(recorder.path) if "train_loss" in r]
    norms = sum(any(k.startswith("weight_norm/") for k in r) for r in train)
    return {"steps": run.state.step, "train": len(train), "with_stage_norms": norms}


# ---------------------------------------------------------------- results


def summarize(results: dict) -> dict:
    """The flat figures the README's tables read, keyed by path and batch size."""
    loop_rows, out = results["loop"], flat_header(results)
    out["tutorial_images_per_s"] = {
        str(r["batch_size"]): r["tutorial"]["images_per_s"] for r in loop_rows
    }
    for key, get in (
        ("loop_images_per_s", lambda r: r["loop"]["images_per_s"]),
        ("ratio", lambda r: r["ratio"]),
        ("loop_overhead_share", lambda r: r["overhead"]["share"]),
        ("epoch_s_est", lambda r: r["epoch_s_est"]),
    ):
        out[key] = {}
        for r in loop_rows:
            out[key].setdefault(r["path"], {})[str(r["batch_size"])] = get(r)
    out["input_pipeline_ratio"] = {
        str(r["batch_size"]): r["ratio"] for r in results["input_pipeline"]
    }
    fastest = out["fastest"] = {}  # per batch size: the path of the highest loop rate
    for r in sorted(loop_rows, key=lambda r: -r["loop"]["images_per_s"]):
        best = {"path": r["path"], "images_per_s": r["loop"]["images_per_s"]}
        fastest.setdefault(str(r["batch_size"]), best | {k: r[k] for k in ("epoch_s_est", "ratio")})
    return out


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = parser(__doc__, "bench.json")
    p.add_argument("--batch-sizes", help="comma-separated; default: 32 on cpu, 128,64 on cuda")
    paths_arg(p)
    p.add_argument("--windows", type=int, help="timed windows per measurement (median reported)")
    p.add_argument("--window-steps", type=int, help="steps per window (a multiple of --log-every)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the windows")
    p.add_argument("--log-every", type=int, help="trainer.log_every (50, as trained; 2 quick)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="stop a measurement after the round (at least 3) that passes this many seconds; "
        "default 30 on cpu, none on cuda",
    )
    p.add_argument("--workers", type=int, help="the reference DataLoader's num_workers")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    positive = ("windows", "window_steps", "warmup_steps", "log_every")
    with session(parse_args(argv), OWN, positive) as (b, results):
        s = b.s
        print(
            f"bench: {s['model']}, batch {s['batch_sizes']}, paths {s['paths']}, "
            f"{results['settings']['data']} data, {s['windows']} windows x {s['window_steps']} "
            f"steps after {s['warmup_steps']} warm-up, reference num_workers={s['workers']}",
            flush=True,
        )
        results.update(input_pipeline=[], loop=[])
        for bs in s["batch_sizes"]:
            pipeline, rows = loop_rates(b, bs)
            results["input_pipeline"].append(pipeline)
            results["loop"] += rows
            b.save(results)
        results["summary"] = summarize(results)
    return results


if __name__ == "__main__":
    main()
