#!/usr/bin/env python
"""Time the training loop that ships (runner.engine.loop) against a tutorial-style PyTorch loop, in
one process.

Sections, in the order main() runs them, one function each:
  input pipeline  the Run's training DeviceLoader (run.data.train) against a torchvision-style
                  DataLoader: batches alone.
  loop rates      windows of next() on engine.loop.loop(run, stop), for Runs that engine.build.setup
                  built on synthetic data in a temporary folder: the shipped loop with all its
                  bookkeeping (step records, the one-transfer read at every log point with its
                  divergence check, Recorder.write, the probes' figures and per-stage weight
                  norms). One Run per execution path (PATHS). Validation is pushed past the run's
                  end and windows skip epoch ends, so no validation or checkpoint falls inside a
                  window (the end-to-end section counts them). Interleaved with these windows
                  (A B C A B C ...): the tutorial loop, and each Run's bare step (its own
                  engine.step on one fixed batch: no loader, no records, no probes); loop overhead =
                  1 − loop rate / bare-step rate, per interleaved pair.
  evaluation      runner.core.evaluation.evaluate over the validation split with the Run's own
                  evaluated loader (padded, one batch shape) and eval forward (GraphedForward), and
                  recalibrated_bn over the Run's trainer.bn_recalibrate training images; the first
                  pass (compile, capture) apart.
  end to end      setup → loop → summary (engine.train.train's parts) on the same data:
                  summary.json's images_per_s, startup_s and its parts, stall_s, validation times,
                  and the epoch records of metrics.jsonl.
  op counts       torch.profiler over single steps: what one step of the runner's eager loop and one
                  of the tutorial loop ask the device to do (CPU: aten ops that would be kernels;
                  CUDA: kernel launches).
  pack (--pack K) K jobs of a sweep trained as one pack (runner.sweeps.pack) against the same jobs
                  one after another: aggregate images/s over the same steps of every job, and wall
                  time.

The tutorial reference is a torchvision.datasets.CIFAR10-style Dataset (uint8 HWC arrays, one PIL
image per item), RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
DataLoader(shuffle=True, num_workers=N, pin_memory on cuda), `.to(device)` per batch and
`loss.item()` per step. It trains the model and optimizer of an eager Run (same initial weights,
core.update_rule.Optimizer applying the Run's step plan, autocast and memory layout), so only the
input pipeline and the loop differ. Every rate is the median of timed windows after warm-up; CUDA is
synchronised at window ends (scripts/timing_harness.py, the benchmarks' one timing helper). Runs are
built by engine.build.setup with one data_cache, so the data set is loaded once and never timed.

Runs without hydra/omegaconf and without the package installed: it imports runner from ../src.

    # CPU: ResNet20v1, batch 32, eager; about 2 min on 2 cores
    python scripts/bench.py
    # ResNet56v2, batch 128 and 64, eager, graphs, compile + graphs
    python scripts/bench.py --device cuda
    python scripts/bench.py --device cpu --model resnet56v2 --batch-sizes 128 --window-steps 10 \
        --e2e-epochs 0
    python scripts/bench.py --device cuda --pack 8 --paths graphs --e2e-epochs 0 --no-count-ops
    python scripts/bench.py --quick --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# timing_harness, also when this file is imported by its path
sys.path.insert(1, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timing_harness import Clock, Timed, TurnWindow, measure, save_json
from torchvision import transforms

import runner
from runner.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainerConfig
from runner.core.evaluation import evaluate, recalibrated_bn
from runner.core.loader import DeviceLoader
from runner.core.models import MODELS
from runner.data import cifar10, load_splits, normalization
from runner.engine import build, lock
from runner.engine.interrupts import StopRequests
from runner.engine.loop import log_point, loop
from runner.engine.progress import Progress
from runner.engine.provenance import code_version, environment
from runner.engine.records import read_metrics
from runner.engine.run import Run
from runner.engine.step import GraphedStep
from runner.engine.summary import finish
from runner.sweeps.pack import Job, train_pack

EPOCH_IMAGES, VAL_IMAGES = 50_000, 10_000  # CIFAR-10's training and test sets, for the estimates
# configs/config.yaml and configs/optimizer/adamw.yaml: what `python -m runner` trains with
LR, WD = 1e-3, 5e-4
# execution path → (trainer.compile, trainer.cuda_graphs); on CUDA null (auto) means compile+graphs
PATHS = {
    "eager": (False, False),  # trainer.compile=false trainer.cuda_graphs=false
    "graphs": (False, True),
    "compile": (True, False),
    "compile+graphs": (True, True),
}

DEFAULTS = {  # per device; every one of these but pipeline_batches can be overridden by its flag
    "cpu": dict(
        model="resnet20v1",
        batch_sizes=[32],
        paths=["eager"],
        windows=5,
        window_steps=50,
        warmup_steps=3,
        workers=2,
        n_train=4096,
        n_val=1000,
        val_passes=3,
        pipeline_batches=40,
        budget_s=30.0,
        log_every=50,
        e2e_epochs=2,
        count_model="resnet56v2",
        count_batch=8,
        pack_steps=20,
    ),
    "cuda": dict(
        model="resnet56v2",
        batch_sizes=[128, 64],  # the study's batch first: a run cut short has measured it
        paths=["eager", "graphs", "compile+graphs"],
        windows=5,
        window_steps=50,
        warmup_steps=15,
        workers=min(8, os.cpu_count() or 1),
        n_train=EPOCH_IMAGES,
        n_val=VAL_IMAGES,
        val_passes=5,
        pipeline_batches=100,
        budget_s=None,
        log_every=50,
        e2e_epochs=2,
        count_model="resnet56v2",
        count_batch=None,
        pack_steps=200,
    ),
    "quick": dict(
        model="resnet20v1",
        batch_sizes=[16],
        paths=["eager"],
        windows=2,
        window_steps=2,
        warmup_steps=1,
        workers=1,
        n_train=256,
        n_val=200,
        val_passes=1,
        pipeline_batches=4,
        budget_s=None,
        log_every=2,
        e2e_epochs=1,
        count_model="resnet20v1",
        count_batch=4,
        pack_steps=6,
    ),
}


# ---------------------------------------------------------------- the Runs


@dataclasses.dataclass
class Bench:
    """What every section needs: the resolved settings, the device, the data, a folder for the Runs,
    the clock."""

    s: dict
    device: torch.device
    data: DataConfig
    folder: Path
    clock: Clock
    # engine.build.setup's data_cache: loaded once, untimed
    cache: dict = dataclasses.field(default_factory=dict)

    def config(
        self, batch_size: int, path: str, *, epochs: int, model: str | None = None, **trainer
    ) -> RunConfig:
        """The RunConfig `python -m runner` trains with (adamw, piecewise-constant schedule, trainer
        defaults) on the bench's data, with one execution path and `trainer` overrides. Off CUDA
        the graphs paths are set up eager (trainer.cuda_graphs=true is refused there): `run` swaps
        in the uncaptured graphed step."""
        compile_, graphs = PATHS[path]
        name = model or self.s["model"]
        depth, version = MODELS[name]
        tr = dict(
            device=self.device.type,
            compile=compile_,
            cuda_graphs=graphs and self.device.type == "cuda",
            progress=False,
        )
        return RunConfig(
            lr=LR,
            wd=WD,
            epochs=epochs,
            batch_size=batch_size,
            seed=0,
            model=ModelConfig(name=name, depth=depth, version=version),
            data=self.data,
            trainer=TrainerConfig(**{**tr, **trainer}),
        )

    def run(self, batch_size: int, path: str, name: str, *, epochs: int, **trainer) -> Run:
        """A Run as runner.engine.build.setup builds it, in its own folder; off CUDA the graphs path
        runs uncaptured."""
        run = build.setup(
            self.config(batch_size, path, epochs=epochs, **trainer),
            self.subfolder(name),
            data_cache=self.cache,
        )
        if PATHS[path][1] and self.device.type != "cuda":
            uncaptured_graphs(run)
        return run

    def subfolder(self, name: str) -> Path:
        """A fresh run folder (setup() expects the folder to exist, as the CLI makes it)."""
        (self.folder / name).mkdir(parents=True)
        return self.folder / name

    def steps_per_epoch(self, batch_size: int) -> int:
        # data.drop_last: full batches only
        return len(load_splits(self.data, 0, self.cache).train_y) // batch_size


def uncaptured_graphs(run: Run) -> None:
    """Off CUDA: the graphs path's device-side step, uncaptured (GraphedStep(capture=False)), in
    place of the eager step of a Run set up eager. It shows that the path works there (the quick
    test runs it); its speed says nothing about a captured graph."""
    ex = run.trainee.execution
    forward, start = ex.step.forward, run.state.step
    ex.step = GraphedStep(forward, ex.opt, ex.autocast, ex.plan, start, capture=False)


def execution(run: Run) -> dict:
    """The path the Run's step runs on now, as summary.json's `path` says it; cuda_graphs is
    'uncaptured' for the graphs path off CUDA."""
    out, graphed = run.trainee.path.summary(), run.trainee.graphed
    if graphed is not None and not graphed.capture:
        out["cuda_graphs"] = "uncaptured"
    return out


def close(run: Run) -> None:
    """Close a Run's records (its TensorBoard writer holds a thread) and let go of its folder's
    lock, without writing a summary."""
    recorder = run.out.recorder
    if recorder.tb is not None:
        recorder.tb.close()
    recorder.close()
    lock.release(run.out.run_dir)


@contextmanager
def fused_optimizer():
    """engine.build makes the Run's Optimizer with torch's fused kernels, as it does on CUDA (on a
    CPU torch's Adam defaults to a loop over tensors). Patched where setup looks it up, so that the
    step, the log points and the probes all hold the one fused optimizer."""
    made = build.Optimizer
    build.Optimizer = functools.partial(made, fused=True)
    try:
        yield
    finally:
        build.Optimizer = made


def data_config(s: dict, data_root: str | None) -> DataConfig:
    if not data_root:
        return DataConfig(n_train=s["n_train"], n_val=s["n_val"])
    root = Path(data_root).expanduser()
    name = "cifar10" if (root / cifar10.CIFAR10_FOLDER).is_dir() else "image_folder"
    return DataConfig(name=name, source=name, root=str(root), download=False)


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


def tutorial_loader(
    x_u8: torch.Tensor, y: torch.Tensor, batch_size: int, mean, std, workers: int, cuda: bool
):
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = TutorialCIFAR(x_u8.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist(), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=cuda
    )


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
    splits = load_splits(b.data, 0, b.cache)
    mean, std = normalization(b.data, splits)  # the runner's own: per-channel mean and std
    return tutorial_loader(
        splits.train_x,
        splits.train_y,
        batch_size,
        mean,
        std,
        b.s["workers"] if workers is None else workers,
        b.device.type == "cuda",
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
    row = {
        "batch_size": run.cfg.batch_size,
        **r,
        "ratio": r["runner"]["images_per_s"] / r["reference"]["images_per_s"],
    }
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


def loop_rates(b: Bench, batch_size: int) -> tuple[dict, list[dict], dict]:
    """The input pipeline, then interleaved windows of the tutorial loop and, per execution path,
    the Run's loop and its bare step. Returns (input pipeline row, one row per path, {path: Run});
    the Runs stay open for `evaluation`."""
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
    # (another loop joins here as one more Timed entry; packs are timed apart, by pack_rates)
    m = measure(timed, b.clock, s["warmup_steps"], s["windows"], s["window_steps"], s["budget_s"])
    tutorial.close()
    close(ref_run)
    for run in runs.values():
        # the records still pending, so that the count below covers every step
        log_point(run, Progress.quiet(run))
    ref = m["tutorial"]
    rows = []
    for p, run in runs.items():
        loop_r, bare = m[p], m[f"{p}/bare"]
        share = statistics.median(1 - a / c for a, c in zip(loop_r["windows"], bare["windows"]))
        ex = run.trainee.execution
        row = {
            "batch_size": batch_size,
            "path": p,
            "execution": execution(run),
            "model": s["model"],
            "loop": loop_r,
            "bare": bare,
            "tutorial": ref,
            "ratio": loop_r["images_per_s"] / ref["images_per_s"],
            "epoch_s_est": EPOCH_IMAGES / loop_r["images_per_s"],
            "startup": {
                "first_step_s": run.stats.first_step_s,
                "capture_s": ex.capture_s,
                "graphs": len(ex.graphed.graphs) if ex.graphed is not None else 0,
            },
            "overhead": {"share_raw": share, "share": min(1.0, max(0.0, share))},
            "records": records(run),
        }
        rows.append(row)
        print(
            f"loop  {s['model']} batch {batch_size:4d} {p:15s}: {loop_r['images_per_s']:8.1f} "
            f"img/s   tutorial {ref['images_per_s']:8.1f} img/s   ratio {row['ratio']:5.2f}   bare "
            f"step {bare['images_per_s']:8.1f} img/s   loop overhead {100 * share:5.1f} %   epoch "
            f"(50k) {row['epoch_s_est']:.2f} s   first step {loop_r['first_step_s']:.2f} s",
            flush=True,
        )
    return pipeline, rows, runs


def evaluation(b: Bench, run: Run, path: str) -> dict:
    """Seconds per pass of runner.core.evaluation.evaluate over the validation split with the Run's
    evaluated loader and eval forward, and per recalibration of every BatchNorm over the Run's
    training images; first passes apart."""
    t, loader, images = run.trainee, run.data.evals.val, run.data.recal_images

    def val_pass():
        # engine.validation's one host read
        torch.stack(evaluate(t.model, t.eval_forward, loader)).tolist()

    def recal():
        with recalibrated_bn(t.model, images, t.autocast):
            pass

    out = {
        "path": path,
        "execution": execution(run),
        "images": len(loader.y),
        "batch_size": loader.batch_size,
    }
    for name, fn in (("validation", val_pass), ("recalibration", recal)):
        if name == "recalibration" and images is None:
            continue
        times = []
        for _ in range(b.s["val_passes"] + 1):
            t0 = b.clock()
            fn()
            times.append(b.clock() - t0)
        out[name] = {
            "first_s": times[0],
            "runs_s": times[1:],
            "seconds": statistics.median(times[1:]),
        }
    v = out["validation"]
    v["images_per_s"] = out["images"] / v["seconds"]
    v[f"est_{VAL_IMAGES}_images_s"] = VAL_IMAGES * v["seconds"] / out["images"]
    if images is not None:
        out["recalibration"]["images"] = len(images)
    rc = out.get("recalibration", {}).get("seconds")
    print(
        f"evaluation {path:15s}: {out['images']} images at batch {out['batch_size']} in "
        f"{v['seconds']:.3f} s (est. {v[f'est_{VAL_IMAGES}_images_s']:.3f} s for {VAL_IMAGES}; "
        f"first pass {v['first_s']:.2f} s)   BN recalibration "
        f"{'-' if rc is None else f'{rc:.3f} s'}",
        flush=True,
    )
    return out


E2E_KEYS = (
    "status",
    "images_per_s",
    "images_per_s_overall",
    "train_time_s",
    "startup_s",
    "startup",
    "stall_s",
    "first_step_s",
    "val_time_s",
    "val_first_s",
    "val_s",
    "wall_time_s",
    "final_val_acc",
)


def end_to_end(b: Bench, batch_size: int, path: str) -> dict | None:
    """A whole run of b.s['e2e_epochs'] epochs, validating each epoch as the defaults do: its
    summary.json and the epoch records of its metrics.jsonl."""
    if PATHS[path][1] and b.device.type != "cuda":
        return None  # trainer.cuda_graphs=true is refused off CUDA
    folder = b.subfolder(f"e2e_{path}_b{batch_size}")
    summary = train(b, b.config(batch_size, path, epochs=b.s["e2e_epochs"]), folder)
    epochs = [r for r in read_metrics(folder / "metrics.jsonl") if "epoch_train_s" in r]
    row = {
        "batch_size": batch_size,
        "path": path,
        "execution": summary.get("path"),
        **{k: summary.get(k) for k in E2E_KEYS},
        "epochs": [{k: r[k] for k in ("epoch", "epoch_train_s", "epoch_images")} for r in epochs],
    }
    rate = row["images_per_s"]
    row["epoch_s_est"] = EPOCH_IMAGES / rate if rate else None
    print(
        f"end to end batch {batch_size:4d} {path:15s}: {_f(rate, '.1f')} img/s steady, "
        f"{_f(row['images_per_s_overall'], '.1f')} overall; epochs "
        f"{[round(e['epoch_train_s'], 2) for e in epochs]} s; startup "
        f"{_f(row['startup_s'], '.2f')} s, stall {_f(row['stall_s'], '.2f')} s, validation "
        f"{_f(row['val_s'], '.3f')} s (first {_f(row['val_first_s'], '.2f')} s)",
        flush=True,
    )
    return row


def train(b: Bench, cfg: RunConfig, folder: Path) -> dict:
    """runner.engine.train.train's own parts (setup, loop, summary) on the bench's loaded data; the
    summary."""
    run = build.setup(cfg, folder, data_cache=b.cache)
    try:
        for _ in loop(run, StopRequests()):
            pass
    finally:
        summary = finish(run)
    return summary


def records(run: Run) -> dict:
    """What the Run's loop wrote to metrics.jsonl: one train record per step, stage norms (the
    equilibrium probe's) at every log point."""
    recorder = run.out.recorder
    recorder.sync()
    train = [r for r in read_metrics(recorder.path) if "train_loss" in r]
    return {
        "steps": run.state.step,
        "train": len(train),
        "with_stage_norms": sum(any(k.startswith("weight_norm/") for k in r) for r in train),
    }


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


# ---------------------------------------------------------------- op counts

# aten ops that only allocate, view or reshape metadata: no kernel on any device
NO_KERNEL = frozenset(
    "aten::" + n
    for n in (
        "empty empty_strided empty_like view as_strided _reshape_alias reshape t transpose expand "
        "expand_as permute detach alias unsqueeze squeeze select slice narrow unbind split chunk "
        "flatten view_as _unsafe_view lift lift_fresh as_strided_ resize_ set_ resolve_conj "
        "resolve_neg contiguous to _to_copy item result_type is_nonzero"
    ).split()
)
ONE_LAUNCH = ("aten::_foreach_", "aten::_fused_")  # multi-tensor: on a GPU one kernel per chunk
# host → device submissions
LAUNCHES = frozenset(
    "cudaLaunchKernel cudaLaunchKernelExC cuLaunchKernel cuLaunchKernelEx cudaMemcpyAsync "
    "cudaMemsetAsync cudaGraphLaunch".split()
)
ROOT_PREFIX = "autograd::engine::evaluate_function: "


def _where(op, outer) -> str:
    """'op < outermost op': the op and the top-level call it belongs to (a module's op, a backward
    node, the optimizer's step)."""
    return f"{op.name} < {outer.name.replace(ROOT_PREFIX, 'backward ')}"


def _outermost(e):
    while e.cpu_parent is not None:
        e = e.cpu_parent
    return e


def _compute_ops(e) -> list:
    """The ops of e's subtree that would be kernels: the innermost ones that compute, a multi-tensor
    op as one."""
    if e.name.startswith(ONE_LAUNCH):
        return [e]
    inner = [op for c in e.cpu_children for op in _compute_ops(c)]
    if inner:
        return inner
    return [e] if e.name.startswith("aten::") and e.name not in NO_KERNEL else []


def device_work(events, cuda: bool) -> Counter:
    """{'op < outermost op': count} for the events of one profiled step. CUDA: every launch the host
    makes (kernels, copies, fills), under the innermost aten op that made it. CPU: the aten ops that
    would be kernels on a GPU (`_compute_ops`); allocation and view ops are not counted."""
    out = Counter()
    for e in events:
        if cuda and e.name in LAUNCHES:
            op = e.cpu_parent
            while op is not None and not op.name.startswith("aten::") and op.cpu_parent is not None:
                op = op.cpu_parent
            out[_where(op, _outermost(e)) if op is not None else e.name] += 1
        elif not cuda and e.cpu_parent is None:
            for op in _compute_ops(e):
                out[_where(op, e)] += 1
    return out


def profile_step(fn, cuda: bool, device_side: list | None = None) -> Counter:
    """device_work of one call of fn; on CUDA also appends to `device_side` how many kernels, copies
    and fills the GPU ran (a check on the launch count that does not depend on how the profiler
    nests the host's events)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda and device_side is not None:
        device_side.append(
            sum(getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA for e in events)
        )
    return device_work(events, cuda)


def _mean(counts: list[Counter]) -> dict:
    keys = set().union(*counts)
    return {k: round(sum(c[k] for c in counts) / len(counts), 2) for k in sorted(keys)}


def op_counts(b: Bench) -> dict:
    """Per training step: the device work of the runner's eager loop (runner.engine.loop.loop, as it
    ships) and of the tutorial loop on the same model and optimizer, and what each issues that the
    other does not. Off CUDA the Run takes CUDA's settings as far as CPU allows: bf16 autocast,
    channels_last, fused Adam. The tutorial's batch is fetched before its step is profiled: its
    per-image transforms run in DataLoader workers, not on the device."""
    s, cuda = b.s, b.device.type == "cuda"
    bs = s["count_batch"] or s["batch_sizes"][0]
    every = 5  # a log point every 5 steps: its extra work is shown apart
    like_cuda = {} if cuda else dict(precision="bf16", channels_last=True)
    cfg = b.config(
        bs, "eager", epochs=2, model=s["count_model"], log_every=every, val_every=10**9, **like_cuda
    )
    with nullcontext() if cuda else fused_optimizer():  # fused on CUDA already
        run = build.setup(cfg, b.subfolder("op_counts"), data_cache=b.cache)
    steps = LoopSteps(run)
    for _ in range(3):  # warm-up: allocations, autotuning, the optimizer's state
        steps.step()
    while run.state.step % every:  # to just after a log point
        steps.step()
    gpu_runner, gpu_tutorial = [], []
    plain = [profile_step(steps.step, cuda, gpu_runner) for _ in range(every - 1)]
    at_log_point = profile_step(steps.step, cuda)
    tutorial = TutorialSteps(run, reference_loader(b, bs, workers=0))
    batches = [next(tutorial.batches) for _ in range(4)]
    tutorial.train(*batches[0])
    tut = [
        profile_step(lambda xy=xy: tutorial.train(*xy), cuda, gpu_tutorial) for xy in batches[1:]
    ]
    tutorial.close()
    close(run)
    runner_step, tutorial_step = _mean(plain), _mean(tut)
    extra = {k: v for k, v in _mean([at_log_point - Counter(runner_step)]).items() if v}
    keys = set(runner_step) | set(tutorial_step)
    diff = {k: round(runner_step.get(k, 0) - tutorial_step.get(k, 0), 2) for k in sorted(keys)}
    out = {
        "device": b.device.type,
        "unit": "kernel launches" if cuda else "aten ops that would be kernels",
        "model": s["count_model"],
        "batch_size": bs,
        "execution": execution(run),
        "optimizer": "fused Adam" if run.trainee.opt.fused else "Adam",
        "runner_per_step": round(sum(runner_step.values()), 2),
        "tutorial_per_step": round(sum(tutorial_step.values()), 2),
        "log_step_extra": round(sum(extra.values()), 2),
        "log_step_extra_ops": extra,
        "gpu_events_per_step": {
            "runner": statistics.mean(gpu_runner),
            "tutorial": statistics.mean(gpu_tutorial),
        }
        if cuda
        else None,
        "runner_only": {k: v for k, v in diff.items() if v > 0},
        "tutorial_only": {k: -v for k, v in diff.items() if v < 0},
        "runner": runner_step,
        "tutorial": tutorial_step,
    }
    _print_counts(out)
    return out


def _print_counts(out: dict) -> None:
    print(
        f"op counts ({out['unit']}, {out['model']} batch {out['batch_size']}, "
        f"{out['execution']['precision']}, channels_last {out['execution']['channels_last']}, "
        f"{out['optimizer']}): runner {out['runner_per_step']:g} per step "
        f"(+{out['log_step_extra']:g} at each log point), tutorial {out['tutorial_per_step']:g}",
        flush=True,
    )
    for side in ("runner_only", "tutorial_only"):
        for k, v in sorted(out[side].items(), key=lambda kv: -kv[1]):
            print(f"  {side:13s} {v:7g}  {k}", flush=True)


# ---------------------------------------------------------------- packs

# (preset name, algorithm, lr, wd, l2): the update rules of the studies, each at two strengths
RULES = [
    ("adamw", "adam", 1e-3, 5e-4, 0.0),
    ("adam_l2", "adam", 1e-3, 0.0, 5e-4),
    ("sgdw", "sgd", 0.05, 5e-4, 0.0),
    ("sgd_l2", "sgd", 0.05, 0.0, 5e-4),
    ("adamw", "adam", 2e-3, 1e-3, 0.0),
    ("adam_l2", "adam", 2e-3, 0.0, 1e-3),
    ("sgdw", "sgd", 0.1, 1e-3, 0.0),
    ("sgd_l2", "sgd", 0.1, 0.0, 1e-3),
]


def pack_configs(
    k: int, device: str, model: str, batch_size: int, steps: int, graphs: bool | None
) -> list:
    """K jobs of a small lr × λ grid over the four update rules, one epoch of `steps` + 1 steps each
    (the step after the window closes it), synthetic images, no compile: what a sweep varies, on
    what it shares."""
    depth, version = MODELS[model]
    data = DataConfig(n_train=(steps + 2) * batch_size, n_val=1000 if device == "cuda" else 100)
    out = []
    for n in range(k):
        name, algorithm, lr, wd, l2 = RULES[n % len(RULES)]
        trainer = TrainerConfig(
            device=device,
            max_steps=steps + 1,
            compile=False,
            cuda_graphs=graphs,
            progress=False,
            bn_recalibrate=0,
        )
        out.append(
            RunConfig(
                lr=lr * (1 + n // len(RULES)),
                wd=wd,
                l2=l2,
                epochs=1,
                batch_size=batch_size,
                seed=0,
                data=data,
                model=ModelConfig(name=model, depth=depth, version=version),
                optimizer=OptimizerConfig(name=name, algorithm=algorithm),
                trainer=trainer,
            )
        )
    return out


def timed_pack(cfgs: list, root: Path, warmup: int, steps: int, clock: Clock) -> dict:
    """Train `cfgs` as one pack into fresh folders under `root`: the seconds of steps warmup+1 ..
    steps of every job (turns: K setups, then one step of each job per round), and of the whole
    call. Unstaggered: these jobs validate only at their end, after the window, and a stagger would
    put its ramp inside the window."""
    k, jobs = len(cfgs), []
    for n, cfg in enumerate(cfgs):
        run_dir = root / f"{time.monotonic_ns()}_{n}"
        run_dir.mkdir(parents=True)
        jobs.append(Job(cfg, run_dir, name=f"#{n}"))
    window = TurnWindow(start=k + k * warmup + 1, end=k + k * steps + 1, clock=clock)
    tick = clock()
    outcomes = train_pack(jobs, around=window, stagger=False)
    wall = clock() - tick
    bad = [
        o.error or o.summary["status"]
        for o in outcomes
        if o.error or o.summary["status"] != "completed"
    ]
    if bad:
        raise RuntimeError(f"benchmark runs did not complete: {bad}")
    return {
        "window_s": window.seconds,
        "wall_s": wall,
        "run_images_per_s": [o.summary["images_per_s"] for o in outcomes],
    }


def pack_rates(
    device: torch.device, k: int, model: str, batch_size: int, steps: int, graphs: bool | None
) -> dict:
    """K jobs one after another (each a pack of one: setup, loop, summary, as `python -m runner`
    runs it), then the same K jobs as one pack (runner.sweeps.pack). Aggregate images/s = all jobs'
    images in the window / its seconds (sequential: the K windows' seconds added up), so the ratio
    is what packing buys; `wall` includes set-up, capture, validation and checkpoints. The first
    tenth of the steps (at least 2) is warm-up, untimed."""
    clock, warmup = Clock(device), max(2, steps // 10)
    cfgs = pack_configs(k, device.type, model, batch_size, steps, graphs)
    images = (steps - warmup) * batch_size  # per job, in the window
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        alone = [timed_pack([cfg], Path(tmp), warmup, steps, clock) for cfg in cfgs]
        packed = timed_pack(cfgs, Path(tmp), warmup, steps, clock)
    sequential = k * images / sum(a["window_s"] for a in alone)
    row = {
        "k": k,
        "model": model,
        "batch_size": batch_size,
        "device": str(device),
        "cuda_graphs": graphs,
        "warmup_steps": warmup,
        "timed_steps": steps - warmup,
        "sequential_images_per_s": sequential,
        "pack_images_per_s": k * images / packed["window_s"],
        "sequential_wall_s": sum(a["wall_s"] for a in alone),
        "pack_wall_s": packed["wall_s"],
        "alone_images_per_s": [images / a["window_s"] for a in alone],
        "pack_run_images_per_s": packed["run_images_per_s"],
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
        "jobs": [{"optimizer": c.optimizer.name, "lr": c.lr, "wd": c.wd, "l2": c.l2} for c in cfgs],
    }
    row["ratio"] = row["pack_images_per_s"] / sequential
    row["wall_ratio"] = row["sequential_wall_s"] / row["pack_wall_s"]
    print(
        f"pack  {model} batch {batch_size} K={k}: sequential {sequential:,.0f} img/s, pack "
        f"{row['pack_images_per_s']:,.0f} img/s: {row['ratio']:.2f}x; wall "
        f"{row['sequential_wall_s']:.1f} s vs {row['pack_wall_s']:.1f} s "
        f"({row['wall_ratio']:.2f}x)",
        flush=True,
    )
    return row


# ---------------------------------------------------------------- results


def summarize(results: dict) -> dict:
    """The flat figures the README's tables read, keyed by path and batch size."""
    env, out = results["env"], {}
    out.update(
        device=env["device"], device_name=env["device_name"], model=results["settings"]["model"]
    )
    out["tutorial_images_per_s"] = {
        str(r["batch_size"]): r["tutorial"]["images_per_s"] for r in results["loop"]
    }
    for key, get in (
        ("loop_images_per_s", lambda r: r["loop"]["images_per_s"]),
        ("ratio", lambda r: r["ratio"]),
        ("loop_overhead_share", lambda r: r["overhead"]["share"]),
        ("epoch_s_est", lambda r: r["epoch_s_est"]),
    ):
        out[key] = {}
        for r in results["loop"]:
            out[key].setdefault(r["path"], {})[str(r["batch_size"])] = get(r)
    out["input_pipeline_ratio"] = {
        str(r["batch_size"]): r["ratio"] for r in results["input_pipeline"]
    }
    out[f"validation_{VAL_IMAGES}_images_s"] = {
        e["path"]: e["validation"][f"est_{VAL_IMAGES}_images_s"] for e in results["evaluation"]
    }
    out["recalibration_s"] = {
        e["path"]: e["recalibration"]["seconds"]
        for e in results["evaluation"]
        if "recalibration" in e
    }
    e2e = out["end_to_end_images_per_s"] = {}
    for r in results["end_to_end"]:
        e2e.setdefault(r["path"], {})[str(r["batch_size"])] = r["images_per_s"]
    out["fastest"] = {}
    for r in results["loop"]:
        best = out["fastest"].get(str(r["batch_size"]))
        if best is None or r["loop"]["images_per_s"] > best["images_per_s"]:
            out["fastest"][str(r["batch_size"])] = {
                "path": r["path"],
                "images_per_s": r["loop"]["images_per_s"],
                "epoch_s_est": r["epoch_s_est"],
                "ratio": r["ratio"],
            }
    counts = results.get("op_counts")
    if counts and "runner_per_step" in counts:
        out["ops_per_step"] = {
            "runner": counts["runner_per_step"],
            "tutorial": counts["tutorial_per_step"],
            "unit": counts["unit"],
        }
    return out


def bench_environment(device: torch.device) -> dict:
    """runner.engine.provenance's environment and commit, plus what a benchmark on a shared machine
    needs besides."""
    return {
        **environment(device),
        "code": code_version(),
        "runner": getattr(runner, "__version__", None),
        "runner_path": str(Path(runner.__file__).resolve().parent),
        "hydra_loaded": any(m.split(".")[0] in ("hydra", "omegaconf") for m in sys.modules),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # others' work on the machine
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--model", choices=sorted(MODELS), help="default: resnet20v1 on cpu, resnet56v2 on cuda"
    )
    p.add_argument("--batch-sizes", help="comma-separated; default: 32 on cpu, 128,64 on cuda")
    p.add_argument(
        "--paths",
        help=f"comma-separated execution paths of the runner's loop, of {', '.join(PATHS)}; "
        "default eager on cpu, eager,graphs,compile+graphs on cuda",
    )
    _timing_args(p)
    p.add_argument(
        "--workers", type=int, help="reference DataLoader num_workers (2 cpu, min(8, cpus) cuda)"
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable CPUs)")
    p.add_argument(
        "--n-train", type=int, help="synthetic training images (default 4096 cpu, 50000 cuda)"
    )
    p.add_argument(
        "--n-val", type=int, help="synthetic validation images (default 1000 cpu, 10000 cuda)"
    )
    p.add_argument(
        "--e2e-epochs",
        type=int,
        help="epochs of each end-to-end run (0: none); default 2 (1 with --quick)",
    )
    p.add_argument(
        "--count-ops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the device work of one runner step and one tutorial step (default on)",
    )
    p.add_argument(
        "--count-model", choices=sorted(MODELS), help="model of the op counts (default resnet56v2)"
    )
    p.add_argument(
        "--count-batch",
        type=int,
        help="batch of the op counts (default 8 on cpu, the first batch size "
        "on cuda; counts do not depend on it)",
    )
    p.add_argument(
        "--data-root",
        help="real images instead of synthetic ones: a folder holding cifar-10-batches-py, "
        "or an image folder root/train/<class>/*.png (runner.data.image_folder)",
    )
    p.add_argument(
        "--pack",
        type=int,
        help="also time K jobs trained as one pack (runner.sweeps.pack) against the "
        "same K jobs one after another",
    )
    p.add_argument(
        "--pack-steps", type=int, help="steps of each packed job (default 20 cpu, 200 cuda)"
    )
    p.add_argument(
        "--pack-graphs",
        choices=("auto", "on", "off"),
        default="auto",
        help="trainer.cuda_graphs of the packed jobs (auto: on for cuda)",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds): for the tests")
    p.add_argument(
        "--out",
        default="bench.json",
        help="JSON results (default: bench.json in the working directory)",
    )
    args = p.parse_args(argv)
    args.pack_graphs = {"auto": None, "on": True, "off": False}[args.pack_graphs]
    return args


def _timing_args(p: argparse.ArgumentParser) -> None:
    """How each rate is measured: windows, their steps, warm-up, log points, a time budget,
    validation passes."""
    p.add_argument("--windows", type=int, help="timed windows per measurement (median reported)")
    p.add_argument(
        "--window-steps",
        type=int,
        help="training steps per window (a multiple of trainer.log_every, 50, "
        "puts one log point in each window)",
    )
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the windows")
    p.add_argument(
        "--log-every",
        type=int,
        help="trainer.log_every of the timed Runs (default 50, as the trainer's; "
        "2 with --quick, so the tests see log points)",
    )
    p.add_argument("--val-passes", type=int, help="timed validation and recalibration passes")
    p.add_argument(
        "--budget-s",
        type=float,
        help="stop a measurement after the round that passes this many seconds "
        "(at least 3 rounds); default 30 on cpu, none on cuda",
    )


def settings(args, device: torch.device) -> dict:
    """The defaults for the device (or --quick) with the flags given on top; a bad value exits with
    the fix."""
    s = dict(DEFAULTS["quick" if args.quick else device.type])
    for k in s.keys() - {"batch_sizes", "paths"}:  # those two are lists, given comma-separated
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    if args.batch_sizes:
        s["batch_sizes"] = [int(v) for v in args.batch_sizes.split(",") if v.strip()]
    if args.paths:
        s["paths"] = [v.strip() for v in args.paths.split(",") if v.strip()]
    unknown = [p for p in s["paths"] if p not in PATHS]
    if unknown or not s["paths"]:
        sys.exit(f"bench: --paths {args.paths!r}: each must be one of {', '.join(PATHS)}")
    if (
        min(s["windows"], s["window_steps"], s["warmup_steps"], s["log_every"], *s["batch_sizes"])
        < 1
        or s["e2e_epochs"] < 0
    ):
        sys.exit(
            "bench: --windows, --window-steps, --warmup-steps, --log-every and --batch-sizes must "
            "be >= 1, --e2e-epochs >= 0"
        )
    s["count_ops"] = args.count_ops
    return s


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench: --device cuda: no CUDA device is available here (use --device cpu or auto)"
        )
    return torch.device(name)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = pick_device(args.device)
    s = settings(args, device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or usable)
    out = Path(args.out)
    env = bench_environment(device)
    results = {
        "env": env,
        "settings": {
            **s,
            "data": args.data_root or "synthetic",
            "lr": LR,
            "wd": WD,
            "optimizer": "adamw (runner.core.update_rule.Optimizer), as configs/ default",
        },
        "input_pipeline": [],
        "loop": [],
        "evaluation": [],
        "end_to_end": [],
        "op_counts": None,
    }
    print(
        f"bench: {env['device_name']} | torch {env['torch']} torchvision {env['torchvision']} cuda "
        f"{env['cuda']} cudnn {env['cudnn']} python {env['python']} | {env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads | commit "
        f"{(env['code']['commit'] or '?')[:10]}{' (dirty)' if env['code']['dirty'] else ''}",
        flush=True,
    )
    print(
        f"bench: {s['model']}, batch {s['batch_sizes']}, paths {s['paths']}, "
        f"{results['settings']['data']} data, {s['windows']} windows x {s['window_steps']} steps "
        f"after {s['warmup_steps']} warm-up, reference num_workers={s['workers']}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        b = Bench(s, device, data_config(s, args.data_root), Path(tmp), Clock(device))
        run_sections(b, results, out)
    # K jobs as one pack vs one after another, the batch and model of the first loop row
    if args.pack:
        bs = s["batch_sizes"][0]
        results["pack"] = pack_rates(
            device, args.pack, s["model"], bs, s["pack_steps"], args.pack_graphs
        )
        save_json(results, out)
    results["summary"] = summarize(results)
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["wall_s"] = time.perf_counter() - t_start
    save_json(results, out)
    print(f"bench: wrote {out} ({env['wall_s']:.0f} s)", flush=True)
    return results


def failed(results: dict) -> bool:
    return "error" in (results.get("op_counts") or {})


def run_sections(b: Bench, results: dict, out: Path) -> None:
    s = b.s
    for bs in s["batch_sizes"]:
        pipeline, rows, runs = loop_rates(b, bs)
        results["input_pipeline"].append(pipeline)
        results["loop"] += rows
        if bs == s["batch_sizes"][0]:  # evaluation does not depend on the training batch
            results["evaluation"] += [evaluation(b, run, p) for p, run in runs.items()]
        for run in runs.values():
            close(run)
        del runs
        if any(PATHS[p][0] for p in s["paths"]):
            torch._dynamo.reset()  # compiled graphs of this batch size are not needed again
        if b.device.type == "cuda":
            torch.cuda.empty_cache()
        save_json(results, out)
    if s["e2e_epochs"]:
        for bs in s["batch_sizes"]:
            for p in s["paths"]:
                row = end_to_end(b, bs, p)
                if row is not None:
                    results["end_to_end"].append(row)
                    save_json(results, out)
    if s["count_ops"]:
        try:
            results["op_counts"] = op_counts(b)
        # the profiler differs across torch versions and devices: keep the timings regardless
        except Exception:
            results["op_counts"] = {"error": traceback.format_exc(limit=8)}
            print(f"bench: op counts failed:\n{results['op_counts']['error']}", flush=True)


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)
