"""A run as `engine.build.setup` builds it: what trains, on what, with what records; beside it where the loop is
(`state`, engine.state.RunState) and what the loop measured in this process (`stats`, engine.state.LoopStats)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from runner.config import RunConfig
from runner.core.headline import Headline
from runner.core.loader import DeviceLoader
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.engine.records import Recorder, Records
from runner.engine.state import LoopStats, RunState
from runner.engine.step import EagerStep, GraphedForward, GraphedStep


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
    plan: StepPlan  # what every step applies
    step: EagerStep | GraphedStep
    train_loader: DeviceLoader
    evals: dict  # "val" (and "train_eval") → DeviceLoader of padded, fixed-shape batches
    eval_forward: GraphedForward
    recal_images: torch.Tensor | None  # the fixed training images BatchNorm statistics are recomputed on
    headline: Headline  # which evaluation summary.json reports
    total: int
    val_every: int
    state: RunState
    records: Records
    recorder: Recorder
    info: dict  # what summary.json says about the run besides its results
    log: logging.LoggerAdapter
    test: DeviceLoader | None = None  # the test split when validation is a split held out of training (data.val_split)
    inference: dict = field(default_factory=dict)  # what best.pt needs besides weights: classes, normalization
    stats: LoopStats = field(default_factory=LoopStats)
    bar: Any = None  # the progress bar while one is shown
    recal_aug_images: torch.Tensor | None = None  # the same images through one fixed draw of the augmentation

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def graphed(self) -> GraphedStep | None:
        return self.step if isinstance(self.step, GraphedStep) else None
