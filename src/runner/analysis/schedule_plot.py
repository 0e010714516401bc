"""`python -m runner.analysis.schedule_plot [--out PNG] [overrides]`: draw a configuration's lr_t
and per-step decay d_t over the run, from the trainer's own step plan (core.step_plan), before
spending GPU hours on it."""

from __future__ import annotations

from runner.core.loader import batches_per_epoch
from runner.core.step_plan import StepPlan, plan_steps


def plot(path: str, plan: StepPlan, title: str) -> None:
    """Draw the plan's lr_t and d_t of every step over the run into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [k / plan.steps_per_epoch for k in range(len(plan.lr))]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(ts, plan.lr)
    a.set_ylabel("learning rate lr·η_t")
    a.set_title(title, fontsize=9)
    b.plot(ts, plan.d, color="tab:red")
    b.set_ylabel("decay per step (θ ← θ·(1 − d))")
    b.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.analysis.schedule_plot [--out PNG] [overrides]`: draw the configured
    schedule and decay."""
    import argparse
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    import runner.configs
    from runner.config import UserError, register_resolvers, register_schema, validate

    p = argparse.ArgumentParser(
        prog="python -m runner.analysis.schedule_plot", description=main.__doc__
    )
    p.add_argument("--out", default="schedule.png")
    p.add_argument(
        "--n-train", type=int, default=None, help="training images (default: from the data config)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="the same overrides python -m runner takes, e.g. schedule=cosine wd=1e-3",
    )
    args = p.parse_args(argv)
    register_schema()
    register_resolvers()
    try:
        from pathlib import Path

        with initialize_config_dir(
            config_dir=str(Path(runner.configs.__file__).parent), version_base="1.3"
        ):
            cfg = validate(compose(config_name="config", overrides=args.overrides))
    except (UserError, HydraException) as e:
        print(f"runner.analysis.schedule_plot: error: {e}", file=sys.stderr)
        return 2
    d = cfg.data
    n_train = (
        args.n_train
        or d.subset
        or (((d.n_train or 2000) if d.source == "synthetic" else 50_000) - (d.val_split or 0))
    )
    spe = batches_per_epoch(n_train, cfg.batch_size, d.drop_last)
    # the trainer's own plan, so the plot shows what runs
    plan = plan_steps(cfg, n_train, spe, cfg.epochs)
    o = cfg.optimizer
    preset = cfg.schedule.name  # cosine as typed, not its shape
    scaling = o.wd_scaling + (", normalized" if o.wd_normalized else "")
    title = (
        f"{preset}, lr={cfg.lr:g}, {o.name} wd={cfg.wd:g} ({scaling} scaling), l2={cfg.l2:g}; "
        f"{cfg.epochs} epochs × {spe} steps"
    )
    plot(args.out, plan, title)
    print(f"wrote {args.out}: {title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
