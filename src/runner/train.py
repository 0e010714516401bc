"""The training loop, top to bottom in the order the algorithm happens.

For each optimizer step k at fractional epoch t = k / steps_per_epoch:
    η_t   = schedule(t)                       lr_t = lr·η_t
    g     = ∇ data loss (+ λ₂·θ when l2 > 0)
    θ     ← θ·(1 − d_t)                       decoupled decay, d_t by `optimizer.wd_scaling`
    θ     ← θ − Adam/SGD update(g, lr_t)
On CUDA the whole step is replayed as one CUDA graph by default (runner.graphs), the same update bit for bit.
Losses stay on the device and are read in one transfer at logging points, so a GPU never waits for the host
inside the step. A run folder that holds a checkpoint continues from it, bit for bit.

`train()` is setup → loop → summary. `loop()` yields after every step, so one process can also interleave
the steps of several runs; a single run just drains it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from runner import checkpoint, provenance
from runner import data as datasets
from runner.config import ConfigError, DataConfig, RunConfig, TrainerConfig, resumable_keys
from runner.evaluation import evaluate, recalibrated_bn
from runner.graphs import GraphedForward, GraphedStep, step_tables
from runner.interrupts import StopRequests
from runner.metrics import Recorder, flatten, read_metrics
from runner.models import build_resnet
from runner.optim import Optimizer, decoupled_rate, describe, normalized_lambda, rounding_note
from runner.oscillation import oscillation_block
from runner.schedules import Schedule, held_after, make_schedule
from runner.timing import LoopClock, split_time

log = logging.getLogger("runner")
VAL_BATCH = {"cuda": 1000, "cpu": 100}  # big batches feed a GPU; on CPU cores batch 100 is ~2x faster per image


class Diverged(RuntimeError):
    """The training loss left the finite range or rose `trainer.diverge_factor`× above its start."""


# ---------------------------------------------------------------- the run's state and records

@dataclass
class RunState:
    """Where the loop is and what it has seen: with the weights, optimizer and RNGs, a checkpoint's payload."""
    step: int = 0
    best_acc_running: float | None = None
    best_acc_recal: float | None = None
    last_val: dict | None = None  # the latest validation record
    initial_loss: float | None = None
    epoch_loss_sum: float = 0.0  # Σ train_loss over this epoch's steps so far (the summary's final_train_loss)
    epoch_steps: int = 0
    schedule_epochs: int | None = None  # the epochs the schedule is laid out for (trainer.extend_schedule=hold)


class StepRecord(NamedTuple):
    """One step's record, its tensors still on the device."""
    step: int  # steps done after this one
    lr: float  # lr_t as applied
    decay: float  # d_t
    loss: torch.Tensor
    grad_norm: torch.Tensor | None  # on logging steps only


class Records:
    """The steps' records on their way to metrics.jsonl: kept on the device until a logging point, then read in one
    transfer, checked for divergence, written, and summed into the epoch's mean loss."""

    def __init__(self, recorder: Recorder, opt: Optimizer, stage_index: dict, steps_per_epoch: int,
                 diverge_factor: float, state: RunState):
        self.recorder, self.opt, self.stage_index, self.spe = recorder, opt, stage_index, steps_per_epoch
        self.diverge_factor, self.state = diverge_factor, state
        self.pending: list[StepRecord] = []
        self.last_finite: dict | None = None

    def add(self, record: StepRecord) -> None:
        self.pending.append(record)

    def flush(self, model: nn.Module) -> float | None:
        """Write the pending records; raise Diverged on a bad loss. Returns the last loss (None if nothing pended)."""
        if not self.pending:
            return None
        pending, self.pending = self.pending, []
        last = pending[-1]
        extra = {**self.opt.weight_stats(self.stage_index), "grad_norm": last.grad_norm}
        extra = {k: v for k, v in extra.items() if v is not None}
        values = torch.cat([torch.stack([r.loss for r in pending]).double(),
                            torch.stack([v.double() for v in extra.values()])]).tolist()  # the host waits for the device here
        losses, extra = values[:len(pending)], dict(zip(extra, values[len(pending):]))
        s = self.state
        for r, loss in zip(pending, losses):
            rec = {"step": r.step, "epoch": r.step / self.spe, "train_loss": loss, "lr": r.lr, "decay": r.decay}
            if r is last:
                rec.update(extra)
            if s.initial_loss is None and math.isfinite(loss):
                s.initial_loss = loss
            self.recorder.write(rec)
            if not math.isfinite(loss) or (s.initial_loss is not None and loss > self.diverge_factor * s.initial_loss):
                raise Diverged(f"train_loss={loss} at step {r.step} (initial {s.initial_loss:.4g}, "
                               f"trainer.diverge_factor={self.diverge_factor:g})")
            self.last_finite = rec
            s.epoch_loss_sum += loss
            s.epoch_steps += 1
        self.recorder.histograms(model, last.step)
        return losses[-1]


class _Prefixed(logging.LoggerAdapter):
    """Log lines of one run among several in a process carry the run's name."""

    def process(self, msg, kwargs):
        return (f"[{self.extra['name']}] {msg}" if self.extra["name"] else msg), kwargs


@dataclass
class Run:
    """One training run, as `setup` builds it: what trains, on what, with what records."""
    cfg: RunConfig
    run_dir: Path
    device: torch.device
    path: dict  # how it runs: device, precision, compile, cuda_graphs, channels_last
    model: nn.Module  # the eager module: checkpoints, BatchNorm recalibration
    forward: Callable  # what trains: the model, or torch.compile's wrapper of it
    opt: Optimizer
    autocast: Any
    train_loader: datasets.DeviceLoader
    evals: dict  # "val" (and "train_eval") → DeviceLoader of padded, fixed-shape batches
    eval_forward: GraphedForward
    recal_images: torch.Tensor | None  # the fixed training images BatchNorm statistics are recomputed on
    schedule: Schedule
    lrs: list[float]  # lr_t and d_t of every step (the graph's tables, and the rounding check)
    decays: list[float]
    steps_per_epoch: int
    total: int
    val_every: int
    graphed: GraphedStep | None
    state: RunState
    records: Records
    recorder: Recorder
    info: dict  # what summary.json says about the run besides its results
    log: logging.LoggerAdapter
    bar: Any = None
    status: str = "completed"
    diverged_at: int | None = None
    clock: LoopClock = field(default_factory=LoopClock)
    epoch_time: list = field(default_factory=lambda: [0.0, 0])  # [seconds, images] of this epoch, in this process
    first_step_s: float | None = None
    val_times: list = field(default_factory=list)
    t_start: float = field(default_factory=time.time)


# ---------------------------------------------------------------- setup

def pick_device(name: str, job_num: int = 0) -> torch.device:
    """auto prefers cuda, then mps, then cpu; an explicit device that is not there is a user error.
    With several GPUs, sweep job i runs on GPU i mod n (parallel jobs of a joblib sweep spread out)."""
    have = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        name = next(k for k in ("cuda", "mps", "cpu") if have[k])
    if not have[name]:
        raise ConfigError(f"trainer.device={name!r} is not available on this machine: use trainer.device=auto or cpu")
    if name == "cuda":
        return torch.device("cuda", job_num % torch.cuda.device_count())
    return torch.device(name)


def execution_path(tr: TrainerConfig, device: torch.device) -> dict:
    """The speed settings as they apply on `device`: null (auto) means on for CUDA. Graphs step aside for a
    compile mode that records its own."""
    cuda = device.type == "cuda"
    compiled = cuda if tr.compile is None else tr.compile
    own_graphs = compiled and tr.compile_mode in ("reduce-overhead", "max-autotune")
    graphs = (cuda and not own_graphs) if tr.cuda_graphs is None else tr.cuda_graphs
    if graphs and not cuda:
        raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA device and this run got {device.type}: "
                          "drop trainer.cuda_graphs=true")
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and cuda)
    return {"device": str(device), "precision": "bf16" if bf16 else "fp32", "compile": compiled,
            "compile_mode": tr.compile_mode if compiled else None, "cuda_graphs": graphs,
            "channels_last": cuda if tr.channels_last is None else tr.channels_last}


def load_splits(d: DataConfig, seed: int, cache: dict | None = None) -> datasets.Splits:
    """The configured data set, with the held-out validation split and training subset applied. `cache` (runner.pack's)
    hands out splits already loaded for the same data settings: runs only read them, so they may share one copy."""
    key = (repr(d), seed if d.name == "synthetic" else None)  # synthetic images are drawn from the run's seed
    if cache is not None and key in cache:
        return cache[key]
    if d.name == "cifar10":
        splits = datasets.load_cifar10(d.root, download=d.download, verify=d.verify)
    elif d.name == "image_folder":
        splits = datasets.load_image_folder(d.root)
    else:
        splits = datasets.make_synthetic(n_train=d.n_train, n_val=d.n_val, seed=seed)
    if d.val_split:
        splits = datasets.hold_out(splits, d.val_split)
    if d.subset:
        if d.subset > len(splits.train_y):
            raise ConfigError(f"data.subset={d.subset} is larger than the {len(splits.train_y)} training images: "
                              "lower it or use data.subset=null")
        keep = datasets.stratified_subset(splits.train_y, d.subset)
        splits = dataclasses.replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep])
    if cache is not None:
        cache[key] = splits
    return splits


def normalization(d: DataConfig, train_x: torch.Tensor):
    """(mean, std) for the loader: per channel, Keras' per-pixel mean image (no division), or none."""
    if d.normalize == "channel":
        return datasets.channel_stats(train_x)
    if d.normalize == "pixel_mean":
        return train_x.float().div(255).mean(0), None
    return None, None


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
            f"(only {', '.join(resumable)} may change): drop those overrides, or start a new run in a new folder")
    if "state" in saved:
        state = RunState(**saved["state"])
    else:  # a checkpoint of the runner before RunState
        lv = saved["last_val"]
        state = RunState(step=saved["step"], best_acc_running=saved["best_acc"], initial_loss=saved["initial_loss"],
                         last_val=None if lv is None else {"val_loss": lv[0], "val_acc": lv[1]},
                         epoch_loss_sum=saved["epoch_loss"] * saved["n_epoch"], epoch_steps=saved["n_epoch"])
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
                f"{cfg.epochs} epochs: lr and decay jump to where the new schedule is at step {state.step})")
        if how == "rescale":
            state.schedule_epochs = cfg.epochs
    for k, (a, b) in changed.items():
        log.info("continuing with %s changed: %r → %r", k, a, b)
    return state, {"from_step": state.step, "changed": {k: list(v) for k, v in changed.items()}, "schedule": how}


def config_changes(old: dict, new: dict) -> dict:
    """{dotted key: (old, new)} for every setting that differs between two resolved configs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k != "resume"}


def regularization(cfg: RunConfig, n_train: int, spe: int, schedule_epochs: int):
    """(schedule, decay(t, η), λ₂, λ now for the description): the schedule laid out for `schedule_epochs`
    and held at its last step beyond them."""
    o = cfg.optimizer
    schedule = make_schedule(cfg.schedule, schedule_epochs)
    if schedule_epochs != cfg.epochs:
        schedule = held_after(schedule, (schedule_epochs * spe - 1) / spe)
    decay = decoupled_rate(cfg.wd, o.wd_scaling, cfg.lr, normalized=o.wd_normalized, batch_size=cfg.batch_size,
                           n_train=n_train, period=schedule.period)
    l2 = normalized_lambda(cfg.l2, cfg.batch_size, n_train, schedule_epochs) if o.l2_normalized else cfg.l2
    lam0 = normalized_lambda(cfg.wd, cfg.batch_size, n_train, schedule.period(0.0)) if o.wd_normalized else None
    return schedule, decay, l2, lam0


def setup(cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0, name: str = "",
          data_cache: dict | None = None) -> Run:
    """Everything a run needs, continued from the folder's own checkpoint if it has one. `name` prefixes the run's
    log lines and `data_cache` shares loaded data sets (load_splits) among the runs of one process (runner.pack)."""
    run_dir, tr, t_start = Path(run_dir), cfg.trainer, time.time()
    ckpt_dir = run_dir / "checkpoints"
    saved, notes = checkpoint.load_latest(ckpt_dir)  # a requeued job simply starts again here
    for note in notes:
        log.warning(note)
    if saved is None and notes:  # starting over would write a second history into the same records
        raise checkpoint.CheckpointError(
            f"no checkpoint in {ckpt_dir} can be read ({'; '.join(notes)}): to start this run again from step 0, "
            f"move {run_dir} away (or delete it) and run the same command")
    state, info = RunState(schedule_epochs=cfg.epochs), {**(meta or {})}
    if saved is not None:
        state, info["resumed"] = resume_state(saved, cfg, ckpt_dir)
    device = pick_device(tr.device, job_num)
    path = execution_path(tr, device)
    torch.manual_seed(cfg.seed)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not tr.deterministic
    splits = load_splits(cfg.data, cfg.seed, data_cache)
    # a CUDA graph cannot hold autocast's cache of cast weights (the PyTorch CUDA graph notes)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not path["cuda_graphs"])
                if path["precision"] == "bf16" else nullcontext())

    model = build_resnet(cfg.model.depth, cfg.model.version, len(splits.classes), cfg.model.bn_momentum).to(device)
    if path["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    train_loader, evals, recal_images = make_loaders(cfg, splits, device, path["channels_last"])
    spe, n_train = len(train_loader), len(splits.train_y)
    total = cfg.epochs * spe if tr.max_steps is None else min(tr.max_steps, cfg.epochs * spe)

    o = cfg.optimizer
    schedule, decay, l2, lam0 = regularization(cfg, n_train, spe, state.schedule_epochs)
    opt = Optimizer(model, algorithm=o.algorithm, lr=cfg.lr, l2=l2, wd=cfg.wd, decay=decay, decay_on=o.decay_on,
                    betas=o.betas, eps=o.eps, momentum=o.momentum, nesterov=o.nesterov, capturable=path["cuda_graphs"])
    sentences = describe(algorithm=o.algorithm, wd=cfg.wd, l2=l2, wd_scaling=o.wd_scaling, wd_normalized=o.wd_normalized,
                         n_tensors=len(opt.regularized), n_values=sum(p.numel() for p in opt.regularized), lam_now=lam0)
    lrs, decays = step_tables(schedule, lambda t, eta: decay(t, eta) if cfg.wd else 0.0, cfg.lr, spe, cfg.epochs * spe)
    note = rounding_note(decays[:total])
    sentences += [note] if note else []
    position = {id(p): i for i, p in enumerate(opt.regularized)}  # per-stage norms reuse the global norm's parts
    stage_index = {k: torch.tensor(i, device=device) for k, v in model.stage_parameters().items()
                   if (i := [position[id(p)] for _, p in v if id(p) in position])}
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        checkpoint.set_rng_state(saved["rng"])
        log.info("continuing from step %d (epoch %.2f) of %s", state.step, state.step / spe, ckpt_dir)

    # dynamic=False: one batch shape per phase (data.drop_last, padded validation), compiled once each
    forward = torch.compile(model, mode=tr.compile_mode, dynamic=False) if path["compile"] else model
    graphed = (GraphedStep(forward, opt, autocast, lrs, decays, start_step=state.step, capture=True)
               if path["cuda_graphs"] else None)
    recorder = Recorder(run_dir, resume_step=state.step, histograms_every=cfg.log.histograms_every)
    info.update(n_params=sum(p.numel() for p in model.parameters() if p.requires_grad), regularization=sentences,
                data={"name": cfg.data.name, "root": cfg.data.root, "n_train": n_train, "n_val": len(splits.val_y),
                      "fingerprint": datasets.fingerprint(splits)},
                code=provenance.code_version(), env=provenance.environment(device), path=path,
                setup_s=time.time() - t_start)
    run = Run(cfg=cfg, run_dir=run_dir, device=device, path=path, model=model, forward=forward, opt=opt,
              autocast=autocast, train_loader=train_loader, evals=evals,
              eval_forward=GraphedForward(forward, autocast, capture=path["cuda_graphs"]), recal_images=recal_images,
              schedule=schedule, lrs=lrs, decays=decays, steps_per_epoch=spe, total=total,
              val_every=tr.val_every or spe, graphed=graphed, state=state,
              records=Records(recorder, opt, stage_index, spe, tr.diverge_factor, state), recorder=recorder,
              info=info, log=_Prefixed(log, {"name": name}), t_start=t_start)
    run.log.info("%s on %s (%s%s%s): %d params, %d train / %d val images, %d steps (%d per epoch)", cfg.model.name,
                 device, path["precision"], ", compiled" if path["compile"] else "",
                 ", CUDA graphs" if path["cuda_graphs"] else "", info["n_params"], n_train, len(splits.val_y), total, spe)
    for s in sentences:
        (run.log.warning if s == note else run.log.info)(s)
    recorder.start(dataclasses.asdict(cfg), info.get("choices"))
    return run


def make_loaders(cfg: RunConfig, splits: datasets.Splits, device: torch.device, channels_last: bool):
    """(training loader, {"val", "train_eval"} evaluation loaders, BatchNorm recalibration images or None)."""
    d, tr = cfg.data, cfg.trainer
    mean, std = normalization(d, splits.train_x)

    def loader(x, y, batch_size, **kw):
        return datasets.DeviceLoader(x, y, batch_size, device=device, mean=mean, std=std, channels_last=channels_last,
                                     **kw)

    train = loader(splits.train_x, splits.train_y, cfg.batch_size, shuffle=True, crop_padding=d.crop_padding,
                   flip=d.flip, pad_mode=d.pad_mode, seed=cfg.seed, drop_last=d.drop_last)
    val_batch = VAL_BATCH.get(device.type, 100)
    evals = {"val": loader(splits.val_x, splits.val_y, val_batch, shuffle=False, pad_last=True)}
    n_train = len(splits.train_y)
    if tr.train_eval:  # the same evaluation on a fixed, un-augmented training subset: comparable curves
        keep = datasets.stratified_subset(splits.train_y, min(len(splits.val_y), n_train))
        evals["train_eval"] = loader(splits.train_x[keep], splits.train_y[keep], val_batch, shuffle=False,
                                     pad_last=True)
    recal = None
    if tr.bn_recalibrate:
        n = min(tr.bn_recalibrate, n_train)
        if n < tr.bn_recalibrate:
            log.info("trainer.bn_recalibrate=%d: the training set has %d images, recalibrating on all of them",
                     tr.bn_recalibrate, n)
        keep = datasets.stratified_subset(splits.train_y, n)
        recal = next(loader(splits.train_x[keep], splits.train_y[keep], n, shuffle=False).epoch(0))[0]
    return train, evals, recal


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
        run.log.info("step %d/%d epoch %.2f loss %.4f lr %.3g", s.step, run.total, s.step / run.steps_per_epoch,
                     loss, lr)


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
                values[f"{name}_loss_recal"], values[f"{name}_acc_recal"] = evaluate(run.model, run.eval_forward,
                                                                                      loader)
        rec = {"step": s.step, "epoch": s.step / run.steps_per_epoch,
               **dict(zip(values, torch.stack(list(values.values())).tolist()))}
        improved = run.recal_images is None and (s.best_acc_running is None or rec["val_acc"] > s.best_acc_running)
        improved |= run.recal_images is not None and (s.best_acc_recal is None or rec["val_acc_recal"] > s.best_acc_recal)
        if improved:  # inside the recalibration: best.pt holds the statistics its accuracy was measured with
            checkpoint.save_best(run.run_dir / "checkpoints", {
                "model": run.model.state_dict(), "step": s.step, "val_acc": headline(run, rec)[1],
                "val_metric": "recalibrated" if run.recal_images is not None else "running",
                "config": dataclasses.asdict(run.cfg)})
    s.best_acc_running = max(rec["val_acc"], s.best_acc_running or -1.0)
    if "val_acc_recal" in rec:
        s.best_acc_recal = max(rec["val_acc_recal"], s.best_acc_recal or -1.0)
    s.last_val = rec
    run.recorder.write(rec)
    run.val_times.append(time.perf_counter() - tick)
    run.clock.restart()
    loss, acc = headline(run, rec)
    more = f" (running statistics: loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f})" if "val_acc_recal" in rec else ""
    run.log.info("step %d epoch %.2f val_loss %.4f val_acc %.4f%s", s.step, rec["epoch"], loss, acc, more)


def end_epoch(run: Run) -> None:
    """Flush, record the epoch's training time, and checkpoint at the epoch's end (or where the run stops)."""
    flush(run)
    s = run.state
    if s.step % run.steps_per_epoch == 0 and run.epoch_time[1]:
        run.recorder.write({"step": s.step, "epoch": s.step / run.steps_per_epoch,
                            "epoch_train_s": run.epoch_time[0], "epoch_images": run.epoch_time[1]})
        run.epoch_time = [0.0, 0]
    save_checkpoint(run)
    run.recorder.flush()
    run.clock.restart()


def save_checkpoint(run: Run) -> None:
    checkpoint.save({"step": run.state.step, "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                     "state": dataclasses.asdict(run.state), "rng": checkpoint.rng_state(),
                     "config": dataclasses.asdict(run.cfg)}, run.run_dir / "checkpoints")


# ---------------------------------------------------------------- the run as a whole

def train(cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0) -> dict:
    """Train one configuration into `run_dir` (continuing from its checkpoint if it has one) and return the
    summary, also written to summary.json. `job_num` is the job's index in a sweep."""
    run = setup(cfg, Path(run_dir), meta, job_num)
    show_bar = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    stop = StopRequests()
    try:
        with stop, (ProgressBar(run) if show_bar else nullcontext()):
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
    run.log.info("%s after %d steps: best val acc %s (%s), %.1f s", summary["status"], run.state.step,
                 "-" if best is None else f"{best:.4f}", summary["val_metric"], summary["wall_time_s"])
    return summary


def summarize(run: Run) -> dict:
    """summary.json: the run's results, its time split honestly (runner.timing), and what ran."""
    s, cfg = run.state, run.cfg
    recal = run.recal_images is not None
    last = s.last_val or {}
    times = split_time(run.clock.windows)
    rate = times["images_per_s"]
    capture_s = run.graphed.capture_s if run.graphed is not None else 0.0
    compile_s = (max(0.0, run.first_step_s - cfg.batch_size / rate)
                 if run.path["compile"] and run.first_step_s and rate else 0.0)
    startup = {"first_step_s": run.first_step_s, "compile_s": compile_s, "capture_s": capture_s,
               "warmup_s": max(0.0, (times["startup_s"] or 0.0) - compile_s - capture_s),
               "eval_capture_s": run.eval_forward.capture_s}
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
