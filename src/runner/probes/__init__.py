"""Probes: instruments that observe training without changing it.

A probe sees the run at two moments and adds figures to the record written there:
    at_log(point)          a log point (every trainer.log_every steps, each validation and each
                           epoch's end): device tensors, read with the step records in one
                           transfer, then `read_log` turns them into the figures recorded
    at_validation(point)   a validation, inside BatchNorm's recalibration when there is one:
                           device tensors, read with the evaluations in one transfer
and keeps what it needs between log points in `state_dict()`, which each checkpoint saves, so a
continued run records what the straight run records. `probes.NAME=true|false` turns each on or off
(runner.config.ProbesConfig); a run trains bit for bit the same with any of them. Figures that
need no live tensors are computed afterwards from metrics.jsonl (runner.analysis).

    equilibrium     per stage: ‖θ‖ against the equilibrium norm, rotation, angular update
    l2_terms        Adam + L2: the L2 term against the data gradient and Adam's √v̂
    bn_staleness    BatchNorm's running statistics against exact ones, lag and mismatch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from runner.config import ProbesConfig
from runner.core.step_plan import StepPlan
from runner.core.update_rule import Optimizer


@dataclass(frozen=True)
class Subject:
    """The run as probes see it: what trains, and how its tensors group into stages."""

    model: nn.Module  # the eager module
    opt: Optimizer
    plan: StepPlan
    autocast: object
    stages: dict[str, torch.Tensor]  # stage → positions of its tensors in opt.regularized
    augmented_images: Callable[[], torch.Tensor | None]  # the BN reference images, augmented


@dataclass(frozen=True)
class LogPoint:
    """A log point after `step` steps: the regularized tensors' norms and, at a step's end, the
    data gradient's norms of that step (None where a signal stopped the run mid-epoch)."""

    step: int
    weight_norms: torch.Tensor  # ‖θ‖ of each opt.regularized tensor, on the device
    grad_norms: torch.Tensor | None  # ‖g‖ of each opt.params tensor (regularized first)


@dataclass(frozen=True)
class ValidationPoint:
    """A validation after `step` steps. `running` and `recalibrated` are the BatchNorm statistics
    (core.evaluation.bn_statistics) before and inside the recalibration (None when off);
    `evaluate_val()` evaluates the validation set with the statistics in place now."""

    step: int
    running: list
    recalibrated: list | None
    evaluate_val: Callable[[], tuple[torch.Tensor, torch.Tensor]]


class Probe:
    """What every probe may do; each method's default does nothing."""

    name = ""

    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        return {}

    def read_log(self, values: dict[str, float], point: LogPoint) -> dict[str, float]:
        return values

    def at_validation(self, point: ValidationPoint) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_probes(cfg: ProbesConfig, subject: Subject) -> tuple[Probe, ...]:
    """The probes `cfg` turns on, in a fixed order."""
    from runner.probes.bn_staleness import BNStaleness
    from runner.probes.equilibrium import Equilibrium
    from runner.probes.l2_terms import L2Terms

    kinds = {"equilibrium": Equilibrium, "l2_terms": L2Terms, "bn_staleness": BNStaleness}
    return tuple(kind(subject) for name, kind in kinds.items() if getattr(cfg, name))
