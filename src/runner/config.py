"""The run's configuration: a typed schema, and the one place it is validated.

Hydra composes the YAML under configs/; `validate` checks it once, before any work, and returns
plain dataclasses that the rest of the package receives as arguments. Nothing here imports torch,
so `--help` and tab completion stay quick.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from omegaconf import DictConfig

CHOICES = {
    "optimizer.algorithm": ("adam", "sgd"),
    "optimizer.wd_scaling": ("schedule", "lr", "none"),
    "optimizer.decay_on": ("weights", "conv", "all"),
    "schedule.name": ("piecewise_constant", "piecewise_linear", "warm_restarts"),
    "schedule.unit": ("fraction", "epoch"),
    "data.name": ("cifar10", "image_folder", "synthetic"),
    "data.pad_mode": ("zeros", "replicate"),
    "data.normalize": ("channel", "pixel_mean", "none"),
    "trainer.device": ("auto", "cpu", "cuda", "mps"),
    "trainer.precision": ("auto", "bf16", "fp32"),
    "trainer.on_diverge": ("stop", "raise"),
    "trainer.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}


class UserError(Exception):
    """A problem the user can fix (a setting, a path, a file): shown as one clear message, no traceback."""


class ConfigError(UserError, ValueError):
    """A setting the user can fix; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    name: str = "resnet56v2"
    depth: int = 56
    version: int = 2
    bn_momentum: float = 0.01


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    algorithm: str = "adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    wd_scaling: str = "schedule"
    wd_normalized: bool = False
    l2_normalized: bool = False
    decay_on: str = "weights"


@dataclass
class ScheduleConfig:
    name: str = "piecewise_constant"
    unit: str = "fraction"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    factors: List[float] = field(default_factory=lambda: [0.1, 0.01])
    knots: List[List[float]] = field(default_factory=list)
    T_0: Optional[float] = None
    T_mult: float = 1.0
    eta_min: float = 0.0
    warmup_epochs: float = 0.0


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: Optional[str] = None
    download: bool = True
    verify: bool = True
    subset: Optional[int] = None
    val_split: Optional[int] = None
    crop_padding: int = 4
    flip: bool = True
    pad_mode: str = "zeros"
    normalize: str = "channel"
    n_train: int = 2000
    n_val: int = 500


@dataclass
class TrainerConfig:
    device: str = "auto"
    max_steps: Optional[int] = None
    val_every: Optional[int] = None
    log_every: int = 50
    precision: str = "auto"
    channels_last: Optional[bool] = None
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    progress: Optional[bool] = None
    train_eval: bool = False
    diverge_factor: float = 10.0
    on_diverge: str = "stop"
    deterministic: bool = False


@dataclass
class LogConfig:
    histograms_every: int = 0


@dataclass
class RunConfig:
    lr: float = 1e-3
    wd: float = 0.0
    l2: float = 0.0
    reg: Optional[float] = None
    epochs: int = 30
    batch_size: int = 128
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    resume: Optional[str] = None
    report: bool = False


_RUN_ID = secrets.token_hex(3)


def register_resolvers() -> None:
    """`${run_id:}`: a per-process random tag so runs started in the same second never share a folder."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID)
    if not OmegaConf.has_resolver("reg_or"):
        # optimizer presets: wd (or l2) = the sweep's shared strength `reg` when set, else the preset's default
        OmegaConf.register_new_resolver("reg_or", lambda reg, default: default if reg is None else reg)
    if not OmegaConf.has_resolver("resume_or"):
        # resume=RUN_DIR runs in that folder, and leaves its saved .hydra/ untouched
        OmegaConf.register_new_resolver("resume_or", lambda resume, fresh: resume or fresh)
        OmegaConf.register_new_resolver("saved_config_dir", lambda resume: None if resume else ".hydra")


def validate(cfg: DictConfig) -> RunConfig:
    """Type-check `cfg` against the schema and range-check every value; raise ConfigError on the first problem."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run: RunConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        msg = str(e).splitlines()[0]
        if "Missing mandatory value" in msg:
            raise ConfigError(f"{key} is not set: give it on the command line, e.g. {key}=...") from None
        raise ConfigError(f"{key}: {msg}") from None
    _check(run)
    return run


def _fail(key: str, value, rule: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def _choice(key: str, value: str) -> None:
    if value not in CHOICES[key]:
        _fail(key, value, f"allowed values are {' | '.join(CHOICES[key])}")


def _finite(key: str, value: float, *, positive: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        _fail(key, value, "must be a finite number " + ("> 0" if positive else ">= 0"))


def _check(c: RunConfig) -> None:
    _finite("lr", c.lr, positive=True)
    _finite("wd", c.wd)
    _finite("l2", c.l2)
    if c.reg is not None:
        _finite("reg", c.reg)
    if c.epochs < 1:
        _fail("epochs", c.epochs, "must be >= 1")
    if c.batch_size < 1:
        _fail("batch_size", c.batch_size, "must be >= 1")

    m = c.model
    if m.version not in (1, 2):
        _fail("model.version", m.version, "allowed values are 1 | 2")
    step = 6 if m.version == 1 else 9
    if m.depth < step + 2 or (m.depth - 2) % step:
        _fail("model.depth", m.depth, f"ResNet v{m.version} depth must be {step}n+2 (e.g. {3 * step + 2})")

    if not 0 < m.bn_momentum <= 1:
        _fail("model.bn_momentum", m.bn_momentum, "must be in (0, 1] (torch convention: Keras momentum 0.99 is 0.01)")

    o = c.optimizer
    for key in ("optimizer.algorithm", "optimizer.wd_scaling", "optimizer.decay_on"):
        _choice(key, getattr(o, key.split(".")[1]))
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        _fail("optimizer.betas", o.betas, "need two values in [0, 1), e.g. [0.9,0.999]")
    _finite("optimizer.eps", o.eps, positive=True)
    if not 0 <= o.momentum < 1:
        _fail("optimizer.momentum", o.momentum, "must be in [0, 1)")
    if o.nesterov and o.momentum == 0:
        _fail("optimizer.nesterov", o.nesterov, "Nesterov needs optimizer.momentum > 0")

    _check_schedule(c.schedule, c.epochs)

    d = c.data
    for key in ("data.name", "data.pad_mode", "data.normalize"):
        _choice(key, getattr(d, key.split(".")[1]))
    if d.name != "synthetic" and not d.root:
        _fail("data.root", d.root, f"data={d.name} needs a folder: data.root=/path/to/data")
    for key in ("subset", "val_split"):
        v = getattr(d, key)
        if v is not None and v < 1:
            _fail(f"data.{key}", v, "must be >= 1, or null for none")
    if d.crop_padding < 0:
        _fail("data.crop_padding", d.crop_padding, "must be >= 0 (0 turns cropping off)")
    if d.name == "synthetic" and (d.n_train < 10 or d.n_val < 10):
        _fail("data.n_train/n_val", (d.n_train, d.n_val), "synthetic data needs at least 10 images per split")

    t = c.trainer
    _choice("trainer.device", t.device)
    _choice("trainer.precision", t.precision)
    _choice("trainer.on_diverge", t.on_diverge)
    _choice("trainer.compile_mode", t.compile_mode)
    if t.cuda_graphs and t.device in ("cpu", "mps"):
        _fail("trainer.cuda_graphs", t.cuda_graphs, f"CUDA graphs need trainer.device=cuda (or auto on a GPU machine), "
              f"not {t.device}: drop trainer.cuda_graphs=true")
    if t.cuda_graphs and t.compile and t.compile_mode in ("reduce-overhead", "max-autotune"):
        _fail("trainer.compile_mode", t.compile_mode, "that mode records its own CUDA graphs, which cannot nest in "
              "trainer.cuda_graphs=true: use trainer.compile_mode=default or max-autotune-no-cudagraphs")
    if not (math.isfinite(t.diverge_factor) and t.diverge_factor > 1):
        _fail("trainer.diverge_factor", t.diverge_factor, "must be a finite number > 1 (stop when loss > factor × initial loss)")
    if c.log.histograms_every < 0:
        _fail("log.histograms_every", c.log.histograms_every, "must be >= 0 (0 = no weight histograms)")
    for key in ("max_steps", "val_every"):
        v = getattr(t, key)
        if v is not None and v < 1:
            _fail(f"trainer.{key}", v, "must be >= 1, or null")
    if t.log_every < 1:
        _fail("trainer.log_every", t.log_every, "must be >= 1")


def _check_schedule(s: ScheduleConfig, epochs: int) -> None:
    _choice("schedule.name", s.name)
    _choice("schedule.unit", s.unit)
    end = 1.0 if s.unit == "fraction" else float(epochs)
    if not 0 <= s.warmup_epochs < epochs:
        _fail("schedule.warmup_epochs", s.warmup_epochs, f"must be in [0, epochs={epochs})")
    if s.name == "piecewise_constant":
        ms = s.milestones
        if len(ms) != len(s.factors):
            _fail("schedule.factors", s.factors, f"need one factor per milestone ({len(ms)} milestones)")
        if any(not 0 < x < end for x in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
            _fail("schedule.milestones", ms, f"must be strictly increasing inside (0, {end:g}) with unit={s.unit}")
        for f in s.factors:
            _finite("schedule.factors", f)
    elif s.name == "piecewise_linear":
        if len(s.knots) < 2 or any(len(k) != 2 for k in s.knots):
            _fail("schedule.knots", s.knots, "need at least two [at, multiplier] pairs")
        at = [k[0] for k in s.knots]
        if at[0] != 0 or any(b <= a for a, b in zip(at, at[1:])) or at[-1] > end:
            _fail("schedule.knots", s.knots, f"positions must start at 0 and increase strictly up to at most {end:g} (unit={s.unit})")
        for k in s.knots:
            _finite("schedule.knots", k[1])
    elif s.name == "warm_restarts":
        if s.T_0 is not None and not (math.isfinite(s.T_0) and s.T_0 > 0):
            _fail("schedule.T_0", s.T_0, "the first period must be > 0 epochs (null = the whole run)")
        if not (math.isfinite(s.T_mult) and s.T_mult >= 1):
            _fail("schedule.T_mult", s.T_mult, "must be >= 1 (each period at least as long as the last)")
        if not 0 <= s.eta_min < 1:
            _fail("schedule.eta_min", s.eta_min, "must be in [0, 1): the multiplier at the end of each period")
