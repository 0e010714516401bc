"""`python -m runner.analysis.report DIR`: tables and figures over every run found under DIR.

DIR is a run folder, a sweep folder (multirun/DATE/TIME_x/) or any folder above them; analysis.runs finds the runs
and groups them into configurations (seeds averaged). This module writes the tables: OUT/report.md, OUT/runs.csv
(one row per run), OUT/configs.csv, and asks runner.analysis.figures for the PNG figures (OUT/*.png, and one loss figure
per run in OUT/runs/).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from pathlib import Path

from runner.analysis.figures import (
    heatmap_grid,
    oscillation_series,
    plot_heatmap,
    plot_oscillation,
    plot_run_losses,
    plot_staleness,
    plot_val_curves,
    plot_weight_norm,
    staleness_points,
)
from runner.analysis.runs import (
    ID_KEYS,
    METRICS,
    STATS,
    collect_runs,
    finite_number,
    fmt,
    group_configs,
    value,
    varying_keys,
)

# the oscillation figures without a suffix are of the running-statistics series (runner.analysis.oscillation)
TABLE_STATS = {
    "best_val_acc": "best val acc",
    "final_val_acc": "final val acc",
    "final_val_loss": "final val loss",
    "dispersion": "dispersion running",
    "dispersion_recal": "dispersion recal",
    "dispersion_share_gap": "BN gap share",
    "acc_noise_floor": "acc noise floor",
    "val_every_steps": "val every",
    "tv_per_epoch": "TV/epoch running",
    "tv_per_epoch_recal": "TV/epoch recal",
    "recal_removed_share": "removed by recal",
    "max_rise_rel": "max rise (rel) running",
    "n_rises": "rises running",
    "epochs_to_92": "epochs→92%",
    "gen_gap": "gen gap running",
}
HEADLINE_STATS = ("best_val_acc", "final_val_acc", "final_val_loss", "epochs_to_92")  # in the runs' headline
RUNS_TABLE_STATS = [
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "steps",
    "val_every_steps",
    "dispersion",
    "dispersion_recal",
    "dispersion_share_gap",
    "tv_per_epoch",
    "tv_per_epoch_recal",
    "recal_removed_share",
    "max_rise_rel",
    "n_rises",
]
# columns left out when no run has val_loss_recal
RECAL_STATS = ("tv_per_epoch_recal", "recal_removed_share", "dispersion_recal", "dispersion_share_gap")
FREQUENCY_NOTE = (
    "Total variation, largest rise, rises and the share recalibration removes grow with how often a run validates "
    "(val every, in steps): compare them only at equal val every; dispersion does not (docs/reports.md)."
)
MAX_RUN_FIGURES = 64  # one loss figure per run up to this many: more is a folder nobody opens
CSV_NAMES = {"epochs": "epochs_done"}


# ---------------------------------------------------------------- tables


def _status_text(counts: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, row)) + " |" for row in rows])


def id_keys(runs: list[dict], keys: list[str]) -> list[str]:
    present = [k for k in ID_KEYS if any(k in r["hparams"] for r in runs)]
    return present + [k for k in keys if k not in present]


def table_stats(runs: list[dict], stats) -> list[str]:
    """stats without the recalibrated columns when no run has a recalibrated validation series."""
    recal = any(value(r, "tv_per_epoch_recal") is not None for r in runs)
    return [k for k in stats if recal or k not in RECAL_STATS]


def headline_name(runs: list[dict]) -> str:
    """Which evaluation the headline columns are: recal or running when every run agrees (summary.json's
    val_metric), else headline (each run its own: runs.csv's val_metric column says which)."""
    names = {r.get("val_metric") for r in runs}
    only = names.pop() if len(names) == 1 else None
    return {"recalibrated": "recal", "running": "running"}.get(only, "headline")


def label(key: str, runs: list[dict]) -> str:
    """A table column's header: headline columns say which evaluation they are, and the best accuracy says which
    images chose it when the test split did (a run without data.val_split: engine.selection)."""
    text = TABLE_STATS.get(key, key)
    on_test = key == "best_val_acc" and any(r.get("selected_on") == "test" for r in runs)
    return f"{text} ({headline_name(runs)}{', selected on test' if on_test else ''})" if key in HEADLINE_STATS else text


def config_table(groups: list[dict], cols: list[str]) -> str:
    def cell(g, k):
        m, s = g["stats"][k]
        return "-" if m is None else fmt(m) + ("" if s is None else f" ± {fmt(s, 2)}")

    runs = [r for g in groups for r in g["runs"]]
    stats = table_stats(runs, TABLE_STATS)
    header = cols + ["n", "runs"] + [label(k, runs) for k in stats]
    rows = [
        [fmt(g["hparams"].get(k)) for k in cols]
        + [str(g["n"]), _status_text(g["statuses"])]
        + [cell(g, k) for k in stats]
        for g in groups
    ]
    return md_table(header, rows)


def runs_table(runs: list[dict], cols: list[str]) -> str:
    stats = table_stats(runs, RUNS_TABLE_STATS)
    header = ["run", "status", "seed"] + cols + [label(k, runs) for k in stats]
    rows = [
        [r["path"], r["status"], fmt(r["seed"])]
        + [fmt(r["hparams"].get(k)) for k in cols]
        + [fmt(value(r, k)) for k in stats]
        for r in runs
    ]
    return md_table(header, rows)


STALENESS_STATS = {
    "dispersion": "dispersion",
    "dispersion_recal": "dispersion recal",
    "dispersion_share_gap": "BN gap share",
    "gap_lag_mean": "gap: lag",
    "gap_mismatch_mean": "gap: clean/aug",
    "bn_staleness_mu": "staleness μ",
    "bn_lag_mu": "lag μ",
    "angular_update_mid": "angular update",
    "angular_update_eq_mid": "√(2d)",
    "gap_staleness_corr": "corr(gap, staleness)",
}


STALENESS_NOTE = (
    "Per configuration (seed means): the val-loss dispersion with running and recalibrated statistics, the share "
    "of the running one carried by the running − recalibrated gap, the gap's lag and clean/augmented parts (mean "
    "loss), the running statistics' staleness and lag (μ offset in reference stds), and the measured angular "
    "update per step of the BatchNorm-followed stages against √(2d) (docs/reports.md)."
)


def natural_axis(g: dict) -> str:
    """Where a configuration sits on its optimizer's own axis: τ/T for decoupled decay, λ₂ for L2 alone."""
    tau, l2 = g["stats"]["tau_fraction"][0], finite_number(g["hparams"].get("l2"))
    return f"τ/T={fmt(tau, 3)}" if tau is not None else f"λ₂={fmt(l2)}" if l2 else "-"


def staleness_table(groups: list[dict], cols: list[str]) -> str:
    """How much of each configuration's oscillation is BatchNorm staleness, next to its angular update; empty when
    no run recorded staleness (docs/reports.md#batchnorm-staleness-and-rotational-equilibrium)."""
    if not any(g["stats"]["bn_staleness_mu"][0] is not None for g in groups):
        return ""
    header = cols + ["n", "axis"] + list(STALENESS_STATS.values())
    rows = [
        [fmt(g["hparams"].get(k)) for k in cols] + [str(g["n"]), natural_axis(g)]
        + [fmt(g["stats"][k][0], 3) for k in STALENESS_STATS]
        for g in groups
    ]  # fmt: skip
    return "## BatchNorm staleness\n\n" + STALENESS_NOTE + "\n\n" + md_table(header, rows) + "\n"


def notes_list(runs: list[dict]) -> str:
    """One line per remark of a run (a config that could not be resolved, ...); empty when there are none."""
    lines = [f"- {r['path']}: {note}" for r in runs for note in r.get("notes", [])]
    return "## Notes\n\n" + "\n".join(lines) + "\n" if lines else ""


def write_csvs(runs: list[dict], groups: list[dict], keys: list[str], out: Path) -> None:
    """runs.csv: every run (swept keys, metrics, oscillation figures, then the other hparams);
    configs.csv: seed statistics per configuration."""
    osc_keys = list(dict.fromkeys(k for r in runs for k in r["osc"]))
    hp_keys = keys + sorted({k for r in runs for k in r["hparams"]} - set(keys) - {"seed"})
    # summary's "epochs" (done) would clash with the hparam "epochs" (scheduled)
    header = (
        ["path", "status", "seed"]
        + hp_keys[: len(keys)]
        + [CSV_NAMES.get(k, k) for k in METRICS]
        + ["val_metric", "selected_on"]
        + osc_keys
        + hp_keys[len(keys) :]
        + ["notes"]
    )
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in runs:
            hp = [r["hparams"].get(k) for k in hp_keys]
            w.writerow(
                [r["path"], r["status"], r["seed"]]
                + hp[: len(keys)]
                + [r.get(k) for k in METRICS]
                + [r.get("val_metric"), r.get("selected_on")]
                + [r["osc"].get(k) for k in osc_keys]
                + hp[len(keys) :]
                + ["; ".join(r.get("notes", []))]
            )
    with open(out / "configs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys + ["n", "runs"] + [f"{k}_{s}" for k in STATS for s in ("mean", "std")])
        for g in groups:
            w.writerow(
                [g["hparams"].get(k) for k in keys]
                + [g["n"], _status_text(g["statuses"])]
                + [x for k in STATS for x in g["stats"][k]]
            )


# ---------------------------------------------------------------- the command


def build_report(runs: list[dict], out: Path, root: Path, x: str = "lr", y: str = "wd") -> str:
    """Write report.md, runs.csv, configs.csv and the figures into out; return the markdown tables."""
    keys = varying_keys(runs)
    groups = group_configs(runs, keys)
    cols = id_keys(runs, keys)
    counts = _status_text(Counter(r["status"] for r in runs))
    tables = (
        f"{len(runs)} runs ({counts}) in {len(groups)} configurations; swept: {', '.join(keys) or 'nothing'}.\n"
        f"Configuration statistics: mean ± sample std over completed runs (n). {FREQUENCY_NOTE}\n\n"
        f"## Configurations\n\n{config_table(groups, cols)}\n\n## Runs\n\n{runs_table(runs, cols)}\n"
    )
    stale = staleness_table(groups, cols)
    tables += f"\n{stale}" if stale else ""
    notes = notes_list(runs)
    tables += f"\n{notes}" if notes else ""
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(runs, groups, keys, out)
    figures = [
        ("val_curves.png", "validation loss and accuracy", lambda p: plot_val_curves(groups, p, headline_name(runs))),
        ("weight_norm.png", "weight norm", lambda p: plot_weight_norm(groups, p)),
        ("heatmap.png", "best validation accuracy", lambda p: plot_heatmap(heatmap_grid(groups, keys, x, y), p)),
        (
            "oscillation.png",
            "oscillation vs decay strength (dashed: BatchNorm recalibrated)",
            lambda p: plot_oscillation(oscillation_series(groups, keys), p),
        ),
        (
            "staleness.png",
            "oscillation and BatchNorm staleness vs the angular update",
            lambda p: plot_staleness(staleness_points(groups), p),
        ),
    ]
    lines = []
    for name, title, draw in figures:
        why = _draw(draw, out / name)
        lines.append(f"- {name} skipped: {why}" if why else f"### {title}\n\n![{title}]({name})\n")
    md = f"# Report: {root}\n\n{tables}\n## Figures\n\n" + "\n".join(lines) + "\n\n" + run_figures(runs, out)
    (out / "report.md").write_text(md, encoding="utf-8")
    return tables


def _draw(draw, path: Path) -> str | None:
    """draw(path), or the one-line reason it drew nothing; a skipped figure leaves no stale file behind."""
    try:
        why = draw(path)
    except Exception as e:  # a figure is a bonus: never lose the tables over one
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        path.unlink(missing_ok=True)  # no stale figure from an earlier report
    return why


def run_figure_name(path: str) -> str:
    """Where a run's loss figure goes, relative to OUT: runs/<run path with / as __>.png (one flat folder)."""
    return "runs/" + path.replace("/", "__") + ".png"


def run_figures(runs: list[dict], out: Path) -> str:
    """Draw each run's loss figure (the first MAX_RUN_FIGURES runs in path order); return report.md's section."""
    (out / "runs").mkdir(exist_ok=True)
    lines = []
    for r in runs[:MAX_RUN_FIGURES]:
        name = run_figure_name(r["path"])
        why = _draw(lambda p: plot_run_losses(r, p), out / name)
        lines.append(f"- {r['path']} skipped: {why}" if why else f"- [{r['path']}]({name})")
    if len(runs) > MAX_RUN_FIGURES:
        lines.append(f"- capped at {MAX_RUN_FIGURES} runs: the other {len(runs) - MAX_RUN_FIGURES} have no loss figure")
    return (
        "## Losses per run\n\nTrain loss in train mode (mean since the previous validation), eval-mode loss on "
        "training images, validation loss with BatchNorm running statistics and recalibrated (dashed).\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runner.analysis.report", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    p.add_argument("dir", help="a run folder, a sweep folder, or any folder above them")
    p.add_argument("--out", help="where report.md, runs.csv and the figures go (default DIR/report)")
    p.add_argument("--x", default="lr", help="heat map x key (default lr)")
    p.add_argument("--y", default="wd", help="heat map y key (default wd)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="relative rise that counts as an oscillation episode (default 0.1, or what the summary used)",
    )
    args = p.parse_args(argv)
    if args.threshold is not None and not args.threshold > 0:
        p.error(f"--threshold must be > 0, got {args.threshold}")
    root = Path(args.dir)
    if not root.is_dir():
        print(f"runner.analysis.report: error: no such folder: {root}", file=sys.stderr)
        return 2
    runs = collect_runs(root, args.threshold)
    if not runs:
        print(
            f"runner.analysis.report: error: no runs (summary.json, metrics.jsonl or .hydra/config.yaml) under {root}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else root / "report"
    try:
        tables = build_report(runs, out, root, args.x, args.y)
    except OSError as e:
        print(f"runner.analysis.report: error: cannot write the report to {out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'report.md'}, runs.csv, configs.csv and figures", file=sys.stderr)
    try:
        print(tables, flush=True)
    except BrokenPipeError:  # `| head` stopped reading; the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
