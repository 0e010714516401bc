"""Probes: instruments that observe training without changing it.

A probe sees the run at three moments and adds figures to the record written at two of them:
    after_step(point)      right after each optimizer step, outside the step (eager, between two
                           replays of a CUDA graph, outside torch.compile's graph): device work
                           only, no host read; most probes leave it alone
    at_log(point)          a log point (every trainer.log_every steps, each validation and each
                           epoch's end): device tensors, read with the step records in one
                           transfer, then `read_log` turns them into the figures recorded
    at_validation(point)   a validation, inside BatchNorm's recalibration when there is one:
                           device tensors, read with the evaluations in one transfer
and keeps what it needs between calls in `state_dict()`, which each checkpoint saves, so a
continued run records what the straight run records; `facts()` goes into summary.json once.
`probes.NAME` turns each on or off (runner.config.ProbesConfig); a run trains bit for bit the same
with any of them. Figures that need no live tensors are computed afterwards from metrics.jsonl
(runner.analysis).

    equilibrium     per stage: ‖θ‖ against the equilibrium norm, the long-run diffusion rate
    step_angle      per stage: the angle θ turns in one step, against Kosson et al.'s prediction
    l2_terms        Adam + L2: the L2 term against the data gradient and Adam's √v̂
    bn_staleness    BatchNorm's running statistics against exact ones, lag and mismatch
    shadow_bn       extra running statistics at other momenta, each evaluated, and the chain's
                    drift, lag and noise figures per stage
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
    batch_size: int = 0  # images per training batch (the batch noise of BatchNorm's statistics)


@dataclass(frozen=True)
class StepPoint:
    """Right after the optimizer step that made `step` steps: `log_point` says a log point follows
    now, `log_next` that one follows the next step."""

    step: int
    log_point: bool
    log_next: bool


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

    def after_step(self, point: StepPoint) -> None:
        pass

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

    def facts(self) -> dict:
        return {}


def make_probes(cfg: ProbesConfig, subject: Subject) -> tuple[Probe, ...]:
    """The probes `cfg` turns on, in a fixed order; bn_staleness and shadow_bn share one augmented
    reference, computed once per validation."""
    from runner.probes.bn_staleness import AugmentedReference, BNStaleness
    from runner.probes.equilibrium import Equilibrium
    from runner.probes.l2_terms import L2Terms
    from runner.probes.rotation import StepAngle
    from runner.probes.shadow_bn import ShadowBN

    reference = AugmentedReference(subject) if cfg.bn_staleness or cfg.shadow_bn else None
    made = {
        "equilibrium": lambda: Equilibrium(subject),
        "step_angle": lambda: StepAngle(subject),
        "l2_terms": lambda: L2Terms(subject),
        "bn_staleness": lambda: BNStaleness(subject, reference),
        "shadow_bn": lambda: ShadowBN(subject, tuple(cfg.shadow_bn), reference),
    }
    return tuple(make() for name, make in made.items() if getattr(cfg, name))
