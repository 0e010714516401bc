"""A training run: its state, what it is made of, and how `setup` builds it from a validated config.

`setup` applies the configuration once: the device and its speed settings (null = auto: compile and CUDA graphs on
CUDA), the data set and its loaders, the model, the optimizer with its L2 term and decoupled decay, the schedule
and the per-step tables of lr_t and d_t, the records, and the folder's own checkpoint if it has one. The loop that
trains a Run is runner.engine.loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from runner.config import ConfigError, DataConfig, RunConfig, TrainerConfig, resumable_keys
from runner.core import data as datasets
from runner.core.models import build_resnet
from runner.core.schedules import Schedule, held_after, make_schedule
from runner.core.update_rule import Optimizer, decoupled_rate, describe, normalized_lambda, rounding_note
from runner.engine import checkpoint, provenance
from runner.engine.records import Recorder, flatten
from runner.engine.step import GraphedForward, GraphedStep, step_tables
from runner.engine.timing import LoopClock

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

    def __init__(
        self,
        recorder: Recorder,
        opt: Optimizer,
        stage_index: dict,
        steps_per_epoch: int,
        diverge_factor: float,
        state: RunState,
    ):
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
        values = torch.cat(
            [torch.stack([r.loss for r in pending]).double(), torch.stack([v.double() for v in extra.values()])]
        ).tolist()  # the host waits for the device here
        losses, extra = values[: len(pending)], dict(zip(extra, values[len(pending) :]))
        s = self.state
        for r, loss in zip(pending, losses):
            rec = {"step": r.step, "epoch": r.step / self.spe, "train_loss": loss, "lr": r.lr, "decay": r.decay}
            if r is last:
                rec.update(extra)
            if s.initial_loss is None and math.isfinite(loss):
                s.initial_loss = loss
            self.recorder.write(rec)
            if not math.isfinite(loss) or (s.initial_loss is not None and loss > self.diverge_factor * s.initial_loss):
                raise Diverged(
                    f"train_loss={loss} at step {r.step} (initial {s.initial_loss:.4g}, "
                    f"trainer.diverge_factor={self.diverge_factor:g})"
                )
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
        raise ConfigError(
            f"trainer.cuda_graphs=true needs a CUDA device and this run got {device.type}: "
            "drop trainer.cuda_graphs=true"
        )
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and cuda)
    return {
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "compile": compiled,
        "compile_mode": tr.compile_mode if compiled else None,
        "cuda_graphs": graphs,
        "channels_last": cuda if tr.channels_last is None else tr.channels_last,
    }


def load_splits(d: DataConfig, seed: int, cache: dict | None = None) -> datasets.Splits:
    """The configured data set, with the held-out validation split and training subset applied. `cache` (sweeps.pack's)
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
            raise ConfigError(
                f"data.subset={d.subset} is larger than the {len(splits.train_y)} training images: "
                "lower it or use data.subset=null"
            )
        keep = datasets.stratified_subset(splits.train_y, d.subset)
        splits = dataclasses.replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep])
    if cache is not None:
        cache[key] = splits
    return splits


def normalization(d: DataConfig, splits: datasets.Splits):
    """(mean, std) for the loader: per channel, Keras' per-pixel mean image (no division), or none."""
    if d.normalize == "channel":
        return splits.train_channel_stats
    if d.normalize == "pixel_mean":
        return splits.train_x.float().div(255).mean(0), None
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


def regularization(cfg: RunConfig, n_train: int, spe: int, schedule_epochs: int):
    """(schedule, decay(t, η), λ₂, λ now for the description): the schedule laid out for `schedule_epochs`
    and held at its last step beyond them."""
    o = cfg.optimizer
    schedule = make_schedule(cfg.schedule, schedule_epochs)
    if schedule_epochs != cfg.epochs:
        schedule = held_after(schedule, (schedule_epochs * spe - 1) / spe)
    decay = decoupled_rate(
        cfg.wd,
        o.wd_scaling,
        cfg.lr,
        normalized=o.wd_normalized,
        batch_size=cfg.batch_size,
        n_train=n_train,
        period=schedule.period,
    )
    l2 = normalized_lambda(cfg.l2, cfg.batch_size, n_train, schedule_epochs) if o.l2_normalized else cfg.l2
    lam0 = normalized_lambda(cfg.wd, cfg.batch_size, n_train, schedule.period(0.0)) if o.wd_normalized else None
    return schedule, decay, l2, lam0


def setup(
    cfg: RunConfig,
    run_dir: Path,
    meta: dict | None = None,
    job_num: int = 0,
    name: str = "",
    data_cache: dict | None = None,
) -> Run:
    """Everything a run needs, continued from the folder's own checkpoint if it has one. `name` prefixes the run's
    log lines and `data_cache` shares loaded data sets (load_splits) among the runs of one process (sweeps.pack)."""
    run_dir, tr, t_start = Path(run_dir), cfg.trainer, time.time()
    saved, state, info = saved_state(cfg, run_dir, meta)
    device = pick_device(tr.device, job_num)
    path = execution_path(tr, device)
    torch.manual_seed(cfg.seed)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not tr.deterministic
    splits = load_splits(cfg.data, cfg.seed, data_cache)
    # a CUDA graph cannot hold autocast's cache of cast weights (the PyTorch CUDA graph notes)
    bf16 = path["precision"] == "bf16"
    autocast = (
        torch.autocast(device.type, torch.bfloat16, cache_enabled=not path["cuda_graphs"]) if bf16 else nullcontext()
    )

    model = build_resnet(cfg.model.depth, cfg.model.version, len(splits.classes), cfg.model.bn_momentum).to(device)
    if path["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    train_loader, evals, recal_images = make_loaders(cfg, splits, device, path["channels_last"])
    spe, n_train = len(train_loader), len(splits.train_y)
    total = cfg.epochs * spe if tr.max_steps is None else min(tr.max_steps, cfg.epochs * spe)
    opt, schedule, lrs, decays, sentences = make_optimizer(cfg, model, n_train, spe, total, state, path)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        checkpoint.set_rng_state(saved["rng"])
        log.info("continuing from step %d (epoch %.2f) of %s", state.step, state.step / spe, run_dir / "checkpoints")

    # dynamic=False: one batch shape per phase (data.drop_last, padded validation), compiled once each
    forward = torch.compile(model, mode=tr.compile_mode, dynamic=False) if path["compile"] else model
    graphed = (
        GraphedStep(forward, opt, autocast, lrs, decays, state.step, capture=True) if path["cuda_graphs"] else None
    )
    recorder = Recorder(run_dir, resume_step=state.step, histograms_every=cfg.log.histograms_every)
    info.update(
        n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        regularization=sentences,
        data={"name": cfg.data.name, "root": cfg.data.root, "n_train": n_train, "n_val": len(splits.val_y),
              "fingerprint": splits.fingerprint},
        code=provenance.code_version(),
        env=provenance.environment(device),
        path=path,
        setup_s=time.time() - t_start,
    )  # fmt: skip
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, path=path, model=model, forward=forward, opt=opt, autocast=autocast,
        train_loader=train_loader, evals=evals, recal_images=recal_images,
        eval_forward=GraphedForward(forward, autocast, capture=path["cuda_graphs"]),
        schedule=schedule, lrs=lrs, decays=decays, steps_per_epoch=spe, total=total, val_every=tr.val_every or spe,
        graphed=graphed, state=state,
        records=Records(recorder, opt, stage_index(model, opt, device), spe, tr.diverge_factor, state),
        recorder=recorder, info=info, log=_Prefixed(log, {"name": name}), t_start=t_start,
    )  # fmt: skip
    what = ", ".join([path["precision"]] + ["compiled"] * path["compile"] + ["CUDA graphs"] * path["cuda_graphs"])
    run.log.info("%s on %s (%s): %d params, %d train / %d val images, %d steps (%d per epoch)", cfg.model.name, device,
                 what, info["n_params"], n_train, len(splits.val_y), total, spe)  # fmt: skip
    for sentence in sentences:
        (run.log.warning if sentence.startswith("float32 rounding") else run.log.info)(sentence)
    recorder.start(dataclasses.asdict(cfg), info.get("choices"))
    return run


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


def make_optimizer(cfg: RunConfig, model: nn.Module, n_train: int, spe: int, total: int, state: RunState, path: dict):
    """(Optimizer, schedule, lr_t and d_t of every step, the sentences that say what regularizes how)."""
    o = cfg.optimizer
    schedule, decay, l2, lam0 = regularization(cfg, n_train, spe, state.schedule_epochs)
    opt = Optimizer(model, algorithm=o.algorithm, lr=cfg.lr, l2=l2, wd=cfg.wd, decay=decay, decay_on=o.decay_on,
                    betas=o.betas, eps=o.eps, momentum=o.momentum, nesterov=o.nesterov,
                    capturable=path["cuda_graphs"])  # fmt: skip
    sentences = describe(algorithm=o.algorithm, wd=cfg.wd, l2=l2, wd_scaling=o.wd_scaling,
                         wd_normalized=o.wd_normalized, n_tensors=len(opt.regularized),
                         n_values=sum(p.numel() for p in opt.regularized), lam_now=lam0)  # fmt: skip
    lrs, decays = step_tables(schedule, lambda t, eta: decay(t, eta) if cfg.wd else 0.0, cfg.lr, spe, cfg.epochs * spe)
    note = rounding_note(decays[:total])
    return opt, schedule, lrs, decays, sentences + ([note] if note else [])


def stage_index(model: nn.Module, opt: Optimizer, device: torch.device) -> dict[str, torch.Tensor]:
    """{stage: positions of its regularized tensors in opt.regularized}: per-stage norms reuse the global norm's."""
    position = {id(p): i for i, p in enumerate(opt.regularized)}
    return {
        k: torch.tensor(i, device=device)
        for k, v in model.stage_parameters().items()
        if (i := [position[id(p)] for _, p in v if id(p) in position])
    }


def make_loaders(cfg: RunConfig, splits: datasets.Splits, device: torch.device, channels_last: bool):
    """(training loader, {"val", "train_eval"} evaluation loaders, BatchNorm recalibration images or None)."""
    d, tr = cfg.data, cfg.trainer
    mean, std = normalization(d, splits)

    def loader(x, y, batch_size, **kw):
        return datasets.DeviceLoader(
            x, y, batch_size, device=device, mean=mean, std=std, channels_last=channels_last, **kw
        )

    train = loader(
        splits.train_x,
        splits.train_y,
        cfg.batch_size,
        shuffle=True,
        crop_padding=d.crop_padding,
        flip=d.flip,
        pad_mode=d.pad_mode,
        seed=cfg.seed,
        drop_last=d.drop_last,
    )
    val_batch = VAL_BATCH.get(device.type, 100)
    evals = {"val": loader(splits.val_x, splits.val_y, val_batch, shuffle=False, pad_last=True)}
    n_train = len(splits.train_y)
    if tr.train_eval:  # the same evaluation on a fixed, un-augmented training subset: comparable curves
        keep = datasets.stratified_subset(splits.train_y, min(len(splits.val_y), n_train))
        evals["train_eval"] = loader(
            splits.train_x[keep], splits.train_y[keep], val_batch, shuffle=False, pad_last=True
        )
    recal = None
    if tr.bn_recalibrate:
        n = min(tr.bn_recalibrate, n_train)
        if n < tr.bn_recalibrate:
            log.info(
                "trainer.bn_recalibrate=%d: the training set has %d images, recalibrating on all of them",
                tr.bn_recalibrate,
                n,
            )
        keep = datasets.stratified_subset(splits.train_y, n)
        recal = next(loader(splits.train_x[keep], splits.train_y[keep], n, shuffle=False).epoch(0))[0]
    return train, evals, recal
