"""The run's configuration: a typed schema that declares every setting once, and `validate`.

The schema below is the one place a setting, its default, its allowed values and its meaning are
declared. Hydra composes configs/ on top of it (`register_schema`: the YAML sets only what differs
from these defaults), and `validate` checks the result once, before any work, returning plain
dataclasses that the rest of the package receives as arguments. Each section checks its own values
in `__post_init__`, so a section built by hand (scripts, tests) is checked too; `RunConfig` adds
the rules that span sections.

A field's metadata says what kind of setting it is (`setting(...)`):
    choices     its allowed values (none: any value of its type)
    resumable   a continued run may change it (length, logging, device, speed)
    trains      it changes what is trained (False: where or how the run goes, what it records)
Every list of keys the package needs is read from that metadata: `resumable_keys()`,
`non_training_keys()` (folder names, the report's configurations), `refused_changes()`.
Nothing here imports torch (and omegaconf or hydra only inside functions), so `--help` and tab
completion stay quick.
"""

from __future__ import annotations

import math
import re
import secrets
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, List, NoReturn, Optional

if TYPE_CHECKING:
    from dataclasses import Field

    from omegaconf import DictConfig


class UserError(Exception):
    """A problem the user can fix (a setting, a path, a file): one clear message, no traceback."""


class ConfigError(UserError, ValueError):
    """A setting the user can fix; the message names the key and the allowed values."""


def setting(
    default: Any, *, choices: tuple = (), resumable: bool = False, trains: bool = True
) -> Any:
    """A schema field: its default and what kind of setting it is (module docstring)."""
    meta = {"choices": tuple(choices), "resumable": resumable, "trains": trains}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def run_setting(default: Any, *, choices: tuple = ()) -> Any:
    """A setting of how or where the run goes, not of what it trains: a continued run may change
    it, and it stays out of folder names and the report's configurations."""
    return setting(default, choices=choices, resumable=True, trains=False)


_OWN = object()  # _Section._fail's marker for "report the field's own value"


class _Section:
    """What every section shares: its place in RunConfig (`section`, '' for the top level) and the
    checks that turn a bad value into one ConfigError naming the full dotted key."""

    section: ClassVar[str] = ""

    def _fail(self, name: str, rule: str, value: Any = _OWN) -> NoReturn:
        key = f"{self.section}.{name}" if self.section else name
        shown = getattr(self, name) if value is _OWN else value
        raise ConfigError(f"{key}={shown!r} is invalid: {rule}")

    def _check_choices(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # every _Section is a dataclass
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value is not None and value not in allowed:
                self._fail(f.name, f"allowed values are {' | '.join(map(str, allowed))}")

    def _finite(self, name: str, value: Any = _OWN, *, positive: bool = False) -> None:
        v = getattr(self, name) if value is _OWN else value
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            rule = "must be a finite number " + ("> 0" if positive else ">= 0")
            self._fail(name, rule, value=v)


@dataclass
class ModelConfig(_Section):
    """The Keras cifar10_resnet.py ResNets (core.models): v1 basic blocks, v2 bottlenecks."""

    section: ClassVar[str] = "model"
    name: Optional[str] = None  # the configs/model preset this came from (None: built by hand)
    depth: int = 56  # 6n+2 (v1) or 9n+2 (v2)
    version: int = setting(2, choices=(1, 2))
    bn_momentum: float = 0.01  # torch convention: Keras' BatchNormalization(momentum=0.99)

    def __post_init__(self) -> None:
        self._check_choices()
        step = 6 if self.version == 1 else 9
        if self.depth < step + 2 or (self.depth - 2) % step:
            rule = f"ResNet v{self.version} depth must be {step}n+2 (e.g. {3 * step + 2})"
            self._fail("depth", rule)
        if self.depth > MAX_DEPTH:
            self._fail("depth", f"must be at most {MAX_DEPTH} (the deepest CIFAR ResNet published)")
        if not 0 < self.bn_momentum <= 1:
            rule = "must be in (0, 1] (torch convention: Keras momentum 0.99 is 0.01)"
            self._fail("bn_momentum", rule)


@dataclass
class OptimizerConfig(_Section):
    """Adam or SGD with L2 (`l2`) and decoupled decay (`wd`): conventions in core.update_rule."""

    section: ClassVar[str] = "optimizer"
    name: Optional[str] = None  # the configs/optimizer preset this came from
    algorithm: str = setting("adam", choices=("adam", "sgd"))
    betas: List[float] = setting([0.9, 0.999])  # Adam's β1, β2
    eps: float = 1e-8  # PyTorch's default; Keras uses 1e-7
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    # d_t of θ ← θ·(1 − d_t): η_t·λ (the paper), lr_t·λ (PyTorch, Keras) or λ (TF-Addons)
    wd_scaling: str = setting("schedule", choices=("schedule", "lr", "none"))
    wd_normalized: bool = False  # `wd` is λ_norm, λ = λ_norm·√(b/(B·T)) (the paper's App. B.1)
    l2_normalized: bool = False  # `l2` read the same way, T the whole run
    # the regularized tensors: conv + linear kernels | conv kernels (the Keras example) | all
    decay_on: str = setting("weights", choices=("weights", "conv", "all"))
    # τ/T: λ set so the decay's EMA timescale 1/mean_t d_t is this fraction of the run's steps
    wd_tau: Optional[float] = None

    def __post_init__(self) -> None:
        self._check_choices()
        if self.wd_tau is not None:
            self._finite("wd_tau", positive=True)
            if self.wd_normalized:
                rule = "sets λ itself: drop optimizer.wd_normalized=true or optimizer.wd_tau"
                self._fail("wd_tau", rule)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            self._fail("betas", "need two values in [0, 1), e.g. [0.9,0.999]")
        self._finite("eps", positive=True)
        if not 0 <= self.momentum < 1:
            self._fail("momentum", "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            self._fail("nesterov", "Nesterov needs optimizer.momentum > 0")


SHAPES = ("piecewise_constant", "piecewise_linear", "warm_restarts")


@dataclass
class ScheduleConfig(_Section):
    """η_t, the multiplier of lr (core.schedules). Positions (milestones, knots, T_0) are in
    `unit`; the rules that need the run's length are in `check_span`, which RunConfig calls."""

    section: ClassVar[str] = "schedule"
    name: Optional[str] = None  # the configs/schedule preset this came from (cosine, keras, ...)
    shape: str = setting("piecewise_constant", choices=SHAPES)
    # fraction: positions are fractions of the run (they scale with epochs) | epoch: absolute
    unit: str = setting("fraction", choices=("fraction", "epoch"))
    milestones: List[float] = setting([0.5, 0.75])  # piecewise_constant: strictly increasing
    factors: List[float] = setting([0.1, 0.01])  # η_t after each milestone (not cumulative)
    knots: List[List[float]] = setting([])  # piecewise_linear: [[at, multiplier], ...]
    T_0: Optional[float] = None  # warm_restarts: the first period (null: the whole run)
    T_mult: float = 1.0  # each period T_mult times the last
    eta_min: float = 0.0  # η at the end of each period
    warmup_epochs: float = 0.0  # a linear warm-up min(1, t/warmup_epochs) in front of any shape

    def __post_init__(self) -> None:
        self._check_choices()
        if self.shape == "piecewise_constant":
            if len(self.milestones) != len(self.factors):
                n = len(self.milestones)
                self._fail("factors", f"need one factor per milestone ({n} milestones)")
            for f in self.factors:
                self._finite("factors", f)
        elif self.shape == "piecewise_linear":
            self._check_knots()
        elif self.shape == "warm_restarts":
            if self.T_0 is not None and not (math.isfinite(self.T_0) and self.T_0 > 0):
                self._fail("T_0", "the first period must be > 0 epochs (null = the whole run)")
            if not (math.isfinite(self.T_mult) and self.T_mult >= 1):
                self._fail("T_mult", "must be >= 1 (each period at least as long as the last)")
            if not 0 <= self.eta_min < 1:
                self._fail("eta_min", "must be in [0, 1): the multiplier at the end of each period")

    def _check_knots(self) -> None:
        if len(self.knots) < 2 or any(len(k) != 2 for k in self.knots):
            self._fail("knots", "need at least two [at, multiplier] pairs")
        for k in self.knots:
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in k):
                rule = "positions and multipliers must be finite numbers, e.g. [[0,1.0],[1,0.0]]"
                self._fail("knots", rule)
            self._finite("knots", k[1])

    def check_span(self, epochs: int) -> None:
        """The rules that need the run's length: warm-up and positions inside the run."""
        end = 1.0 if self.unit == "fraction" else float(epochs)
        if not 0 <= self.warmup_epochs < epochs:
            self._fail("warmup_epochs", f"must be in [0, epochs={epochs})")
        if self.shape == "piecewise_constant":
            ms = self.milestones
            if any(not 0 < x < end for x in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
                rule = f"must be strictly increasing inside (0, {end:g}) with unit={self.unit}"
                self._fail("milestones", rule)
        elif self.shape == "piecewise_linear":
            at = [k[0] for k in self.knots]
            if at[0] != 0 or any(b <= a for a, b in zip(at, at[1:])) or at[-1] > end:
                rule = f"positions must start at 0 and increase strictly up to at most {end:g}"
                self._fail("knots", f"{rule} (unit={self.unit})")


SOURCES = ("cifar10", "image_folder", "synthetic")


@dataclass
class DataConfig(_Section):
    """Where the images come from (runner.data) and how each batch is augmented. The schema's own
    source needs no folder, so DataConfig() is valid; configs/ make cifar10 the default."""

    section: ClassVar[str] = "data"
    name: Optional[str] = None  # the configs/data preset this came from
    source: str = setting("synthetic", choices=SOURCES)
    # where the data set lies and how it is fetched: not what trains, but a continued run keeps it
    root: Optional[str] = setting(None, trains=False)  # the folder (cifar10, image_folder)
    download: bool = setting(True, trains=False)  # cifar10: download the archive if missing
    verify: bool = setting(True, trains=False)  # cifar10: check md5s (false: derived data)
    subset: Optional[int] = None  # train on N training images, stratified by class
    val_split: Optional[int] = None  # hold out N training images as validation (not the test split)
    val_subset: Optional[int] = None  # validate on a fixed, stratified N of the validation images
    # synthetic only, the images it makes (null: runner.data.synthetic's own 2000 and 500)
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    crop_padding: int = 4  # random crop after this much padding (0: off)
    flip: bool = True  # random horizontal flip
    pad_mode: str = setting("zeros", choices=("zeros", "replicate"))  # replicate: Keras' 'nearest'
    # channel: mean/std per channel | pixel_mean: Keras' per-pixel mean image, no division | none
    normalize: str = setting("channel", choices=("channel", "pixel_mean", "none"))
    drop_last: bool = True  # full batches only (false: Keras' last, smaller batch)

    def __post_init__(self) -> None:
        self._check_choices()
        if self.source != "synthetic" and not self.root:
            self._fail("root", f"data={self.source} needs a folder: data.root=/path/to/data")
        for name in ("subset", "val_split", "val_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                self._fail(name, "must be >= 1, or null for none")
        for name in ("n_train", "n_val"):
            if self.source != "synthetic" and getattr(self, name) is not None:
                fix = f"use data.subset / data.val_subset with data={self.source}"
                self._fail(name, f"only data=synthetic makes its images: {fix}")
        if not 0 <= self.crop_padding <= 32:
            self._fail("crop_padding", "must be from 0 (cropping off) to 32 (the images' size)")
        for name in ("n_train", "n_val", "subset", "val_split", "val_subset"):
            if (getattr(self, name) or 0) > MAX_IMAGES:
                rule = f"must be at most {MAX_IMAGES} images (each split is held in memory)"
                self._fail(name, rule)
        if self.source == "synthetic" and min(self.n_train or 10, self.n_val or 10) < 10:
            rule = "synthetic data needs at least 10 images per split"
            self._fail("n_train/n_val", rule, (self.n_train, self.n_val))

    def check_root(self) -> None:
        """The image folder exists, checked where the run starts (before torch is imported, so
        a typo costs a second): not in __post_init__, since a sweep is validated where it is
        launched, which may not see the folders its jobs' machines see."""
        from pathlib import Path

        if self.source == "image_folder" and not Path(self.root).expanduser().is_dir():
            rule = (
                "no such folder: data=image_folder needs DIR/train/<class>/* and DIR/test/<class>/*"
            )
            self._fail("root", rule)


# the numeric summary.json keys a sweeper may optimize (trainer.objective)
OBJECTIVES = (
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "final_train_loss",
    "best_val_acc_running",
    "final_val_acc_running",
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainerConfig(_Section):
    """How and where the run goes. `compile` and `cuda_graphs` are null for auto (on for CUDA,
    off elsewhere, and given up for the next safer path if they fail at start-up); engine.build
    resolves them, engine.execution falls back. `true` that cannot be honoured is an error."""

    section: ClassVar[str] = "trainer"
    device: str = run_setting("auto", choices=("auto", "cpu", "cuda", "mps"))  # auto: cuda first
    max_steps: Optional[int] = setting(None, resumable=True)  # stop after N optimizer steps
    val_every: Optional[int] = run_setting(None)  # steps between validations (null: each epoch)
    log_every: int = run_setting(50)  # steps between log points (norms, probes, plain log lines)
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"))  # auto: bf16 on CUDA
    channels_last: Optional[bool] = None  # null: on for CUDA
    compile: Optional[bool] = run_setting(None)  # torch.compile the model (null: on for CUDA)
    # reduce-overhead and max-autotune record their own CUDA graphs
    compile_mode: str = run_setting("default", choices=COMPILE_MODES)
    compile_cache: Optional[str] = run_setting(None)  # torch.compile's caches (null: torch's own)
    cuda_graphs: Optional[bool] = run_setting(None)  # the step as CUDA graphs (null: on for CUDA)
    progress: Optional[bool] = run_setting(None)  # a bar (null: on a terminal), else log lines
    train_eval: bool = run_setting(False)  # also evaluate a fixed, un-augmented training subset
    # BatchNorm statistics recomputed on N un-augmented training images before each validation
    # (null: 2048 on CUDA, 512 elsewhere: core.evaluation.recalibration_images)
    bn_recalibrate: Optional[int] = run_setting(None)
    # a continued run that changes `epochs`: rescale or hold the schedule (null: refuse)
    extend_schedule: Optional[str] = run_setting(None, choices=("rescale", "hold"))
    objective: str = run_setting("best_val_acc", choices=OBJECTIVES)  # what a sweeper optimizes
    diverge_factor: float = 10.0  # diverged: train loss non-finite or above factor × its first
    on_diverge: str = setting("stop", choices=("stop", "raise"))  # stop: exit 0, a sweep goes on
    deterministic: bool = False  # torch's deterministic algorithms, cudnn.benchmark off

    def __post_init__(self) -> None:
        self._check_choices()
        if self.cuda_graphs is True and self.device in ("cpu", "mps"):
            fix = "drop trainer.cuda_graphs=true (the default, null, is off there)"
            rule = "CUDA graphs need trainer.device=cuda (or auto on a GPU machine), not "
            rule += self.device
            self._fail("cuda_graphs", f"{rule}: {fix}")
        self._check_compile_mode()
        if not (math.isfinite(self.diverge_factor) and self.diverge_factor > 1):
            rule = "must be a finite number > 1 (stop when loss > factor × initial loss)"
            self._fail("diverge_factor", rule)
        for name in ("max_steps", "val_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                self._fail(name, "must be >= 1, or null")
        if self.log_every < 1:
            self._fail("log_every", "must be >= 1")
        # BatchNorm needs 2 values per channel for a variance; the images pass through in one batch
        n = self.bn_recalibrate
        if n is not None and n != 0 and not 2 <= n <= 10_000:
            rule = "must be null (by device), 0 (off) or from 2 to 10000 (one pass holds them all)"
            self._fail("bn_recalibrate", rule)

    def _check_compile_mode(self) -> None:
        nests = self.compile_mode in ("reduce-overhead", "max-autotune")  # they record own graphs
        if self.cuda_graphs is True and self.compile is not False and nests:
            auto = self.compile is None  # null compiles on CUDA, which is where cuda_graphs runs
            rule = "that mode records its own CUDA graphs, which cannot nest in "
            rule += "trainer.cuda_graphs=true" + (" (trainer.compile=null compiles on CUDA)" * auto)
            fix = "use trainer.compile_mode=default or max-autotune-no-cudagraphs"
            self._fail("compile_mode", f"{rule}: {fix}" + (", or trainer.compile=false" * auto))


@dataclass
class LogConfig(_Section):
    section: ClassVar[str] = "log"
    histograms_every: int = run_setting(0)  # steps between TensorBoard weight histograms (0: off)

    def __post_init__(self) -> None:
        if self.histograms_every < 0:
            self._fail("histograms_every", "must be >= 0 (0 = no weight histograms)")


@dataclass
class ProbesConfig(_Section):
    """Instruments that observe training without changing it (runner.probes): each adds figures
    to metrics.jsonl at log points or validations, and a run trains the same with any of them."""

    section: ClassVar[str] = "probes"
    # per stage: ‖θ‖ against the equilibrium norm, rotation and diffusion rate (log points)
    equilibrium: bool = run_setting(True)
    # per stage: the angle of one step against Kosson et al.'s (log points; a copy of the
    # scale-invariant kernels after the step before each log point)
    step_angle: bool = run_setting(True)
    l2_terms: bool = run_setting(True)  # Adam + L2: the L2 term against g and √v̂ (log points)
    # running BatchNorm statistics against exact ones (validations; one more forward pass and
    # one more evaluation of the validation set each time)
    bn_staleness: bool = run_setting(False)
    # BatchNorm momenta of extra running statistics fed by the training batches and never used in
    # training, e.g. [0.003,0.03,0.3] ([]: off): each validation evaluates the weights with each
    # set (one more evaluation each) and records the chain's drift, lag and noise figures
    shadow_bn: List[float] = run_setting([])

    def __post_init__(self) -> None:
        if not all(0 < m < 1 for m in self.shadow_bn) or len(set(self.shadow_bn)) < len(
            self.shadow_bn
        ):
            self._fail("shadow_bn", "needs distinct momenta in (0, 1), e.g. [0.003,0.03,0.3]")


@dataclass
class RunConfig(_Section):
    """The whole run; its sections check themselves first (they are built first), then the rules
    across them."""

    lr: float = 1e-3  # base learning rate α: the step uses lr_t = α·η_t
    wd: float = 0.0  # decoupled decay λ (optimizer.wd_scaling says how each step applies it)
    l2: float = 0.0  # L2 coefficient λ₂: adds λ₂·θ to the gradient (penalty λ₂/2·‖θ‖²)
    # one strength for every optimizer preset: sets wd (adamw, sgdw) or l2 (adam_l2, sgd_l2)
    reg: Optional[float] = setting(None, trains=False)
    epochs: int = setting(30, resumable=True)
    batch_size: int = 128
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    # what a person calls the run (a sweep: all its jobs): in its folder's name after the time,
    # summary.json, TensorBoard and the report; letters, digits, '.', '_', '-'
    name: Optional[str] = run_setting(None)
    tags: List[str] = run_setting([])  # labels: summary.json, TensorBoard's HParams, the report
    resume: Optional[str] = run_setting(None)  # a run folder to continue
    # a sweep's report at its end (python -m runner.analysis.report)
    report: bool = run_setting(False)

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
        if self.probes.bn_staleness and self.trainer.bn_recalibrate == 0:
            raise ConfigError(
                "probes.bn_staleness=true measures the running statistics against recalibrated "
                "ones, and trainer.bn_recalibrate=0 recalibrates nothing: give "
                "trainer.bn_recalibrate=null (by device) or a count, or probes.bn_staleness=false"
            )
        if self.optimizer.wd_tau is not None and not self.wd:
            rule = "leaves no decoupled decay for optimizer.wd_tau to set"
            self._fail("wd", f"{rule}: use optimizer=adamw or sgdw")
        self.schedule.check_span(self.epochs)
        self._check_names()

    def _check_names(self) -> None:
        if self.name is not None and not RUN_NAME.fullmatch(str(self.name)):
            rule = "letters, digits, '.', '_' and '-', at most 64, starting with a letter or digit"
            self._fail("name", f"a run's name is part of its folder's name: {rule}")
        for tag in self.tags:
            if not isinstance(tag, str) or not 0 < len(tag) <= 64 or "," in tag:
                self._fail("tags", f"each tag is 1 to 64 characters, no comma (got {tag!r})")


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_DEPTH = 1202  # ResNet-1202, He et al. 2016
MAX_EPOCHS = 100_000
MAX_IMAGES = 10_000_000  # 30 GB of 32×32 RGB uint8: past it a split cannot be held in memory


# ---------------------------------------------------------------- lists read from the schema


def _leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, field) of every setting of `cls`, walking into its sections, in order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def resumable_keys() -> tuple[str, ...]:
    """The dotted keys a continued run may change, in schema order."""
    return tuple(key for key, f in _leaves(RunConfig) if f.metadata.get("resumable"))


def non_training_keys() -> tuple[str, ...]:
    """The dotted keys that do not change what is trained: they stay out of sweep folder names
    and do not split runs into configurations in the report."""
    return tuple(key for key, f in _leaves(RunConfig) if not f.metadata.get("trains", True))


def choices(key: str) -> tuple:
    """The allowed values of dotted `key`, e.g. choices("trainer.device"); () for any value."""
    return dict(_leaves(RunConfig))[key].metadata.get("choices", ())


def flatten(d: dict, prefix: str = "") -> dict:
    """{"optimizer": {"name": "adamw"}} → {"optimizer.name": "adamw"}."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old, new)} for every setting that differs between two configs (nested or
    flat dicts, Hydra's own `hydra` node left out)."""
    a = {k: v for k, v in flatten(old).items() if not k.startswith("hydra.")}
    b = {k: v for k, v in flatten(new).items() if not k.startswith("hydra.")}
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def refused_changes(old: dict, new: dict) -> str | None:
    """None when a run saved with `old` may continue with `new`; else what it would change, for the
    refusal: only resumable settings may change, any other makes it another run."""
    allowed = {*resumable_keys()}
    refused = {k: ab for k, ab in changes(old, new).items() if k not in allowed}
    if not refused:
        return None
    return ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in refused.items())


def resume_hint() -> str:
    """What a refusal of a continued run says it may change."""
    return f"only {', '.join(resumable_keys())} may change"


# ---------------------------------------------------------------- Hydra


_RUN_ID = secrets.token_hex(3)
SCHEMA = "runner_schema"  # configs/config.yaml's first default: this module's RunConfig


def register_schema() -> None:
    """The schema's defaults as the base of configs/config.yaml (Hydra's ConfigStore), so every
    setting exists with its default before the YAML sets what differs. Stored as plain values:
    Hydra then refuses an unknown key as it composes, and `validate` checks types and ranges with
    the runner's own messages."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    ConfigStore.instance().store(name=SCHEMA, node=defaults)


def register_resolvers() -> None:
    """The interpolations configs/ uses; registered once per process."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_id"):  # runs started in the same second never share a folder
        OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID)
    if not OmegaConf.has_resolver("reg_or"):
        # optimizer presets: wd (or l2) = the sweep's shared strength `reg`, else the preset's own
        OmegaConf.register_new_resolver(
            "reg_or", lambda reg, default: default if reg is None else reg
        )
    if not OmegaConf.has_resolver("resume_or"):  # resume=RUN_DIR runs in that folder
        OmegaConf.register_new_resolver("resume_or", lambda resume, fresh: resume or fresh)


PRESET_EXAMPLES = {
    "model": "resnet56v2",
    "optimizer": "adamw",
    "schedule": "piecewise_constant",
    "data": "cifar10",
}


def validate(cfg: DictConfig) -> RunConfig:
    """Type-check `cfg` against the schema and range-check every value; raise ConfigError on the
    first problem.

    OmegaConf checks types and unknown keys while merging. `to_object` then builds the dataclasses,
    each section before the RunConfig that holds it; the first `__post_init__` that refuses a value
    raises ConfigError, which OmegaConf passes on unchanged (it wraps only a TypeError from a
    constructor: a bug, left a traceback).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigTypeError, OmegaConfBaseException

    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    for group in ("model", "optimizer", "schedule", "data"):  # `~model`: the schema's defaults
        if group not in cfg or not OmegaConf.select(cfg, f"{group}.name"):
            example = PRESET_EXAMPLES[group]
            raise ConfigError(
                f"{group} is not set (removed with ~{group}?): a run needs a {group} preset, e.g. "
                f"{group}={example}"
            )
    _check_reg(cfg)
    schema = OmegaConf.structured(RunConfig)  # builds each section's defaults: a failure is a bug
    try:
        merged = OmegaConf.merge(schema, cfg)
    except OmegaConfBaseException as e:
        raise _user_error(e) from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]  # merged is structured
    except ConfigTypeError:
        raise  # "Could not create instance of ...": a __post_init__ crashed, a bug
    except (
        OmegaConfBaseException
    ) as e:  # a value left ??? or an interpolation that does not resolve
        raise _user_error(e) from None


def _check_reg(cfg: DictConfig) -> None:
    """`reg` is the strength the optimizer preset puts into wd or l2 (its `${reg_or:...}`): a wd or
    l2 given as well would silently win over it, so the two together are refused."""
    from omegaconf import OmegaConf

    reg = OmegaConf.select(cfg, "reg", throw_on_missing=False)
    if reg is None:
        return
    for key in ("wd", "l2"):
        given = key in cfg and not OmegaConf.is_interpolation(cfg, key)
        if given and cfg[key] not in (0, None):
            raise ConfigError(
                f"reg={reg} and {key}={cfg[key]} are both set: reg sets wd (adamw, sgdw) or l2 "
                f"(adam_l2, sgd_l2) for the preset; give reg or {key}, not both"
            )


def _user_error(e: Exception) -> ConfigError:
    key = getattr(e, "full_key", None) or "config"
    msg = str(e).splitlines()[0]
    if "Missing mandatory value" in msg:
        return ConfigError(f"{key} is not set: give it on the command line, e.g. {key}=...")
    if "(int) is incompatible with type hint 'float'" in msg:  # YAML reads 0 and 1 as ints
        return ConfigError(f"{key}: {msg}: write the number with a decimal point (0.0, 1.0)")
    return ConfigError(f"{key}: {msg}")
