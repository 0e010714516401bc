"""A run as engine.build.setup builds it, in small frozen parts: how it set out to run
(`ExecutionPath`), what trains (`Trainee`), what it sees (`RunData`), where its records go
(`Output`). Beside them where the loop is (`state`, engine.state.RunState) and what the loop
measured in this process (`stats`, engine.state.LoopStats): the two objects that change as the
run goes, with the trainee's `execution` (engine.execution), which moves to a safer path when
compile or capture fails at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from runner.config import RunConfig
from runner.core.headline import Headline
from runner.core.loader import DeviceLoader
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.engine.execution import Execution, ExecutionPath
from runner.engine.records import Recorder
from runner.engine.state import LoopStats, RunState
from runner.engine.step import GraphedStep, StepOut
from runner.probes import Probe


@dataclass(frozen=True)
class Trainee:
    """What trains: the model, its optimizer, the plan of every step, and the step itself on the
    path that runs now (`execution`)."""

    model: nn.Module  # the eager module: checkpoints, BatchNorm recalibration
    opt: Optimizer
    autocast: Any
    plan: StepPlan
    execution: Execution

    @property
    def step(self) -> Callable[..., StepOut]:
        """step(x, y, k, log_point): step k (engine.step), falling back where it must."""
        return self.execution.run_step

    @property
    def eval_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The validation forward (engine.step.GraphedForward), falling back where it must."""
        return self.execution.run_forward

    @property
    def graphed(self) -> GraphedStep | None:
        return self.execution.graphed

    @property
    def path(self) -> ExecutionPath:
        """The path that runs now (Run.path: the one the run set out on)."""
        return self.execution.path


class Evaluations(NamedTuple):
    """The evaluated image sets, padded to fixed-shape batches."""

    val: DeviceLoader
    train_eval: DeviceLoader | None = None  # a fixed, un-augmented training subset

    def items(self):
        return [(name, loader) for name, loader in self._asdict().items() if loader is not None]


@dataclass(frozen=True)
class Inference:
    """What best.pt needs besides the weights to run on new images: the class names in label order
    and x = (RGB uint8 / 255 − mean) / std (mean per channel or a (C, H, W) image; std None = 1)."""

    classes: list[str]
    normalize: str
    mean: Any
    std: Any
    image_size: list[int]


@dataclass(frozen=True)
class RunData:
    """What the run sees: its training batches, its evaluations, and the images BatchNorm's
    statistics are recomputed on (None: trainer.bn_recalibrate=0)."""

    train: DeviceLoader
    evals: Evaluations
    test: DeviceLoader | None  # the test split, when validation is held out of training
    recal_images: torch.Tensor | None
    inference: Inference
    n_train: int
    n_val: int
    fingerprint: str


@dataclass(frozen=True)
class Output:
    """Where the run's records go: its folder, metrics.jsonl and TensorBoard, its log lines."""

    run_dir: Path
    recorder: Recorder
    log: logging.LoggerAdapter


@dataclass(frozen=True)
class Run:
    """One training run, as `setup` builds it."""

    cfg: RunConfig
    path: ExecutionPath  # the path it set out on (trainee.path: the one that runs now)
    trainee: Trainee
    data: RunData
    out: Output
    probes: tuple[Probe, ...]
    headline: Headline  # which evaluation summary.json reports
    total: int  # the steps this process trains up to
    val_every: int
    facts: dict  # what summary.json says about the run besides its results
    state: RunState
    stats: LoopStats

    @property
    def steps_per_epoch(self) -> int:
        return self.trainee.plan.steps_per_epoch

    @property
    def device(self) -> torch.device:
        return self.path.device

    def log_point_due(self, step: int) -> bool:
        """Whether the loop records norms and the probes' figures after `step` steps: every
        trainer.log_every steps, at each validation, at each epoch's end and at the last step."""
        every = (self.cfg.trainer.log_every, self.val_every, self.steps_per_epoch)
        return step == self.total or any(step % n == 0 for n in every)
