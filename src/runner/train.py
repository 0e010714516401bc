"""The training loop, top to bottom in the order the algorithm happens.

For each optimizer step k at fractional epoch t = k / steps_per_epoch:
    η_t   = schedule(t)                       lr_t = lr·η_t
    g     = ∇ data loss (+ λ₂·θ when l2 > 0)
    θ     ← θ·(1 − d_t)                       decoupled decay, d_t by `optimizer.wd_scaling`
    θ     ← θ − Adam/SGD update(g, lr_t)
Losses stay on the device and are read in one transfer at logging points, so a GPU never waits
for the host inside the step. A run folder that holds a checkpoint continues from it, bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from runner import checkpoint
from runner import data as datasets
from runner.config import ConfigError, DataConfig, RunConfig
from runner.graphs import GraphedStep, step_tables
from runner.metrics import Recorder, flatten, read_metrics
from runner.models import build_resnet
from runner.optim import Optimizer, decoupled_rate, describe, normalized_lambda, rounding_note
from runner.oscillation import oscillation_block
from runner.schedules import make_schedule

log = logging.getLogger("runner")
VAL_BATCH = {"cuda": 1000, "cpu": 100}  # big batches feed a GPU; on CPU cores batch 100 is ~2x faster per image
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
# Settings that may change when a run continues; any other change would make it a different run.
RESUMABLE = ("epochs", "trainer.max_steps", "trainer.val_every", "trainer.log_every", "trainer.progress",
             "trainer.device", "trainer.compile", "trainer.compile_mode", "trainer.cuda_graphs", "log.histograms_every")


class Diverged(RuntimeError):
    """The training loss left the finite range or rose `trainer.diverge_factor`× above its start."""


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


def load_splits(d: DataConfig, seed: int) -> datasets.Splits:
    """The configured data set, with the held-out validation split and training subset applied."""
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
    return splits


def normalization(d: DataConfig, train_x: torch.Tensor):
    """(mean, std) for the loader: per channel, Keras' per-pixel mean image (no division), or none."""
    if d.normalize == "channel":
        return datasets.channel_stats(train_x)
    if d.normalize == "pixel_mean":
        return train_x.float().div(255).mean(0), None
    return None, None


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


@torch.no_grad()
def evaluate(model, loader, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy) over the whole loader, as device tensors."""
    model.eval()
    loss_sum = correct = count = 0
    for x, y in loader.epoch(0):
        with autocast:
            logits = model(x)
        loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        count += len(y)
    model.train()
    return loss_sum / count, correct.float() / count


def _tqdm_safe_logging():
    """Route log lines through tqdm.write while a bar is shown, so the two never garble each other."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger()])


class StopRequests:
    """Turns SIGTERM/SIGINT/SIGUSR1/SIGUSR2 into a flag the loop reads after each step; a second signal
    aborts at once. On exit the previous handlers come back (submitit's requeue handler among them)."""

    def __init__(self):
        self.signum, self.previous = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a final checkpoint")
        self.signum = signum
        log.warning("%s received: finishing this step, saving a checkpoint, then stopping", signal.Signals(signum).name)

    def __enter__(self):
        for name in SIGNALS:
            if hasattr(signal, name):
                self.previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def __exit__(self, *exc):
        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
        return False

    def pass_on(self) -> None:
        """Hand the signal to whoever handled it before us (submitit requeues the job), once our files are safe."""
        if self.signum is not None and self.signum != signal.SIGINT:
            prev = self.previous.get(signal.Signals(self.signum).name)
            if callable(prev):
                prev(self.signum, None)


def train(cfg: RunConfig, run_dir: Path, meta: dict | None = None, job_num: int = 0) -> dict:
    """Train one configuration into `run_dir` (continuing from its checkpoint if it has one) and
    return the summary, also written to summary.json. `job_num` is the job's index in a sweep."""
    run_dir = Path(run_dir)
    t_start = time.time()
    tr = cfg.trainer
    # Continue from the folder's own checkpoint, if any (a requeued job simply starts again here).
    ckpt_dir = run_dir / "checkpoints"
    state, notes = checkpoint.load_latest(ckpt_dir)
    for note in notes:
        log.warning(note)
    if state is not None:
        meta = {**(meta or {}), "resumed": resumable(state, cfg, ckpt_dir)}
    device = pick_device(tr.device, job_num)
    if tr.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA device and this run got {device.type}: "
                          "drop trainer.cuda_graphs=true")
    torch.manual_seed(cfg.seed)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    splits = load_splits(cfg.data, cfg.seed)
    cuda = device.type == "cuda"
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and cuda)
    channels_last = cuda if tr.channels_last is None else tr.channels_last
    # a CUDA graph cannot hold autocast's cache of cast weights (the PyTorch CUDA graph notes)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not tr.cuda_graphs) if bf16 else nullcontext()
    if cuda:
        torch.backends.cudnn.benchmark = not tr.deterministic

    model = build_resnet(cfg.model.depth, cfg.model.version, len(splits.classes), cfg.model.bn_momentum).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    d = cfg.data
    mean, std = normalization(d, splits.train_x)
    loader = lambda x, y, b, **kw: datasets.DeviceLoader(  # noqa: E731
        x, y, b, device=device, mean=mean, std=std, channels_last=channels_last, **kw)
    train_loader = loader(splits.train_x, splits.train_y, cfg.batch_size, shuffle=True, crop_padding=d.crop_padding,
                          flip=d.flip, pad_mode=d.pad_mode, seed=cfg.seed)
    val_batch = VAL_BATCH.get(device.type, 100)
    val_loader = loader(splits.val_x, splits.val_y, val_batch, shuffle=False)
    train_eval_loader = None
    if tr.train_eval:  # the same evaluation on a fixed, un-augmented training subset: comparable curves
        keep = datasets.stratified_subset(splits.train_y, min(len(splits.val_y), len(splits.train_y)))
        train_eval_loader = loader(splits.train_x[keep], splits.train_y[keep], val_batch, shuffle=False)
    spe = len(train_loader)
    total = cfg.epochs * spe if tr.max_steps is None else min(tr.max_steps, cfg.epochs * spe)
    val_every = tr.val_every or spe

    o = cfg.optimizer
    schedule = make_schedule(cfg.schedule, cfg.epochs)
    n_train = len(splits.train_y)
    decay = decoupled_rate(cfg.wd, o.wd_scaling, cfg.lr, normalized=o.wd_normalized, batch_size=cfg.batch_size,
                           n_train=n_train, period=schedule.period)
    l2 = normalized_lambda(cfg.l2, cfg.batch_size, n_train, cfg.epochs) if o.l2_normalized else cfg.l2
    opt = Optimizer(model, algorithm=o.algorithm, lr=cfg.lr, l2=l2, wd=cfg.wd, decay=decay, decay_on=o.decay_on,
                    betas=o.betas, eps=o.eps, momentum=o.momentum, nesterov=o.nesterov, capturable=tr.cuda_graphs)
    lam0 = normalized_lambda(cfg.wd, cfg.batch_size, n_train, schedule.period(0.0)) if o.wd_normalized else None
    sentences = describe(algorithm=o.algorithm, wd=cfg.wd, l2=l2, wd_scaling=o.wd_scaling, wd_normalized=o.wd_normalized,
                         n_tensors=len(opt.regularized), n_values=sum(p.numel() for p in opt.regularized), lam_now=lam0)
    # lr_t and d_t of every step: the records' values, the graph's tables, and the float32 rounding check
    lrs, decays = step_tables(schedule, lambda t, eta: decay(t, eta) if cfg.wd else 0.0, cfg.lr, spe, cfg.epochs * spe)
    sentences += [note] if (note := rounding_note(decays[:total])) else []
    position = {id(p): i for i, p in enumerate(opt.regularized)}  # per-stage norms reuse the global norm's per-tensor norms
    stage_index = {k: torch.tensor(i, device=device) for k, v in model.stage_parameters().items()
                   if (i := [position[id(p)] for _, p in v if id(p) in position])}

    step, best_acc, last_val, initial_loss = 0, None, None, None
    epoch_loss, n_epoch = torch.zeros((), device=device), 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best_acc, last_val, initial_loss = state["step"], state["best_acc"], state["last_val"], state["initial_loss"]
        epoch_loss.fill_(state["epoch_loss"])
        n_epoch = state["n_epoch"]
        checkpoint.set_rng_state(state["rng"])
        log.info("continuing from step %d (epoch %.2f) of %s", step, step / spe, ckpt_dir)

    log.info("%s on %s: %d params, %d train / %d val images, %d steps (%d per epoch)", cfg.model.name, device,
             n_params, n_train, len(splits.val_y), total, spe)
    for s in sentences:
        (log.warning if s == note else log.info)(s)

    # dynamic=False: the last, smaller batch gets its own specialised kernels instead of symbolic shapes for all
    forward = torch.compile(model, mode=tr.compile_mode, dynamic=False) if tr.compile else model
    graphed = GraphedStep(forward, opt, autocast, lrs, decays, start_step=step, capture=True) if tr.cuda_graphs else None
    recorder = Recorder(run_dir, resume_step=step, histograms_every=cfg.log.histograms_every)
    show_bar = sys.stderr.isatty() if tr.progress is None else tr.progress
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, dynamic_ncols=True, leave=False, file=sys.stderr)

    def save_checkpoint():
        checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                         "best_acc": best_acc, "last_val": last_val,
                         "initial_loss": initial_loss, "epoch_loss": epoch_loss.item(), "n_epoch": n_epoch,
                         "rng": checkpoint.rng_state(), "config": dataclasses.asdict(cfg)}, ckpt_dir)

    pending, status, last_finite, diverged_at = [], "completed", {}, None
    train_time = val_time = 0.0
    images, first_step_s, first_images = 0, None, 0

    def flush():
        """Write the pending per-step records with one device→host transfer; raise Diverged on a bad loss."""
        nonlocal pending, initial_loss, last_finite
        if not pending:
            return
        losses = torch.stack([p[3] for p in pending]).tolist()
        last = pending[-1]
        extra = {**opt.weight_stats(stage_index), "grad_norm": last[4]}
        extra = {k: v.item() for k, v in extra.items() if v is not None}
        for (k, lr_k, d_k, _, _), loss in zip(pending, losses):
            rec = {"step": k, "epoch": k / spe, "train_loss": loss, "lr": lr_k, "decay": d_k}
            if k == last[0]:
                rec.update(extra)
            if initial_loss is None and math.isfinite(loss):
                initial_loss = loss
            bad = not math.isfinite(loss) or (initial_loss is not None and loss > tr.diverge_factor * initial_loss)
            recorder.write(rec)
            if bad:
                pending = []
                raise Diverged(f"train_loss={loss} at step {k} (initial {initial_loss:.4g}, trainer.diverge_factor={tr.diverge_factor:g})")
            last_finite = rec
        recorder.histograms(model, last[0])
        pending = []
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{last[1]:.2e}", acc="-" if last_val is None else f"{last_val[1]:.3f}")
        elif step % tr.log_every == 0 or step == total:
            log.info("step %d/%d epoch %.2f loss %.4f lr %.3g", step, total, step / spe, losses[-1], last[1])

    def validate_now():
        nonlocal best_acc, last_val, val_time
        tick = time.time()
        vl, va = (v.item() for v in evaluate(forward, val_loader, autocast))
        rec = {"step": step, "epoch": step / spe, "val_loss": vl, "val_acc": va}
        if train_eval_loader is not None:
            tl, ta = (v.item() for v in evaluate(forward, train_eval_loader, autocast))
            rec.update(train_eval_loss=tl, train_eval_acc=ta)
        val_time += time.time() - tick
        last_val = (vl, va)
        best_acc = va if best_acc is None else max(best_acc, va)
        recorder.write(rec)
        if bar is None:
            log.info("step %d epoch %.2f val_loss %.4f val_acc %.4f", step, step / spe, vl, va)

    stop = StopRequests()
    try:
        with stop, (_tqdm_safe_logging() if bar is not None else nullcontext()):
            tick = time.time()
            while step < total and stop.signum is None:
                epoch, start = divmod(step, spe)
                if start == 0:
                    epoch_loss.zero_()
                    n_epoch = 0
                for x, y in train_loader.epoch(epoch, start_step=start):
                    log_point = (step + 1) % tr.log_every == 0
                    first = first_step_s is None
                    t0 = time.time() if first else 0.0
                    if graphed is None:
                        eta = schedule(step / spe)
                        lr_k = cfg.lr * eta
                        loss, d_t, grad_norm = train_step(forward, opt, x, y, step / spe, eta, autocast, want_grad_norm=log_point)
                    else:  # the same step, replayed as a CUDA graph; ‖g‖ is a buffer it rewrites, read at log points
                        lr_k, d_t = lrs[step], decays[step]
                        loss, grad_norm = graphed(x, y, step)
                        grad_norm = grad_norm if log_point else None
                    if first:  # includes torch.compile and cudnn autotuning: reported apart from the rate
                        if cuda:
                            torch.cuda.synchronize(device)
                        first_step_s, first_images = time.time() - t0, len(y)
                    step += 1
                    images += len(y)
                    epoch_loss += loss
                    n_epoch += 1
                    pending.append((step, lr_k, d_t, loss, grad_norm))
                    if bar is not None:
                        bar.update(1)
                    due_val = step % val_every == 0 or step == total
                    if due_val or log_point:
                        flush()
                    if due_val:
                        train_time += time.time() - tick
                        validate_now()
                        tick = time.time()
                    if step >= total or stop.signum is not None:
                        break
                flush()
                train_time += time.time() - tick
                if step % spe == 0 or step >= total or stop.signum is not None:
                    save_checkpoint()
                recorder.flush()
                tick = time.time()
            if stop.signum is not None and step < total:
                status = "interrupted"
    except Diverged as e:
        status, diverged_at = "diverged", step
        log.error("diverged: %s", e)
        if tr.on_diverge == "raise":
            raise
    except KeyboardInterrupt as e:
        status = "interrupted"
        log.warning("interrupted at step %d: %s", step, e)
    except BaseException:
        status = "failed"  # a bug or a fatal error: the summary still says where the run stopped
        raise
    finally:
        if bar is not None:
            bar.close()
        capture_s = graphed.capture_s if graphed is not None else 0.0
        summary = {
            "status": status,
            "n_params": n_params,
            "steps": step,
            "epochs": step / spe,
            "best_val_acc": best_acc,
            "final_val_acc": last_val[1] if last_val else None,
            "final_val_loss": last_val[0] if last_val else None,
            "final_train_loss": (epoch_loss / n_epoch).item() if n_epoch else None,
            "wall_time_s": time.time() - t_start,
            "train_time_s": train_time,
            "val_time_s": val_time,
            # the steady rate: the first step (compile, autotuning) is reported on its own
            "images_per_s": (images - first_images) / (train_time - first_step_s - capture_s)
            if step > 1 and train_time > first_step_s + capture_s else None,
            "first_step_s": first_step_s,
            "graph_capture_s": capture_s if graphed is not None else None,
            "device": torch.cuda.get_device_name(device) if cuda else device.type,
            "regularization": sentences,
            "hparams": dataclasses.asdict(cfg),
            **(meta or {}),
        }
        if status == "diverged":
            summary.update(diverged_at_step=diverged_at, last_finite=last_finite)
        recorder.close()
        summary["oscillation"] = oscillation_block(read_metrics(recorder.path), cfg.epochs)
        recorder.finish(summary)
        write_summary(run_dir, summary)
    log.info("%s after %d steps: best val acc %s, %.1f s", status, step, best_acc, summary["wall_time_s"])
    stop.pass_on()
    return summary


def resumable(state: dict, cfg: RunConfig, ckpt_dir: Path) -> dict:
    """What a continued run changes ({"from_step", "changed"}); CheckpointError if it would change the training."""
    changed = config_changes(state["config"], dataclasses.asdict(cfg))
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE}
    if refused:
        what = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in refused.items())
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} belongs to a run with other training settings ({what}). A continued run keeps them "
            f"(only {', '.join(RESUMABLE)} may change): drop those overrides, or start a new run in a new folder")
    for k, (a, b) in changed.items():
        log.info("continuing with %s changed: %r → %r", k, a, b)
    return {"from_step": state["step"], "changed": {k: list(v) for k, v in changed.items()}}


def config_changes(old: dict, new: dict) -> dict:
    """{dotted key: (old, new)} for every setting that differs between two resolved configs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k != "resume"}


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, replaced atomically so a reader never sees half a file."""
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, run_dir / "summary.json")
