"""What optimizer step k applies: one decision, read by the eager step, the CUDA graph and the schedule plot.

Step k runs at fractional epoch t = k / steps_per_epoch and applies
    η_t    the schedule's multiplier (core.schedules), laid out for `schedule_epochs` and held at its last step
           beyond them (a continued run that grew `epochs` with trainer.extend_schedule=hold)
    lr_t   = α·η_t                                   (α = `lr`)
    d_t    = the decoupled shrink θ ← θ·(1 − d_t)     by optimizer.wd_scaling: η_t·λ, lr_t·λ or λ (core.update_rule)
    λ₂     the L2 coefficient: `l2`, or λ₂_norm·√(b/(B·T)) with T the whole run when optimizer.l2_normalized
where λ is `wd`, or (optimizer.wd_tau = τ/T) the λ whose EMA timescale 1/mean_t d_t is that fraction of the run's
steps, or λ_norm·√(b/(B·T)) with T the epochs of the run or of the current warm-restart period when
optimizer.wd_normalized (Loshchilov & Hutter 2019, Appendix B.1; b batch size, B training images).
`StepPlan.lr` and `.d` hold lr_t and d_t of every step, before any rounding: the eager step reads them at k,
the graph copies them to the device once (engine.step), and both round them in Optimizer.lr_value/keep_value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from runner.config import ConfigError, RunConfig
from runner.core.schedules import Schedule, held_after, make_schedule
from runner.core.update_rule import decoupled_rate, normalized_lambda


@dataclass(frozen=True)
class StepPlan:
    schedule: Schedule  # η_t
    decay: Callable[[float, float], float]  # d(t, η_t), 0 when wd = 0
    l2: float  # λ₂ as applied
    lam_now: float | None  # the normalized λ at t = 0 (for the description), None when wd is not normalized
    lr: list[float]  # lr_t of steps 0 … epochs·steps_per_epoch − 1
    d: list[float]  # d_t of the same steps
    steps_per_epoch: int
    wd: float = 0.0  # λ as applied: `wd`, or the λ optimizer.wd_tau sets

    def at(self, k: int) -> tuple[float, float]:
        """(lr_t, d_t) of step k."""
        return self.lr[k], self.d[k]


def step_tables(schedule, decay, lr: float, steps_per_epoch: int, n_steps: int) -> tuple[list[float], list[float]]:
    """(lr_t, d_t) for steps 0..n_steps-1 at t = k / steps_per_epoch."""
    etas = [schedule(k / steps_per_epoch) for k in range(n_steps)]
    return [lr * e for e in etas], [decay(k / steps_per_epoch, e) for k, e in enumerate(etas)]


def plan_steps(cfg: RunConfig, n_train: int, steps_per_epoch: int, schedule_epochs: int) -> StepPlan:
    """The plan of a validated config on `n_train` training images, its schedule laid out for `schedule_epochs`."""
    o, spe = cfg.optimizer, steps_per_epoch
    schedule = make_schedule(cfg.schedule, schedule_epochs)
    if schedule_epochs != cfg.epochs:
        schedule = held_after(schedule, (schedule_epochs * spe - 1) / spe)
    wd = tau_lambda(cfg, schedule, spe) if o.wd_tau is not None else cfg.wd
    rate = decoupled_rate(
        wd,
        o.wd_scaling,
        cfg.lr,
        normalized=o.wd_normalized,
        batch_size=cfg.batch_size,
        n_train=n_train,
        period=schedule.period,
    )
    decay = (lambda t, eta: rate(t, eta)) if wd else (lambda t, eta: 0.0)
    l2 = normalized_lambda(cfg.l2, cfg.batch_size, n_train, schedule_epochs) if o.l2_normalized else cfg.l2
    lam_now = normalized_lambda(cfg.wd, cfg.batch_size, n_train, schedule.period(0.0)) if o.wd_normalized else None
    lr, d = step_tables(schedule, decay, cfg.lr, spe, cfg.epochs * spe)
    return StepPlan(schedule, decay, l2, lam_now, lr, d, spe, wd)


def tau_lambda(cfg: RunConfig, schedule, spe: int) -> float:
    """λ for optimizer.wd_tau = τ/T: every d_t is linear in λ, so λ = 1 / (τ/T · Σ_t d_t(λ = 1)) over the run's
    steps makes the EMA timescale 1/mean_t d_t exactly τ/T of them (core.equilibrium.ema_timescale)."""
    unit = decoupled_rate(1.0, cfg.optimizer.wd_scaling, cfg.lr)
    units = [unit(k / spe, schedule(k / spe)) for k in range(cfg.epochs * spe)]
    lam = 1.0 / (cfg.optimizer.wd_tau * sum(units))
    if lam * max(units) >= 0.5:  # a shrink of half the weights in one step: τ shorter than a couple of steps
        raise ConfigError(
            f"optimizer.wd_tau={cfg.optimizer.wd_tau:g} gives a per-step shrink d_t up to {lam * max(units):.2g} over "
            f"this run's {len(units)} steps: raise optimizer.wd_tau (τ = {cfg.optimizer.wd_tau * len(units):.3g} steps)"
        )
    return lam


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps in one epoch: full batches only under data.drop_last, else one more for the remainder."""
    return n_train // batch_size if drop_last else -(-n_train // batch_size)
