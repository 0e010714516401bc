"""Learning-rate schedules as pure functions of the (fractional) epoch.

A schedule returns the multiplier η_t of the paper (Loshchilov & Hutter 2019): the step's learning
rate is lr·η_t. It is evaluated once per optimizer step at t = step / steps_per_epoch, so every
schedule moves smoothly within an epoch. `period(t)` is the length in epochs of the schedule
period containing t (the restart period for SGDR, the whole run otherwise), which the paper's
normalized weight decay needs.

`python -m runner.analysis.schedule_plot [overrides]` draws the lr multiplier and the per-step decay
of a configuration into a PNG before spending GPU hours on it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from runner.config import ScheduleConfig


@dataclass(frozen=True)
class Schedule:
    multiplier: Callable[[float], float]
    period: Callable[[float], float]

    def __call__(self, epoch: float) -> float:
        return self.multiplier(epoch)


def piecewise_constant(
    milestones: Sequence[float], factors: Sequence[float]
) -> Callable[[float], float]:
    """η = 1 before milestones[0], then factors[i] from milestones[i] on (absolute, not
    cumulative)."""
    values = [1.0, *factors]
    return lambda t: values[bisect.bisect_right(milestones, t)]


def piecewise_linear(knots: Sequence[Sequence[float]]) -> Callable[[float], float]:
    """η linear between (at, value) knots, constant after the last one."""
    at = [k[0] for k in knots]
    val = [k[1] for k in knots]

    def f(t: float) -> float:
        i = bisect.bisect_right(at, t)
        if i >= len(at):
            return val[-1]
        a, b = at[i - 1], at[i]
        return val[i - 1] + (val[i] - val[i - 1]) * (t - a) / (b - a)

    return f


def restart_start(t: float, T_0: float, T_mult: float) -> tuple[float, float]:
    """(start, length) of the SGDR period holding t: restarts at T_0, T_0(1+T_mult),
    T_0(1+T_mult+T_mult²), …"""
    if T_mult == 1:
        i = math.floor(t / T_0)
        return i * T_0, T_0
    i = math.floor(math.log(1 + t * (T_mult - 1) / T_0, T_mult))
    start = T_0 * (T_mult**i - 1) / (T_mult - 1)
    if start > t:  # float round-off at a restart point
        i -= 1
        start = T_0 * (T_mult**i - 1) / (T_mult - 1)
    return start, T_0 * T_mult**i


def warm_restarts(
    T_0: float, T_mult: float, eta_min: float
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """SGDR (the paper's appendix, eq. 14): η = η_min + (1 − η_min)·½(1 + cos(π·T_cur/T_i)), per
    batch."""

    def f(t: float) -> float:
        start, length = restart_start(t, T_0, T_mult)
        return eta_min + (1 - eta_min) * 0.5 * (1 + math.cos(math.pi * (t - start) / length))

    return f, lambda t: restart_start(t, T_0, T_mult)[1]


def make_schedule(s: ScheduleConfig, epochs: int) -> Schedule:
    """Build the schedule of a validated config. Fractions (unit=fraction) are scaled to
    `epochs`."""
    scale = float(epochs) if s.unit == "fraction" else 1.0
    period = lambda t: float(epochs)  # noqa: E731
    if s.shape == "piecewise_constant":
        base = piecewise_constant([m * scale for m in s.milestones], s.factors)
    elif s.shape == "piecewise_linear":
        base = piecewise_linear([(k[0] * scale, k[1]) for k in s.knots])
    elif s.shape == "warm_restarts":
        T_0 = float(epochs) if s.T_0 is None else s.T_0 * scale  # T_0 is in `unit` too
        base, period = warm_restarts(T_0, s.T_mult, s.eta_min)
    else:
        raise ValueError(f"unknown schedule shape {s.shape!r}")
    if s.warmup_epochs > 0:
        w, inner = s.warmup_epochs, base
        base = lambda t: inner(t) * min(1.0, t / w)  # noqa: E731
    return Schedule(base, period)


def held_after(s: Schedule, last_t: float) -> Schedule:
    """The schedule up to epoch `last_t`, then that point's η and period for ever: how a continued
    run that grows `epochs` with trainer.extend_schedule=hold keeps the schedule it already ran."""
    return Schedule(lambda t: s.multiplier(min(t, last_t)), lambda t: s.period(min(t, last_t)))
