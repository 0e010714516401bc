"""The run's configuration: a typed schema that carries its own rules, and `validate`, its one entry point.

Hydra composes the YAML under configs/; `validate` checks it once, before any work, and returns plain
dataclasses that the rest of the package receives as arguments. Each section checks its own values in
`__post_init__`, so a section built by hand (scripts, tests) is checked too; `RunConfig.__post_init__` adds the
rules that span sections. A field declares its allowed values and whether a continued run may change it
(`setting(..., choices=..., resumable=True)`); `choices(key)` and `resumable_keys()` read them back.
Every dataclass default is a valid value on its own; the defaults a user sees are those of configs/.
Nothing here imports torch (and omegaconf only inside `validate`), so `--help` and tab completion stay quick.
"""

from __future__ import annotations

import math
import secrets
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, List, NoReturn, Optional

if TYPE_CHECKING:
    from dataclasses import Field

    from omegaconf import DictConfig


class UserError(Exception):
    """A problem the user can fix (a setting, a path, a file): shown as one clear message, no traceback."""


class ConfigError(UserError, ValueError):
    """A setting the user can fix; the message names the key and the allowed values."""


def setting(default: Any, *, choices: tuple = (), resumable: bool = False) -> Any:
    """A schema field: its default, its allowed values (none = any value of its type) and whether a continued
    run may change it (settings that do not change the training: length, logging, device, speed)."""
    return field(default=default, metadata={"choices": tuple(choices), "resumable": resumable})


_OWN = object()  # _Section._fail's marker for "report the field's own value"


class _Section:
    """What every section shares: its place in RunConfig (`section`, '' for the top level) and the checks that
    turn a bad value into one ConfigError naming the full dotted key."""

    section: ClassVar[str] = ""

    def _fail(self, name: str, rule: str, value: Any = _OWN) -> NoReturn:
        key = f"{self.section}.{name}" if self.section else name
        raise ConfigError(f"{key}={getattr(self, name) if value is _OWN else value!r} is invalid: {rule}")

    def _check_choices(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every _Section is a dataclass
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value is not None and value not in allowed:
                self._fail(f.name, f"allowed values are {' | '.join(map(str, allowed))}")

    def _finite(self, name: str, value: Any = _OWN, *, positive: bool = False) -> None:
        v = getattr(self, name) if value is _OWN else value
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            self._fail(name, "must be a finite number " + ("> 0" if positive else ">= 0"), value=v)


@dataclass
class ModelConfig(_Section):
    section: ClassVar[str] = "model"
    name: str = "resnet56v2"
    depth: int = 56
    version: int = setting(2, choices=(1, 2))
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        self._check_choices()
        step = 6 if self.version == 1 else 9
        if self.depth < step + 2 or (self.depth - 2) % step:
            self._fail("depth", f"ResNet v{self.version} depth must be {step}n+2 (e.g. {3 * step + 2})")
        if self.depth > MAX_DEPTH:
            self._fail("depth", f"must be at most {MAX_DEPTH} (the deepest CIFAR ResNet published)")
        if not 0 < self.bn_momentum <= 1:
            self._fail("bn_momentum", "must be in (0, 1] (torch convention: Keras momentum 0.99 is 0.01)")


@dataclass
class OptimizerConfig(_Section):
    section: ClassVar[str] = "optimizer"
    name: str = "adamw"
    algorithm: str = setting("adam", choices=("adam", "sgd"))
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    wd_scaling: str = setting("schedule", choices=("schedule", "lr", "none"))
    wd_normalized: bool = False
    l2_normalized: bool = False
    decay_on: str = setting("weights", choices=("weights", "conv", "all"))
    wd_tau: Optional[float] = None  # τ/T: λ set so the decay's EMA timescale 1/mean d_t is this fraction of the run

    def __post_init__(self) -> None:
        self._check_choices()
        if self.wd_tau is not None:
            self._finite("wd_tau", positive=True)
            if self.wd_normalized:
                self._fail("wd_tau", "sets λ itself: drop optimizer.wd_normalized=true or optimizer.wd_tau")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            self._fail("betas", "need two values in [0, 1), e.g. [0.9,0.999]")
        self._finite("eps", positive=True)
        if not 0 <= self.momentum < 1:
            self._fail("momentum", "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            self._fail("nesterov", "Nesterov needs optimizer.momentum > 0")


@dataclass
class ScheduleConfig(_Section):
    """Positions (milestones, knots, T_0) are in `unit`; the rules that need the run's length are in
    `check_span`, which RunConfig calls with `epochs`."""

    section: ClassVar[str] = "schedule"
    preset: Optional[str] = None  # the configs/schedule preset (cosine, keras, ...): what summary.json and HParams show
    name: str = setting("piecewise_constant", choices=("piecewise_constant", "piecewise_linear", "warm_restarts"))
    unit: str = setting("fraction", choices=("fraction", "epoch"))
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    factors: List[float] = field(default_factory=lambda: [0.1, 0.01])
    knots: List[List[float]] = field(default_factory=list)
    T_0: Optional[float] = None
    T_mult: float = 1.0
    eta_min: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        self._check_choices()
        if self.name == "piecewise_constant":
            if len(self.milestones) != len(self.factors):
                self._fail("factors", f"need one factor per milestone ({len(self.milestones)} milestones)")
            for f in self.factors:
                self._finite("factors", f)
        elif self.name == "piecewise_linear":
            if len(self.knots) < 2 or any(len(k) != 2 for k in self.knots):
                self._fail("knots", "need at least two [at, multiplier] pairs")
            for k in self.knots:
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in k):
                    self._fail("knots", "positions and multipliers must be finite numbers, e.g. [[0,1.0],[1,0.0]]")
                self._finite("knots", k[1])
        elif self.name == "warm_restarts":
            if self.T_0 is not None and not (math.isfinite(self.T_0) and self.T_0 > 0):
                self._fail("T_0", "the first period must be > 0 epochs (null = the whole run)")
            if not (math.isfinite(self.T_mult) and self.T_mult >= 1):
                self._fail("T_mult", "must be >= 1 (each period at least as long as the last)")
            if not 0 <= self.eta_min < 1:
                self._fail("eta_min", "must be in [0, 1): the multiplier at the end of each period")

    def check_span(self, epochs: int) -> None:
        """The rules that need the run's length: warm-up and positions inside the run."""
        end = 1.0 if self.unit == "fraction" else float(epochs)
        if not 0 <= self.warmup_epochs < epochs:
            self._fail("warmup_epochs", f"must be in [0, epochs={epochs})")
        if self.name == "piecewise_constant":
            ms = self.milestones
            if any(not 0 < x < end for x in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
                self._fail("milestones", f"must be strictly increasing inside (0, {end:g}) with unit={self.unit}")
        elif self.name == "piecewise_linear":
            at = [k[0] for k in self.knots]
            if at[0] != 0 or any(b <= a for a, b in zip(at, at[1:])) or at[-1] > end:
                self._fail(
                    "knots", f"positions must start at 0 and increase strictly up to at most {end:g} (unit={self.unit})"
                )


@dataclass
class DataConfig(_Section):
    section: ClassVar[str] = "data"
    # the schema's own default needs no folder, so DataConfig() is valid; configs/ make cifar10 the default
    name: str = setting("synthetic", choices=("cifar10", "image_folder", "synthetic"))
    root: Optional[str] = None
    download: bool = True
    verify: bool = True
    subset: Optional[int] = None
    val_split: Optional[int] = None
    crop_padding: int = 4
    flip: bool = True
    pad_mode: str = setting("zeros", choices=("zeros", "replicate"))
    normalize: str = setting("channel", choices=("channel", "pixel_mean", "none"))
    val_subset: Optional[int] = None
    n_train: Optional[int] = None  # data=synthetic only (null = 2000 / 500: make_synthetic's), so no other run has one
    n_val: Optional[int] = None
    drop_last: bool = True

    def __post_init__(self) -> None:
        self._check_choices()
        if self.name != "synthetic" and not self.root:
            self._fail("root", f"data={self.name} needs a folder: data.root=/path/to/data")
        for name in ("subset", "val_split", "val_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                self._fail(name, "must be >= 1, or null for none")
        for name in ("n_train", "n_val"):
            if self.name != "synthetic" and getattr(self, name) is not None:
                self._fail(name, f"only data=synthetic makes its images: use data.subset / data.val_subset with "
                                 f"data={self.name}")  # fmt: skip
        if not 0 <= self.crop_padding <= 32:
            self._fail("crop_padding", "must be from 0 (cropping off) to 32 (the images' size)")
        for name in ("n_train", "n_val", "subset", "val_split", "val_subset"):
            if (getattr(self, name) or 0) > MAX_IMAGES:
                self._fail(name, f"must be at most {MAX_IMAGES} images (each split is held in memory)")
        if self.name == "synthetic" and min(self.n_train or 10, self.n_val or 10) < 10:
            self._fail("n_train/n_val", "synthetic data needs at least 10 images per split", (self.n_train, self.n_val))


# the numeric summary.json keys a sweeper may optimize (trainer.objective)
OBJECTIVES = (
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "final_train_loss",
    "best_val_acc_running",
    "final_val_acc_running",
)


@dataclass
class TrainerConfig(_Section):
    """`compile` and `cuda_graphs` are null for auto (on for CUDA, off elsewhere); the trainer resolves them."""

    section: ClassVar[str] = "trainer"
    device: str = setting("auto", choices=("auto", "cpu", "cuda", "mps"), resumable=True)
    max_steps: Optional[int] = setting(None, resumable=True)
    val_every: Optional[int] = setting(None, resumable=True)
    log_every: int = setting(50, resumable=True)
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"))
    channels_last: Optional[bool] = None
    compile: Optional[bool] = setting(None, resumable=True)
    compile_mode: str = setting(
        "default", resumable=True, choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    )
    compile_cache: Optional[str] = setting(None, resumable=True)  # folder of torch.compile's caches; null: torch's
    cuda_graphs: Optional[bool] = setting(None, resumable=True)
    progress: Optional[bool] = setting(None, resumable=True)
    train_eval: bool = setting(False, resumable=True)  # evaluations never touch the training (runner.core.evaluation)
    bn_recalibrate: int = setting(2048, resumable=True)
    extend_schedule: Optional[str] = setting(None, choices=("rescale", "hold"), resumable=True)
    objective: str = setting("best_val_acc", choices=OBJECTIVES, resumable=True)
    diverge_factor: float = 10.0
    on_diverge: str = setting("stop", choices=("stop", "raise"))
    deterministic: bool = False

    def __post_init__(self) -> None:
        self._check_choices()
        if self.cuda_graphs is True and self.device in ("cpu", "mps"):
            self._fail(
                "cuda_graphs",
                f"CUDA graphs need trainer.device=cuda (or auto on a GPU machine), not "
                f"{self.device}: drop trainer.cuda_graphs=true (the default, null, is off there)",
            )
        nests = self.compile_mode in ("reduce-overhead", "max-autotune")  # modes that record CUDA graphs themselves
        if self.cuda_graphs is True and self.compile is not False and nests:
            auto = self.compile is None  # null compiles on CUDA, which is where cuda_graphs=true runs
            self._fail(
                "compile_mode",
                "that mode records its own CUDA graphs, which cannot nest in "
                "trainer.cuda_graphs=true"
                + (" (trainer.compile=null compiles on CUDA)" if auto else "")
                + ": use trainer.compile_mode=default or max-autotune-no-cudagraphs"
                + (", or trainer.compile=false" if auto else ""),
            )
        if not (math.isfinite(self.diverge_factor) and self.diverge_factor > 1):
            self._fail("diverge_factor", "must be a finite number > 1 (stop when loss > factor × initial loss)")
        for name in ("max_steps", "val_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                self._fail(name, "must be >= 1, or null")
        if self.log_every < 1:
            self._fail("log_every", "must be >= 1")
        # BatchNorm needs 2 values per channel for a variance; the images pass through in one batch
        if self.bn_recalibrate != 0 and not 2 <= self.bn_recalibrate <= 10_000:
            self._fail("bn_recalibrate", "must be 0 (off) or from 2 to 10000 (one forward pass holds them all)")


@dataclass
class LogConfig(_Section):
    section: ClassVar[str] = "log"
    histograms_every: int = setting(0, resumable=True)

    def __post_init__(self) -> None:
        if self.histograms_every < 0:
            self._fail("histograms_every", "must be >= 0 (0 = no weight histograms)")


@dataclass
class RunConfig(_Section):
    """The whole run; its sections check themselves first (they are built first), then the rules across them."""

    lr: float = 1e-3
    wd: float = 0.0
    l2: float = 0.0
    reg: Optional[float] = None
    epochs: int = setting(30, resumable=True)
    batch_size: int = 128
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    resume: Optional[str] = None
    report: bool = setting(False, resumable=True)

    def __post_init__(self) -> None:
        self._finite("lr", positive=True)
        self._finite("wd")
        self._finite("l2")
        if self.reg is not None:
            self._finite("reg")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            self._fail("epochs", f"must be from 1 to {MAX_EPOCHS}")
        if not 1 <= self.batch_size <= MAX_IMAGES:
            self._fail("batch_size", f"must be from 1 to {MAX_IMAGES}")
        if not 0 <= self.seed < 2**63:
            self._fail("seed", "must be from 0 to 2**63-1 (torch's generators take a 64-bit seed)")
        if self.optimizer.wd_scaling == "none" and self.wd >= 1:
            self._fail("wd", "with optimizer.wd_scaling=none the shrink per step is wd itself: θ·(1 − wd) with "
                       "wd >= 1 zeroes or flips the weights every step; use a wd below 1 (e.g. 5e-4)")  # fmt: skip
        if self.optimizer.wd_tau is not None and not self.wd:
            self._fail("wd", "leaves no decoupled decay for optimizer.wd_tau to set: use optimizer=adamw or sgdw")
        self.schedule.check_span(self.epochs)


MAX_DEPTH = 1202  # ResNet-1202, He et al. 2016
MAX_EPOCHS = 100_000
MAX_IMAGES = 10_000_000  # 30 GB of 32×32 RGB uint8: past it a split cannot be held in memory


def _leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, field) of every setting of `cls`, walking into its sections, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def resumable_keys() -> tuple[str, ...]:
    """The dotted keys a continued run may change (declared `resumable=True` on their fields), in schema order."""
    return tuple(key for key, f in _leaves(RunConfig) if f.metadata.get("resumable"))


def choices(key: str) -> tuple:
    """The allowed values of dotted `key`, e.g. choices("trainer.device"); () when any value of its type goes."""
    return dict(_leaves(RunConfig))[key].metadata.get("choices", ())


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


PRESET_EXAMPLES = {"model": "resnet56v2", "optimizer": "adamw", "schedule": "piecewise_constant", "data": "cifar10"}


def validate(cfg: DictConfig) -> RunConfig:
    """Type-check `cfg` against the schema and range-check every value; raise ConfigError on the first problem.

    OmegaConf checks types and unknown keys while merging. `to_object` then builds the dataclasses, each section
    before the RunConfig that holds it; the first `__post_init__` that refuses a value raises ConfigError, which
    OmegaConf passes on unchanged (it wraps only a TypeError from a constructor: a bug, left a traceback).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigTypeError, OmegaConfBaseException

    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    for group in ("model", "optimizer", "schedule", "data"):  # `~model` would train the schema's defaults unsaid
        if group not in cfg:
            raise ConfigError(f"{group} is not set (removed with ~{group}?): a run needs a {group} preset, e.g. "
                              f"{group}={PRESET_EXAMPLES[group]}")  # fmt: skip
    _check_reg(cfg)
    schema = OmegaConf.structured(RunConfig)  # builds each section's defaults: a failure here is a bug
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as e:
        raise _user_error(e) from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]  # a RunConfig: merged is structured
    except ConfigTypeError:
        raise  # "Could not create instance of ...": a __post_init__ crashed, which is a bug, not a setting
    except OmegaConfBaseException as e:  # a value left ??? or an interpolation that does not resolve
        raise _user_error(e) from None


def _check_reg(cfg: DictConfig) -> None:
    """`reg` is the strength the optimizer preset puts into wd or l2 (its `${reg_or:...}`): a wd or l2 given as well
    would silently win over it, so the two together are refused."""
    from omegaconf import OmegaConf

    reg = OmegaConf.select(cfg, "reg", throw_on_missing=False)
    if reg is None:
        return
    for key in ("wd", "l2"):
        if key in cfg and not OmegaConf.is_interpolation(cfg, key) and cfg[key] not in (0, None):
            raise ConfigError(
                f"reg={reg} and {key}={cfg[key]} are both set: reg sets wd (adamw, sgdw) or l2 (adam_l2, sgd_l2) "
                f"for the preset; give reg or {key}, not both"
            )


def _user_error(e: Exception) -> ConfigError:
    key = getattr(e, "full_key", None) or "config"
    msg = str(e).splitlines()[0]
    if "Missing mandatory value" in msg:
        return ConfigError(f"{key} is not set: give it on the command line, e.g. {key}=...")
    if (
        "(int) is incompatible with type hint 'float'" in msg
    ):  # YAML reads 0 and 1 as ints, where the schema wants floats
        return ConfigError(f"{key}: {msg}: write the number with a decimal point (0.0, 1.0)")
    return ConfigError(f"{key}: {msg}")
