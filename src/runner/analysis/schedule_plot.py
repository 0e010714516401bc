"""`python -m runner.analysis.schedule_plot [--out PNG] [overrides]`: draw a configuration's lr_t and per-step decay
d_t over the run, from the trainer's own step plan (core.step_plan), before spending GPU hours on it."""

from __future__ import annotations

from typing import Callable

from runner.core.schedules import Schedule
from runner.core.step_plan import plan_steps, steps_per_epoch


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
    """`python -m runner.analysis.schedule_plot [--out PNG] [overrides]`: draw the configured schedule and decay."""
    import argparse
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    import runner.configs
    from runner.config import UserError, register_resolvers, validate

    p = argparse.ArgumentParser(prog="python -m runner.analysis.schedule_plot", description=main.__doc__)
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
        print(f"runner.analysis.schedule_plot: error: {e}", file=sys.stderr)
        return 2
    d = cfg.data
    n_train = (
        args.n_train or d.subset or (((d.n_train or 2000) if d.name == "synthetic" else 50_000) - (d.val_split or 0))
    )
    spe = steps_per_epoch(n_train, cfg.batch_size, d.drop_last)
    plan = plan_steps(cfg, n_train, spe, cfg.epochs)  # the trainer's own plan, so the plot shows what runs
    s, rate = plan.schedule, plan.decay
    o = cfg.optimizer
    preset = cfg.schedule.preset or cfg.schedule.name  # cosine as typed, not its shape
    title = (
        f"{preset}, lr={cfg.lr:g}, {o.name} wd={cfg.wd:g} ({o.wd_scaling} scaling"
        f"{', normalized' if o.wd_normalized else ''}), l2={cfg.l2:g}; {cfg.epochs} epochs × {spe} steps"
    )
    plot(args.out, cfg.epochs, spe, cfg.lr, s, lambda t: rate(t, s(t)), title)
    print(f"wrote {args.out}: {title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
