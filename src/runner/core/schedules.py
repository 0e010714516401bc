"""Learning-rate schedules as pure functions of the (fractional) epoch.

A schedule returns the multiplier η_t of the paper (Loshchilov & Hutter 2019): the step's learning
rate is lr·η_t. It is evaluated once per optimizer step at t = step / steps_per_epoch, so every
schedule moves smoothly within an epoch. `period(t)` is the length in epochs of the schedule
period containing t (the restart period for SGDR, the whole run otherwise), which the paper's
normalized weight decay needs.

Run `python -m runner.core.schedules [overrides]` to draw the lr multiplier and the per-step decay of a
configuration into a PNG before spending GPU hours on it.
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


def piecewise_constant(milestones: Sequence[float], factors: Sequence[float]) -> Callable[[float], float]:
    """η = 1 before milestones[0], then factors[i] from milestones[i] on (absolute, not cumulative)."""
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
    """(start, length) of the SGDR period holding t: restarts at T_0, T_0(1+T_mult), T_0(1+T_mult+T_mult²), …"""
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
    """SGDR (the paper's appendix, eq. 14): η = η_min + (1 − η_min)·½(1 + cos(π·T_cur/T_i)), per batch."""

    def f(t: float) -> float:
        start, length = restart_start(t, T_0, T_mult)
        return eta_min + (1 - eta_min) * 0.5 * (1 + math.cos(math.pi * (t - start) / length))

    return f, lambda t: restart_start(t, T_0, T_mult)[1]


def make_schedule(s: ScheduleConfig, epochs: int) -> Schedule:
    """Build the schedule of a validated config. Fractions (unit=fraction) are scaled to `epochs`."""
    scale = float(epochs) if s.unit == "fraction" else 1.0
    period = lambda t: float(epochs)  # noqa: E731
    if s.name == "piecewise_constant":
        base = piecewise_constant([m * scale for m in s.milestones], s.factors)
    elif s.name == "piecewise_linear":
        base = piecewise_linear([(k[0] * scale, k[1]) for k in s.knots])
    elif s.name == "warm_restarts":
        T_0 = float(epochs) if s.T_0 is None else s.T_0 * scale  # T_0 is in `unit` too
        base, period = warm_restarts(T_0, s.T_mult, s.eta_min)
    else:
        raise ValueError(f"unknown schedule {s.name!r}")
    if s.warmup_epochs > 0:
        w, inner = s.warmup_epochs, base
        base = lambda t: inner(t) * min(1.0, t / w)  # noqa: E731
    return Schedule(base, period)


def held_after(s: Schedule, last_t: float) -> Schedule:
    """The schedule up to epoch `last_t`, then that point's η and period for ever: how a continued run that
    grows `epochs` with trainer.extend_schedule=hold keeps the schedule it already ran."""
    return Schedule(lambda t: s.multiplier(min(t, last_t)), lambda t: s.period(min(t, last_t)))


def plot(
    path: str,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    schedule: Schedule,
    decay: Callable[[float], float],
    title: str,
) -> None:
    """Draw η_t·lr and the per-step decay over the run into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = epochs * steps_per_epoch
    ts = [k / steps_per_epoch for k in range(n)]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(ts, [lr * schedule(t) for t in ts])
    a.set_ylabel("learning rate lr·η_t")
    a.set_title(title, fontsize=9)
    b.plot(ts, [decay(t) for t in ts], color="tab:red")
    b.set_ylabel("decay per step (θ ← θ·(1 − d))")
    b.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.core.schedules [--out PNG] [overrides]`: draw the configured schedule and decay."""
    import argparse
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    import runner.configs
    from runner.config import UserError, register_resolvers, validate

    p = argparse.ArgumentParser(prog="python -m runner.core.schedules", description=main.__doc__)
    p.add_argument("--out", default="schedule.png")
    p.add_argument("--n-train", type=int, default=None, help="training images (default: from the data config)")
    p.add_argument(
        "overrides", nargs="*", help="the same overrides python -m runner takes, e.g. schedule=cosine wd=1e-3"
    )
    args = p.parse_args(argv)
    register_resolvers()
    try:
        from pathlib import Path

        with initialize_config_dir(config_dir=str(Path(runner.configs.__file__).parent), version_base="1.3"):
            cfg = validate(compose(config_name="config", overrides=args.overrides))
    except (UserError, HydraException) as e:
        print(f"runner.core.schedules: error: {e}", file=sys.stderr)
        return 2
    from runner.engine.build import regularization  # the trainer's own schedule and decay, so the plot shows what runs

    d = cfg.data
    n_train = args.n_train or d.subset or ((d.n_train if d.name == "synthetic" else 50_000) - (d.val_split or 0))
    spe = n_train // cfg.batch_size if d.drop_last else -(-n_train // cfg.batch_size)
    s, rate, _, _ = regularization(cfg, n_train, spe, cfg.epochs)
    o = cfg.optimizer
    title = (
        f"{cfg.schedule.name}, lr={cfg.lr:g}, {o.name} wd={cfg.wd:g} ({o.wd_scaling} scaling"
        f"{', normalized' if o.wd_normalized else ''}), l2={cfg.l2:g}; {cfg.epochs} epochs × {spe} steps"
    )
    plot(args.out, cfg.epochs, spe, cfg.lr, s, lambda t: rate(t, s(t)), title)
    print(f"wrote {args.out}: {title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
