"""Where a run is (`RunState`, the checkpoint's payload with the weights, optimizer, RNGs and the
probes' state), what one step left to record (`StepRecord`) and what the loop measured in this
process (`LoopStats`): plain values, no behaviour beyond resetting an epoch's sums."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from runner.engine.timing import LoopClock


@dataclass
class RunState:
    """Where the loop is and what it has seen: with the weights, optimizer and RNGs, a
    checkpoint's payload."""

    step: int = 0
    best_acc_running: float | None = None
    best_acc_recal: float | None = None
    last_val: dict | None = None  # the latest validation record
    initial_loss: float | None = None
    epoch_loss_sum: float = 0.0  # Σ train_loss over this epoch's steps so far (final_train_loss)
    epoch_steps: int = 0
    epoch_correct: int = 0  # Σ correctly classified training images this epoch (train mode)
    epoch_seen: int = 0  # the images of those steps
    schedule_epochs: int | None = None  # the epochs the schedule is laid out for

    def new_epoch(self) -> None:
        self.epoch_loss_sum, self.epoch_steps, self.epoch_correct, self.epoch_seen = 0.0, 0, 0, 0


class StepRecord(NamedTuple):
    """One step's record, its tensors still on the device."""

    step: int  # steps done after this one
    lr: float  # lr_t as applied
    decay: float  # d_t
    loss: torch.Tensor
    correct: torch.Tensor  # the batch's correctly classified images (train mode)
    images: int  # the batch's images
    grad_norms: torch.Tensor | None  # ‖g‖ of each parameter, at log points


@dataclass
class LoopStats:
    """What the loop measured in this process: its clock, this epoch's training time, start-up,
    validations, the steps not yet recorded, and how the run ended."""

    clock: LoopClock = field(default_factory=LoopClock)
    pending: list[StepRecord] = field(default_factory=list)  # recorded at the next log point
    last_finite: dict | None = None  # the last step record with a finite loss
    epoch_seconds: float = 0.0  # training seconds of this epoch so far, in this process
    epoch_images: int = 0  # images trained in them
    first_step_s: float | None = None
    val_times: list[float] = field(default_factory=list)
    t_start: float = field(default_factory=time.time)
    status: str = "completed"
    diverged_at: int | None = None
