"""Build a run from a validated config: `setup` applies the configuration once.

The device and its speed settings (null = auto: compile and CUDA graphs on CUDA), the data set and its loaders,
the model, the optimizer with its L2 term and decoupled decay, the step plan (core.step_plan: what every step
applies), the step (eager or graphed), the records, and the folder's own checkpoint if it has one
(engine.resume). The loop that trains the Run is engine.loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from runner.config import ConfigError, DataConfig, RunConfig, TrainerConfig
from runner.core import data as datasets
from runner.core.headline import Headline
from runner.core.models import build_resnet
from runner.core.step_plan import StepPlan, plan_steps
from runner.core.update_rule import Optimizer, describe, rounding_note
from runner.engine import checkpoint, lock, provenance
from runner.engine.records import Recorder, Records
from runner.engine.resume import saved_state
from runner.engine.run import Run
from runner.engine.state import RunState
from runner.engine.step import EagerStep, GraphedForward, GraphedStep

log = logging.getLogger("runner")
VAL_BATCH = {"cuda": 1000, "cpu": 100}  # big batches feed a GPU; on CPU cores batch 100 is ~2x faster per image


class _Prefixed(logging.LoggerAdapter):
    """Log lines of one run among several in a process carry the run's name."""

    def process(self, msg, kwargs):
        return (f"[{self.extra['name']}] {msg}" if self.extra["name"] else msg), kwargs


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


def use_device(device: torch.device) -> torch.device:
    """Make a CUDA device the current one: what torch takes without a device (a capture's sync and memory pool,
    a new stream, cuDNN's handle) then points at this run's GPU, not GPU 0."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def execution_path(tr: TrainerConfig, device: torch.device) -> dict:
    """The speed settings as they apply on `device`: null (auto) means on for CUDA (bf16: on a CUDA
    card that computes it natively). Graphs step aside for a compile mode that records its own."""
    cuda = device.type == "cuda"
    compiled = cuda if tr.compile is None else tr.compile
    own_graphs = compiled and tr.compile_mode in ("reduce-overhead", "max-autotune")
    graphs = (cuda and not own_graphs) if tr.cuda_graphs is None else tr.cuda_graphs
    if graphs and not cuda:
        raise ConfigError(
            f"trainer.cuda_graphs=true needs a CUDA device and this run got {device.type}: "
            "drop trainer.cuda_graphs=true"
        )
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and cuda and native_bf16(device))
    if bf16 and cuda and not native_bf16(device):
        p = torch.cuda.get_device_properties(device)
        raise ConfigError(
            f"trainer.precision=bf16: {p.name} ({device}, compute capability {p.major}.{p.minor}) "
            "has no native bfloat16 (it needs 8.0 or later) and torch would emulate it, more "
            "slowly than fp32: use trainer.precision=auto (fp32 on this card) or fp32"
        )
    return {
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "compile": compiled,
        "compile_mode": tr.compile_mode if compiled else None,
        "cuda_graphs": graphs,
        "channels_last": cuda if tr.channels_last is None else tr.channels_last,
    }


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA `device` computes bfloat16 natively: torch.cuda.is_bf16_supported(
    including_emulation=False)'s rule (compute capability 8.0 or later; ROCm always), for this
    device rather than the current one. Older cards emulate it, more slowly than float32."""
    return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8


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
        splits = datasets.make_synthetic(n_train=d.n_train or 2000, n_val=d.n_val or 500, seed=seed)
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
    if d.val_subset:
        splits = val_subset(splits, d.val_subset)
    check_classes(d, splits)
    if cache is not None:
        cache[key] = splits
    return splits


def check_classes(d: DataConfig, splits: datasets.Splits) -> None:
    """A training set of one class is refused: every prediction would be right, and accuracy 1.0 would mean nothing."""
    if splits.train_y.unique().numel() < 2:
        raise ConfigError(
            f"data={d.name}: its {len(splits.train_y)} training images hold one class or none: give a data set with "
            "two or more classes (and a data.subset large enough to keep them)"
        )


def val_subset(splits: datasets.Splits, n: int) -> datasets.Splits:
    """The first n validation images, stratified by class (data.val_subset): the same ones at every validation."""
    if n > len(splits.val_y):
        raise ConfigError(
            f"data.val_subset={n} is larger than the {len(splits.val_y)} validation images: "
            "lower it or use data.val_subset=null"
        )
    keep = datasets.stratified_subset(splits.val_y, n)
    return dataclasses.replace(splits, val_x=splits.val_x[keep], val_y=splits.val_y[keep])


def inference(d: DataConfig, splits: datasets.Splits) -> dict:
    """What a user needs besides the weights to run best.pt on new images: the class names in label order and the
    input transform, x = (RGB uint8 / 255 − mean) / std (mean per channel, or a (C, H, W) image; std None = 1)."""
    mean, std = normalization(d, splits)
    return {"classes": list(splits.classes), "normalize": d.normalize, "mean": mean, "std": std,
            "image_size": list(splits.train_x.shape[1:])}  # fmt: skip


def normalization(d: DataConfig, splits: datasets.Splits):
    """(mean, std) for the loader: per channel, Keras' per-pixel mean image (no division), or none."""
    if d.normalize == "channel":
        mean, std = splits.train_channel_stats
        flat = [c for c, s in enumerate(std) if s < 1e-6]  # one grey level is 1/255: below 1e-6 is round-off of 0
        if flat:  # (x − mean)/0 is not a number: the first step would diverge
            raise ConfigError(
                f"data.normalize=channel: channel {flat[0]} of the {len(splits.train_y)} training images is "
                "constant (std 0), so it cannot be divided by its std: use data.normalize=pixel_mean or none"
            )
        return mean, std
    if d.normalize == "pixel_mean":
        return splits.train_pixel_mean, None
    return None, None


def setup(
    cfg: RunConfig,
    run_dir: Path,
    meta: dict | None = None,
    job_num: int = 0,
    name: str = "",
    data_cache: dict | None = None,
) -> Run:
    """Everything a run needs, continued from the folder's own checkpoint if it has one. `name` prefixes the run's
    log lines and `data_cache` shares loaded data sets (load_splits) among the runs of one process (sweeps.pack);
    a benchmark passes one to time runs on data it loaded itself."""
    run_dir, tr, t_start = Path(run_dir), cfg.trainer, time.time()
    lock.hold(run_dir)  # one writer per folder (already held when the CLI took it before Hydra wrote .hydra/)
    saved, state, info = saved_state(cfg, run_dir, meta)
    device = use_device(pick_device(tr.device, job_num))
    path = execution_path(tr, device)
    torch.manual_seed(cfg.seed)
    autocast = device_settings(tr, device, path)
    splits = load_splits(cfg.data, cfg.seed, data_cache)
    model = build_resnet(cfg.model.depth, cfg.model.version, len(splits.classes), cfg.model.bn_momentum).to(device)
    if path["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    train_loader, evals, recal_images = make_loaders(cfg, splits, device, path["channels_last"])
    spe, n_train = len(train_loader), len(splits.train_y)
    plan = checked_plan(cfg, n_train, spe, state, run_dir)  # before anything is written: a refusal changes nothing
    opt, sentences = make_optimizer(cfg, model, plan, state, path)
    if saved is not None:
        if missed := restore(saved, model, opt):  # a checkpoint of a machine with more GPUs
            info["resumed"]["cuda_rng_not_restored"] = missed
        log.info("continuing from step %d (epoch %.2f) of %s", state.step, state.step / spe, run_dir / "checkpoints")
    forward, step = make_step(tr, model, opt, autocast, plan, state.step, path)
    recorder = Recorder(run_dir, resume_step=state.step, histograms_every=cfg.log.histograms_every)
    info.update(
        n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        regularization=sentences,
        data={"name": cfg.data.name, "root": cfg.data.root, "n_train": n_train, "n_val": len(splits.val_y),
              "fingerprint": splits.fingerprint},
        code=provenance.code_version(), env=provenance.environment(device), path=path, setup_s=time.time() - t_start,
    )  # fmt: skip
    total = cfg.epochs * spe if tr.max_steps is None else min(tr.max_steps, cfg.epochs * spe)
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, path=path, model=model, forward=forward, opt=opt, autocast=autocast,
        plan=plan, step=step, train_loader=train_loader, evals=evals,
        eval_forward=GraphedForward(forward, autocast, capture=path["cuda_graphs"]),
        recal_images=recal_images, headline=Headline(recal_images is not None), total=total,
        val_every=tr.val_every or spe, state=state,
        records=Records(recorder, opt, stage_index(model, opt, device), spe, tr.diverge_factor, state),
        recorder=recorder, info=info, log=_Prefixed(log, {"name": name}),
        recal_aug_images=augmented_recal_images(cfg, splits, device, path["channels_last"]),
    )  # fmt: skip
    run.stats.t_start = t_start
    if saved is not None and "equilibrium" in saved:  # checkpoints before the equilibrium figures lack it
        run.records.load_tracker(saved["equilibrium"])
    run.inference = inference(cfg.data, splits)
    run.test = test_loader(cfg.data, splits, device, path["channels_last"])
    announce(run, len(splits.val_y))
    recorder.start(dataclasses.asdict(cfg), info.get("choices"), info.get("swept"))
    return run


def make_step(tr: TrainerConfig, model: nn.Module, opt: Optimizer, autocast, plan: StepPlan, start: int, path: dict):
    """(what trains: the model or torch.compile's wrapper, the step: eager or graphed, from step `start`)."""
    if path["compile"]:
        use_compile_cache(tr.compile_cache)
    # dynamic=False: one batch shape per phase (data.drop_last, padded validation), compiled once each
    forward = torch.compile(model, mode=tr.compile_mode, dynamic=False) if path["compile"] else model
    if path["cuda_graphs"]:
        return forward, GraphedStep(forward, opt, autocast, plan.lr, plan.d, start, capture=True)
    return forward, EagerStep(forward, opt, autocast, plan)


def test_loader(d: DataConfig, splits: datasets.Splits, device: torch.device, channels_last: bool):
    """The test split's loader when validation is a split held out of training (data.val_split), else None."""
    if splits.test_y is None:
        return None
    mean, std = normalization(d, splits)
    return datasets.DeviceLoader(splits.test_x, splits.test_y, VAL_BATCH.get(device.type, 100), device=device,
                                 mean=mean, std=std, channels_last=channels_last, shuffle=False,
                                 pad_last=True)  # fmt: skip


def checked_plan(cfg: RunConfig, n_train: int, spe: int, state: RunState, run_dir: Path) -> StepPlan:
    """The step plan, refused when a continued run would end before the steps it already ran or when some step
    would shrink the weights by all of themselves or more (d_t ≥ 1 zeroes or flips them, under any wd_scaling)."""
    if state.step > cfg.epochs * spe:
        raise ConfigError(
            f"epochs={cfg.epochs} ends at step {cfg.epochs * spe}, before step {state.step} that {run_dir} already "
            f"reached: a continued run cannot shrink its run; give epochs >= {-(-state.step // spe)}"
        )
    plan = plan_steps(cfg, n_train, spe, state.schedule_epochs)
    if plan.d and max(plan.d) >= 1:
        raise ConfigError(
            f"wd={cfg.wd:g} makes the per-step shrink d_t reach {max(plan.d):.3g} (optimizer.wd_scaling="
            f"{cfg.optimizer.wd_scaling}): θ·(1 − d_t) with d_t >= 1 zeroes or flips the weights; lower wd"
        )
    return plan


def use_compile_cache(folder: str | None) -> None:
    """torch.compile's on-disk caches (Inductor's compiled graphs and autotuning, Triton's kernels) in `folder`, so
    that a later process compiles from them (a warm start); None leaves torch's own, /tmp/torchinductor_$USER."""
    if folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder).expanduser().resolve())


def device_settings(tr: TrainerConfig, device: torch.device, path: dict):
    """Determinism and cuDNN autotuning as configured; returns the autocast context the step runs under."""
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not tr.deterministic
    if path["precision"] != "bf16":
        return nullcontext()
    # a CUDA graph cannot hold autocast's cache of cast weights (the PyTorch CUDA graph notes)
    return torch.autocast(device.type, torch.bfloat16, cache_enabled=not path["cuda_graphs"])


@contextmanager
def torch_settings_kept():
    """torch's process-wide settings that device_settings changes (deterministic algorithms, cuDNN
    autotuning) put back as they were once the block ends, so that the next job of a sweep in this
    process starts from them, not from this run's. Around a whole run or pack (engine.loop.train,
    sweeps.pack.train_pack, as a decorator): a pack's jobs keep the settings until the last ends."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def restore(saved: dict, model: nn.Module, opt: Optimizer) -> list[int]:
    """Weights, optimizer state and RNGs of a checkpoint; returns the GPUs whose saved CUDA RNG
    state this machine could not take (checkpoint.cuda_rng_states)."""
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    return checkpoint.set_rng_state(saved["rng"])


def announce(run: Run, n_val: int) -> None:
    """The run's first lines: what trains on what, and one sentence per regularization mechanism."""
    path, cfg = run.path, run.cfg
    what = ", ".join([path["precision"]] + ["compiled"] * path["compile"] + ["CUDA graphs"] * path["cuda_graphs"])
    run.log.info("%s on %s (%s): %d params, %d train / %d val images, %d steps (%d per epoch)", cfg.model.name,
                 run.device, what, run.info["n_params"], run.info["data"]["n_train"], n_val, run.total,
                 run.steps_per_epoch)  # fmt: skip
    for sentence in run.info["regularization"]:
        (run.log.warning if sentence.startswith("float32 rounding") else run.log.info)(sentence)


def make_optimizer(cfg: RunConfig, model: nn.Module, plan: StepPlan, state: RunState, path: dict):
    """(Optimizer, the sentences that say what regularizes how)."""
    o = cfg.optimizer
    opt = Optimizer(model, algorithm=o.algorithm, lr=cfg.lr, l2=plan.l2, wd=plan.wd, decay=plan.decay,
                    decay_on=o.decay_on, betas=o.betas, eps=o.eps, momentum=o.momentum, nesterov=o.nesterov,
                    capturable=path["cuda_graphs"])  # fmt: skip
    sentences = describe(algorithm=o.algorithm, wd=plan.wd, l2=plan.l2, wd_scaling=o.wd_scaling,
                         wd_normalized=o.wd_normalized, n_tensors=len(opt.regularized),
                         n_values=sum(p.numel() for p in opt.regularized), lam_now=plan.lam_now)  # fmt: skip
    total = cfg.epochs * plan.steps_per_epoch if cfg.trainer.max_steps is None else cfg.trainer.max_steps
    note = rounding_note(plan.d[:total])
    return opt, sentences + ([note] if note else [])


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


def augmented_recal_images(cfg: RunConfig, splits: datasets.Splits, device: torch.device, channels_last: bool):
    """The BatchNorm recalibration images through one fixed draw of the training augmentation (crop, flip): the
    reference that tells the running statistics' lag from the clean/augmented mismatch (core.bn_staleness).
    None when recalibration is off."""
    d, n = cfg.data, min(cfg.trainer.bn_recalibrate, len(splits.train_y))
    if not n:
        return None
    keep = datasets.stratified_subset(splits.train_y, n)
    mean, std = normalization(d, splits)
    loader = datasets.DeviceLoader(splits.train_x[keep], splits.train_y[keep], n, device=device, shuffle=False,
                                   crop_padding=d.crop_padding, flip=d.flip, pad_mode=d.pad_mode, mean=mean, std=std,
                                   seed=cfg.seed + 1, channels_last=channels_last)  # fmt: skip
    return next(loader.epoch(0))[0]
