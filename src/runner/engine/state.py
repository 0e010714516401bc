"""Where a run is (`RunState`, the checkpoint's payload with the weights, optimizer and RNGs), what one step
recorded (`StepRecord`) and what the loop measured in this process (`LoopStats`): plain values, no behaviour."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

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
