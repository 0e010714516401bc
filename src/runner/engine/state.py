"""A run in three parts: what `engine.build.setup` built (`Run`), where the loop is (`RunState`, the checkpoint's
payload with the weights, optimizer and RNGs) and what the loop measured in this process (`LoopStats`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from runner.config import RunConfig
from runner.core.data import DeviceLoader
from runner.core.headline import Headline
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer
from runner.engine.records import Recorder, Records
from runner.engine.step import EagerStep, GraphedForward, GraphedStep
from runner.engine.timing import LoopClock


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
    epoch_correct: int = 0  # Σ correctly classified training images over this epoch's steps (train mode, augmented)
    epoch_seen: int = 0  # the images of those steps
    schedule_epochs: int | None = None  # the epochs the schedule is laid out for (trainer.extend_schedule=hold)


class StepRecord(NamedTuple):
    """One step's record, its tensors still on the device."""

    step: int  # steps done after this one
    lr: float  # lr_t as applied
    decay: float  # d_t
    loss: torch.Tensor
    grad_norm: torch.Tensor | None  # on logging steps only
    correct: torch.Tensor | None = None  # the batch's correctly classified images (train mode)
    images: int = 0  # the batch's images


@dataclass
class LoopStats:
    """What the loop measured in this process: its clock, this epoch's training time, start-up and validations."""

    clock: LoopClock = field(default_factory=LoopClock)
    epoch_seconds: float = 0.0  # training seconds of this epoch so far, in this process
    epoch_images: int = 0  # images trained in them
    first_step_s: float | None = None
    val_times: list[float] = field(default_factory=list)
    t_start: float = field(default_factory=time.time)
    status: str = "completed"
    diverged_at: int | None = None


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
