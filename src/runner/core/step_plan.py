"""What optimizer step k applies: one decision, read by the eager step, the CUDA graph, the
benchmark and the schedule plot.

Step k runs at fractional epoch t = k / steps_per_epoch and applies
    η_t    the schedule's multiplier (core.schedules), laid out for `schedule_epochs` and held at
           its last step beyond them (a continued run that grew `epochs` under
           trainer.extend_schedule=hold; =rescale lays it out again for the new epochs)
    lr_t   = α·η_t                                   (α = `lr`)
    d_t    the decoupled shrink θ ← θ·(1 − d_t), by optimizer.wd_scaling (`decoupled_rate`):
               schedule   d_t = η_t·λ     the paper (Loshchilov & Hutter 2019, Alg. 2 line 12)
               lr         d_t = lr_t·λ    torch.optim.AdamW, Keras AdamW
               none       d_t = λ         TF-Addons AdamW/SGDW
    λ₂     the L2 coefficient: `l2`, or λ₂_norm·√(b/(B·T)) with T the whole run (l2_normalized)
where λ is `wd`; or λ_norm·√(b/(B·T)) with T the epochs of the run or of the current
warm-restart period (optimizer.wd_normalized: the paper's Appendix B.1, b batch size, B training
images); or, with optimizer.wd_tau = τ/T, the λ whose EMA timescale 1/mean_t d_t is that fraction
of the run's steps. Every d_t must stay below 1 (`checked`): θ·(1 − d_t) with d_t ≥ 1 zeroes or
flips the weights. `StepPlan.lr` and `.d` hold lr_t and d_t of every step before any rounding;
the update rounds both where it applies them (core.update_rule.Optimizer.lr_value/keep_value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from runner.config import ConfigError, RunConfig
from runner.core.schedules import Schedule, held_after, make_schedule


@dataclass(frozen=True)
class StepPlan:
    schedule: Schedule  # η_t
    wd: float  # λ as applied (`wd`, or the λ optimizer.wd_tau sets); 0: no decoupled decay
    l2: float  # λ₂ as applied
    lam_now: float | None  # the normalized λ at t = 0 (for the description); None: not normalized
    lr: list[float]  # lr_t of steps 0 … epochs·steps_per_epoch − 1
    d: list[float]  # d_t of the same steps
    steps_per_epoch: int

    def at(self, k: int) -> tuple[float, float]:
        """(lr_t, d_t) of step k."""
        return self.lr[k], self.d[k]


def normalized_lambda(lam: float, batch_size: int, n_train: int, epochs: float) -> float:
    """The paper's normalization (Appendix B.1): λ = λ_norm·√(b/(B·T))."""
    return lam * math.sqrt(batch_size / (n_train * epochs))


def decoupled_rate(
    wd: float,
    wd_scaling: str,
    lr: float,
    *,
    normalized: bool = False,
    batch_size: int = 1,
    n_train: int = 1,
    period: Callable[[float], float] = lambda t: 1.0,
) -> Callable[[float, float], float]:
    """d(t, η_t): the fraction by which decayed weights shrink at the step taken at epoch t."""

    def lam(t: float) -> float:
        return normalized_lambda(wd, batch_size, n_train, period(t)) if normalized else wd

    if wd_scaling == "schedule":
        return lambda t, eta: eta * lam(t)
    if wd_scaling == "lr":
        return lambda t, eta: (lr * eta) * lam(t)
    if wd_scaling == "none":
        return lambda t, eta: lam(t)
    raise ValueError(f"unknown wd_scaling {wd_scaling!r}")


def plan_steps(
    cfg: RunConfig, n_train: int, steps_per_epoch: int, schedule_epochs: int
) -> StepPlan:
    """The plan of a validated config on `n_train` training images, its schedule laid out for
    `schedule_epochs` (the run's own epochs, or a continued run's earlier ones under hold)."""
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
    l2 = cfg.l2
    if o.l2_normalized:
        l2 = normalized_lambda(cfg.l2, cfg.batch_size, n_train, schedule_epochs)
    lam_now = None
    if o.wd_normalized:
        lam_now = normalized_lambda(cfg.wd, cfg.batch_size, n_train, schedule.period(0.0))
    etas = [schedule(k / spe) for k in range(cfg.epochs * spe)]
    d = [rate(k / spe, eta) if wd else 0.0 for k, eta in enumerate(etas)]
    return checked(StepPlan(schedule, wd, l2, lam_now, [cfg.lr * e for e in etas], d, spe), cfg)


def checked(plan: StepPlan, cfg: RunConfig) -> StepPlan:
    """The plan, refused when some step would shrink the weights by all of themselves or more."""
    worst = max(plan.d, default=0.0)
    if worst >= 1:
        how = f"optimizer.wd_scaling={cfg.optimizer.wd_scaling}"
        if cfg.optimizer.wd_tau is not None:
            key = f"optimizer.wd_tau={cfg.optimizer.wd_tau:g}"
            fix = f"raise optimizer.wd_tau (τ = {cfg.optimizer.wd_tau * len(plan.d):.3g} steps)"
        else:
            key, fix = f"wd={cfg.wd:g}", "lower wd"
        raise ConfigError(
            f"{key} makes the per-step shrink d_t reach {worst:.3g} ({how}): θ·(1 − d_t) with "
            f"d_t >= 1 zeroes or flips the weights; {fix}"
        )
    return plan


def tau_lambda(cfg: RunConfig, schedule: Schedule, spe: int) -> float:
    """λ for optimizer.wd_tau = τ/T: every d_t is linear in λ, so λ = 1 / (τ/T · Σ_t d_t(λ = 1))
    over the run's steps makes the EMA timescale 1/mean_t d_t exactly τ/T of them."""
    unit = decoupled_rate(1.0, cfg.optimizer.wd_scaling, cfg.lr)
    units = [unit(k / spe, schedule(k / spe)) for k in range(cfg.epochs * spe)]
    return 1.0 / (cfg.optimizer.wd_tau * sum(units))


def effective_decay(algorithm: str, d_t: float, lr_t: float, l2: float, momentum: float):
    """The per-step shrink of the weights' EMA: d_t under decoupled decay; lr_t·λ₂/(1 − momentum)
    for SGD + L2 in the long run; None for Adam + L2 alone (its L2 term is divided by √v̂: no
    shrink of its own) or no regularization."""
    if d_t > 0:
        return d_t
    if l2 > 0 and algorithm == "sgd":
        return lr_t * l2 / (1 - momentum)
    return None


# Wang & Aitchison's guidance on the EMA timescale, in epochs (arXiv:2405.13698, abstract v1/v2)
TAU_MIN_EPOCHS = 1.0


def timescale(plan: StepPlan, total: int, algorithm: str, momentum: float) -> dict:
    """The decay's EMA timescale over the run's first `total` steps (Wang & Aitchison 2024: θ is
    an EMA of the updates with memory 1/d_t steps) in both conventions (`timescales`), with the
    effective shrink of each rule (`effective_decay`); every figure None without a shrink."""
    lrs = plan.lr[:total]
    eff = [
        effective_decay(algorithm, d, lr, plan.l2, momentum) or 0.0
        for lr, d in zip(lrs, plan.d[:total])
    ]
    keys = ("tau_steps", "tau_epochs", "tau_fraction", "tau_iter_wa", "tau_epoch_wa")
    empty = dict.fromkeys(keys + ("tau_fraction_wa", "below_one_epoch", "above_run"))
    return {**empty, **timescales(lrs, eff, plan.steps_per_epoch)}


def timescales(lrs: list[float], decays: list[float], steps_per_epoch: int) -> dict:
    """The EMA timescale of a plan's lr_t and d_t in both conventions: the runner's tau_steps =
    1/mean d_t (what optimizer.wd_tau sets), and Wang & Aitchison's tau_iter_wa = 1/d_t at the step
    of the peak lr_t, their 1/(η·λ) with η as set; each also in epochs and as a fraction of the
    run's steps; {} without decay. Under cosine with a warm-up epoch of 20, tau_steps ≈ 2.1 ×
    tau_iter_wa. `below_one_epoch` flags tau_epoch_wa < 1 (their lower guide: the EMA should
    average over all the data), `above_run` tau_epoch_wa beyond the run (their upper guide)."""
    n = len(decays)
    mean = sum(decays) / n if n else 0.0
    if mean <= 0 or not lrs:
        return {}
    d_peak = decays[max(range(n), key=lrs.__getitem__)]
    out = {
        "tau_steps": 1 / mean,
        "tau_epochs": 1 / (mean * steps_per_epoch),
        "tau_fraction": 1 / (mean * n),
    }
    if d_peak > 0:
        out |= {
            "tau_iter_wa": 1 / d_peak,
            "tau_epoch_wa": 1 / (d_peak * steps_per_epoch),
            "tau_fraction_wa": 1 / (d_peak * n),
        }
        out["below_one_epoch"] = out["tau_epoch_wa"] < TAU_MIN_EPOCHS
        out["above_run"] = out["tau_epoch_wa"] > n / steps_per_epoch
    return out


def describe(plan: StepPlan, cfg: RunConfig, n_tensors: int, n_values: int) -> list[str]:
    """One plain sentence per mechanism, as printed at start and stored in summary.json."""
    o = cfg.optimizer
    where = f"on {n_tensors} tensors ({n_values / 1e6:.2f} M values)"
    lam = f"{plan.wd:g}"
    if o.wd_normalized:
        lam = f"λ_norm·√(b/(B·T)) = {plan.lam_now:.3g} (λ_norm={cfg.wd:g})"
    rule = {"schedule": f"η_t·{lam}", "lr": f"lr_t·{lam}", "none": lam}[o.wd_scaling]
    out = ["decoupled decay: off"]
    if plan.wd:
        out = [f"decoupled decay: θ ← θ·(1 − {rule}) {where} (wd_scaling={o.wd_scaling})"]
    how = "divided by √v̂ with the rest of the gradient"
    if o.algorithm == "sgd":
        how = "scaled by lr_t"
    l2 = plan.l2
    out.append(
        f"L2: g ← g + {l2:g}·θ, penalty {l2 / 2:g}·‖θ‖², {where}, {how}" if l2 else "L2: off"
    )
    return out
