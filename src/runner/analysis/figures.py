"""The report's figures: validation curves, weight norms, the lr × λ heat map, oscillation vs λ, one
run's losses.

Each `plot_*` draws one PNG from configuration groups (see runner.analysis.runs.group_configs), or
from one run (runner.analysis.runs.load_run), with matplotlib Figure objects (no pyplot state) and
returns None, or a one-line reason it was skipped. The data each figure shows comes from a function
of its own (heatmap_grid, oscillation_series, runner.analysis.runs.loss_curves), which the tests
check instead of pixels.

Every figure reads without the code: titled with what it shows and `title` (the sweep, model and
data: analysis.report.context), axes in words with units, markers on lines of few points (one
validation is a dot, not an empty line), and "not enough points" in a panel with nothing to draw.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from runner.analysis.runs import accuracy_noise, finite_number, fmt, sort_key

# heat map cells without a mean
SHORT = {
    "diverged": "div",
    "running": "run",
    "interrupted": "int",
    "not started": "",
}
FEW_POINTS = 30  # a line with fewer points gets markers
CHARS_PER_INCH = 13  # of a 9-point title or a small legend: where titles wrap, how many columns fit
EPOCHS = "epochs trained"
NOT_ENOUGH = "not enough points"


def _figure(ncols: int = 1, nrows: int = 1, w: float = 5.5, h: float = 4.0, title: str = ""):
    """A figure of nrows × ncols panels of w × h inches, under `title` ("what\ncontext"), each line
    wrapped to the figure's width."""
    import textwrap

    from matplotlib.figure import Figure

    width = max(w * ncols, 4.5)
    wrap = lambda line: textwrap.wrap(line, int(width * CHARS_PER_INCH))
    lines = [part for line in title.splitlines() for part in wrap(line)]
    fig = Figure(figsize=(width, h * nrows + 0.2 * len(lines)), layout="constrained")
    if lines:
        fig.suptitle("\n".join(lines), fontsize=9)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _legend(fig, a, title: str | None = None) -> None:
    """The configurations' legend: below the panels if it fits in two rows, else at their right."""
    handles, labels = a.get_legend_handles_labels()
    if len(handles) < 2:  # one configuration: the title says what it is
        return
    entry = max(map(len, labels)) + 6  # the label and its line's sample
    columns = max(1, min(len(labels), 4, int(fig.get_figwidth() * CHARS_PER_INCH) // entry))
    below = dict(loc="outside lower center", ncols=columns)
    where = below if len(labels) <= 2 * columns else dict(loc="outside right upper")
    fig.legend(handles, labels, fontsize="small", title=title, title_fontsize="small", **where)


def _log_if_wide(a) -> None:
    """A log y axis when the lines span a factor of 10 or more (a loss falling from 2.3 to 0.05),
    with plain tick labels; a narrower range reads better on a linear one."""
    from matplotlib.ticker import FuncFormatter

    ys = [y for line in a.lines for y in line.get_ydata() if y is not None and y == y]
    if ys and min(ys) > 0 and max(ys) / min(ys) >= 10:
        a.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        a.yaxis.set_major_formatter(plain)
        a.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _marker(n_points: int) -> str | None:
    return "o" if n_points < FEW_POINTS else None


def _not_enough(a) -> None:
    """A panel with nothing to draw says so instead of standing empty."""
    a.text(0.5, 0.5, NOT_ENOUGH, ha="center", va="center", transform=a.transAxes, color="grey")
    a.set_xticks([])
    a.set_yticks([])


def _readable_ticks(a, axis: str = "x") -> None:
    """Tick labels that do not overlap: slanted when there are more than a few."""
    labels = a.get_xticklabels() if axis == "x" else a.get_yticklabels()
    if axis == "x" and len(labels) > 4:
        a.tick_params(axis="x", labelrotation=35)
        for t in labels:
            t.set_horizontalalignment("right")


def _curve_runs(g: dict) -> list[dict]:
    done = [r for r in g["runs"] if r["status"] == "completed"]
    return done or g["runs"]  # a configuration without completed runs still shows how far it got


def _band(series: list[list[tuple]]) -> tuple[list, list, list, list]:
    """Seed mean and min–max band per epoch; series stopped early (diverged) just drop out."""
    at: dict[float, list] = {}
    for s in series:
        for e, y in s:
            if y is not None:
                at.setdefault(round(e, 6), []).append(y)
    es = sorted(at)
    return (
        es,
        [statistics.fmean(at[e]) for e in es],
        [min(at[e]) for e in es],
        [max(at[e]) for e in es],
    )


def _colors(n: int) -> list:
    from matplotlib import colormaps

    # one colour per configuration, shared by every panel
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _curves(groups: list[dict], path: Path, panels: list, title: str, log_first=False) -> None:
    """One line per configuration (seed mean) with a min–max band; panels = [(series getter, y
    label)]."""
    fig, ax = _figure(len(panels), title=title)
    drawn = set()
    for g, color in zip(groups, _colors(len(groups))):
        for i, (a, (get, _)) in enumerate(zip(ax.flat, panels)):
            es, mean, lo, hi = _band([get(r) for r in _curve_runs(g)])
            if es:
                a.plot(es, mean, color=color, label=g["label"], marker=_marker(len(es)), ms=4)
                a.fill_between(es, lo, hi, color=color, alpha=0.2, linewidth=0)
                drawn.add(i)
    for i, (a, (_, name)) in enumerate(zip(ax.flat, panels)):
        a.set(xlabel=EPOCHS, ylabel=name)
        if i not in drawn:
            _not_enough(a)
        else:
            a.set_xlim(left=0)  # training starts at epoch 0: one validation is not a whole axis
    if log_first:
        _log_if_wide(ax[0, 0])
    _legend(fig, ax[0, 0], "mean over seeds, band from lowest to highest")
    fig.savefig(path, dpi=100)


def plot_val_curves(groups: list[dict], path: Path, evaluation="", title="") -> str | None:
    """Each run's headline validation series (val_loss, val_acc), labelled with the evaluation it
    is."""
    if not any(r["val"] for g in groups for r in g["runs"]):
        return "no validation records"
    _curves(
        groups,
        path,
        [
            (lambda r: [(e, v) for e, v, _ in r["val"]], "validation loss (cross-entropy)"),
            (lambda r: [(e, a) for e, _, a in r["val"]], "validation accuracy (fraction correct)"),
        ],
        f"Validation loss and accuracy ({evaluation})\n{title}",
        log_first=True,
    )


def plot_weight_norm(groups: list[dict], path: Path, title: str = "") -> str | None:
    if not any(r["wnorm"] for g in groups for r in g["runs"]):
        return "no weight_norm records"
    panel = (lambda r: r["wnorm"], "norm ‖θ‖ of the decayed weights (L2)")
    _curves(groups, path, [panel], f"Weight norm\n{title}")


LAMBDA = "wd|l2"  # one decay-strength axis when Adam-L2 runs sweep l2 and AdamW runs sweep wd


def decay_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """keys with wd and l2 merged into LAMBDA when both vary but no run uses both (λ = the nonzero
    one)."""
    both = all(
        not (finite_number(g["hparams"].get("wd")) and finite_number(g["hparams"].get("l2")))
        for g in groups
    )
    if not ("wd" in keys and "l2" in keys and both):
        return keys
    return [LAMBDA if k == "wd" else k for k in keys if k != "l2"]


def hp_value(g: dict, key: str):
    """A configuration's hparam; LAMBDA reads wd, or l2 where wd is 0."""
    hp = g["hparams"]
    return (hp.get("wd") or hp.get("l2")) if key == LAMBDA else hp.get(key)


def heatmap_grid(
    groups: list[dict], keys: list[str], x: str = "lr", y: str = "wd", metric: str = "best_val_acc"
):
    """The heat map as data: {"x_key", "y_key", "panel_keys", "x_values", "y_values", "metric",
    "noise", "panels": [{"title", "values": [[mean or None]] (rows = y, cols = x), "labels": [[cell
    text]]}]}; None with fewer than 2 configurations.

    x and y fall back to the swept keys with the most distinct values when they do not vary (wd and
    l2 become one axis, LAMBDA, when each run uses only one of them); each combination of the other
    swept keys (e.g. optimizer.name) gets its own panel. A cell reads its mean ± the seeds' sample
    std and n; one without completed runs reads "div", "run" or "int" after its runs' statuses
    (blank when there are none). `noise`: runs.accuracy_noise, the difference chance alone makes."""
    if len(groups) < 2:
        return None
    keys = decay_keys(groups, keys)
    x, y = (LAMBDA if k in ("wd", "l2") and LAMBDA in keys else k for k in (x, y))
    n_distinct = lambda k: len({repr(hp_value(g, k)) for g in groups})
    ranked = sorted(
        keys, key=lambda k: (-n_distinct(k), finite_number(hp_value(groups[0], k)) is None, k)
    )
    axes = []
    for want in (x, y):
        spare = [k for k in ranked if k not in axes and k not in (x, y)]
        axes.append(want if want in keys and want not in axes else (spare[0] if spare else want))
    x, y = axes
    panel_keys = [k for k in keys if k not in (x, y)]
    values = lambda k: sorted({hp_value(g, k) for g in groups}, key=sort_key)
    xs, ys = values(x), values(y)
    panels: dict[tuple, dict] = {}
    for g in groups:
        pv = tuple(hp_value(g, k) for k in panel_keys)
        p = panels.setdefault(
            pv,
            {
                "title": ", ".join(f"{k}={fmt(v)}" for k, v in zip(panel_keys, pv)),
                "values": [[None] * len(xs) for _ in ys],
                "labels": [[""] * len(xs) for _ in ys],
            },
        )
        i, j = ys.index(hp_value(g, y)), xs.index(hp_value(g, x))
        p["values"][i][j] = g["stats"][metric][0]
        p["labels"][i][j] = _cell(g, metric)
    return {
        "x_key": x,
        "y_key": y,
        "panel_keys": panel_keys,
        "x_values": xs,
        "y_values": ys,
        "metric": metric,
        "noise": accuracy_noise(groups),
        "panels": [panels[k] for k in sorted(panels, key=lambda t: [sort_key(v) for v in t])],
    }


def _cell(g: dict, metric: str) -> str:
    """A heat map cell: mean ± sample std over the completed seeds, then n (and any diverged)."""
    (mean, std), n, n_div = g["stats"][metric], g["n"], g["statuses"].get("diverged", 0)
    if mean is None:
        return next((SHORT[s] for s in SHORT if g["statuses"].get(s)), "")
    spread = "" if std is None else f" ± {std:.3f}"
    return f"{mean:.3f}{spread}\nn={n}" + (f", {n_div} div" if n_div else "")


AXIS_WORDS = {
    LAMBDA: "decay strength λ (wd, or l2 where wd = 0)",
    "lr": "learning rate α (lr)",
    "wd": "decoupled weight decay λ (wd)",
    "l2": "L2 coefficient λ₂ (l2)",
}


def _axis_label(key: str) -> str:
    return AXIS_WORDS.get(key, key)


NOISE_SPAN = 3  # the heat map's colours span at least ± this many noise


def colour_limits(values: list[float], noise: float | None) -> tuple[float, float]:
    """The colour scale of the heat map: the values' range, widened to at least ± NOISE_SPAN noise
    around its middle, so that cells apart by less than chance alone makes get nearly one colour."""
    lo, hi = min(values), max(values)
    half = max((hi - lo) / 2, NOISE_SPAN * (noise or 0.0), 0.005)  # 0.005: one value makes a scale
    middle = (lo + hi) / 2
    return middle - half, middle + half


def plot_heatmap(grid: dict | None, path: Path, title: str = "", words: str = "") -> str | None:
    if grid is None:
        return "needs at least two configurations"
    finite = [v for p in grid["panels"] for row in p["values"] for v in row if v is not None]
    if not finite:
        return f"no completed run has {grid['metric']}"
    lo, hi = colour_limits(finite, grid["noise"])
    ncols = min(len(grid["panels"]), 4)
    nrows = math.ceil(len(grid["panels"]) / ncols)
    w, h = 2.2 + 1.1 * len(grid["x_values"]), 1.5 + 0.7 * len(grid["y_values"])
    name = words or grid["metric"].replace("_", " ")
    fig, ax = _figure(ncols, nrows, w=w, h=h, title=f"{name}\n{title}")
    for a in ax.flat[len(grid["panels"]) :]:
        a.set_visible(False)
    for a, p in zip(ax.flat, grid["panels"]):
        im = _heat_panel(a, p, lo, hi)
        a.set_xticks(range(len(grid["x_values"])), [fmt(v) for v in grid["x_values"]])
        a.set_yticks(range(len(grid["y_values"])), [fmt(v) for v in grid["y_values"]])
        _readable_ticks(a)
        a.set_xlabel(_axis_label(grid["x_key"]))
        a.set_ylabel(_axis_label(grid["y_key"]))
        a.set_title(p["title"], fontsize=9)
    noise = grid["noise"]
    scale = "" if noise is None else f"\ncolours span ≥ ± {NOISE_SPAN} × noise ({noise:.3f})"
    fig.colorbar(im, ax=ax.ravel().tolist(), label=f"mean over seeds{scale}")
    fig.savefig(path, dpi=100)


def _heat_panel(a, p: dict, lo: float, hi: float):
    """One panel's cells, each with its text in a colour that reads on it."""
    import numpy as np

    z = np.array([[np.nan if v is None else v for v in row] for row in p["values"]], float)
    cells = np.ma.masked_invalid(z)
    im = a.imshow(cells, origin="lower", cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    for i, row in enumerate(p["labels"]):
        for j, text in enumerate(row):
            r, g_, b, _ = im.cmap(im.norm(z[i, j])) if np.isfinite(z[i, j]) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g_ + 0.114 * b < 0.5  # white text on dark cells
            ink = "white" if dark else "black"
            a.text(j, i, text, ha="center", va="center", fontsize=8, color=ink)
    return im


def decay_axis(groups: list[dict], keys: list[str]) -> str | None:
    """The decay strength's key among the swept ones: LAMBDA when wd and l2 share one axis, else wd
    or l2."""
    keys = decay_keys(groups, keys)
    return next((k for k in (LAMBDA, "wd", "l2") if k in keys), None)


def oscillation_series(
    groups: list[dict], keys: list[str], figures=("tv_per_epoch", "max_rise_rel")
):
    """{line label: [(λ, {figure: seed mean})] sorted by λ}, λ = wd or l2, whichever varies (LAMBDA
    when both do), one line per combination of the other swept keys (optimizer.name, ...); None when
    neither wd nor l2 varies. Each figure comes with its recalibrated twin, `<figure>_recal` (None
    for runs without val_loss_recal). A configuration whose completed runs validated once has none:
    one validation has no swing and no rise."""
    lam_key = decay_axis(groups, keys)
    if lam_key is None:
        return None
    keys = decay_keys(groups, keys)
    line_keys = [k for k in keys if k not in (LAMBDA, "wd", "l2")]
    both = [name for f in figures for name in (f, f + "_recal")]
    lines: dict[str, list] = {}
    for g in groups:
        lam = hp_value(g, lam_key)
        label = ", ".join(f"{k}={fmt(hp_value(g, k))}" for k in line_keys) or "all runs"
        done = [r for r in g["runs"] if r["status"] == "completed"]
        enough = any((r["osc"].get("n_val_points", 2) or 0) >= 2 for r in done)  # absent: trusted
        if finite_number(lam) is not None:
            values = {f: g["stats"].get(f, (None, None))[0] if enough else None for f in both}
            lines.setdefault(label, []).append((lam, values))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in sorted(lines.items())}


def _lambda_axis(a, lams: list) -> None:
    positive = [lam for lam in lams if lam > 0]
    if positive and lams[0] <= 0:
        a.set_xscale("symlog", linthresh=min(positive))  # a log axis that still shows λ = 0
    elif positive:
        a.set_xscale("log")
    if positive:
        a.set_xticks(lams, [fmt(lam) for lam in lams])
        a.minorticks_off()
        _readable_ticks(a)


# the oscillation figures in the report's words (report.md's "What the names mean" defines them)
OSCILLATION_WORDS = {
    "tv_per_epoch": "validation-loss swing per epoch (cross-entropy)",
    "max_rise_rel": "largest rise above the best loss so far (fraction)",
}


def plot_oscillation(
    series: dict | None,
    path: Path,
    figures=("tv_per_epoch", "max_rise_rel"),
    title: str = "",
    lam_key: str = LAMBDA,
) -> str | None:
    """One panel per figure; per line the running-statistics value solid, the recalibrated one
    dashed in the same colour, so the gap between them is the part of the oscillation that is
    BatchNorm bookkeeping."""
    if not series:
        return "neither wd nor l2 varies"
    if not any(
        finite_number(d.get(f)) is not None
        for pts in series.values()
        for _, d in pts
        for f in figures
    ):
        return f"{NOT_ENOUGH}: the figures need two or more validations of a completed run"
    from matplotlib.lines import Line2D

    what = "Oscillation of the validation loss vs decay strength"
    fig, ax = _figure(len(figures), title=f"{what}\n{title}")
    lams = sorted({lam for pts in series.values() for lam, _ in pts})
    any_recal = False
    for i, f in enumerate(figures):
        a = ax[0, i]
        for (label, pts), color in zip(series.items(), _colors(len(series))):
            for key, style in ((f, "-"), (f + "_recal", "--")):
                xy = [(lam, d.get(key)) for lam, d in pts if finite_number(d.get(key)) is not None]
                if xy:
                    mfc = "white" if style == "--" else color
                    name = label if style == "-" else None
                    a.plot(*zip(*xy), style, marker="o", color=color, mfc=mfc, label=name)
                    any_recal |= style == "--"
        a.set(xlabel=_axis_label(lam_key), ylabel=OSCILLATION_WORDS.get(f, f))
        if not a.lines:
            _not_enough(a)
        else:
            _lambda_axis(a, lams)
    handles, labels = ax[0, int(not ax[0, 0].lines)].get_legend_handles_labels()
    if any_recal:
        handles += [
            Line2D([], [], color="grey", ls="-", marker="o"),
            Line2D([], [], color="grey", ls="--", marker="o", mfc="white"),
        ]
        labels += ["BN running statistics", "BN recalibrated"]
    columns = min(len(handles), 4)
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=columns)
    fig.savefig(path, dpi=100)


# (key, legend, colour, line style) of a run's loss figure; validation pairs share the dashed =
# recalibrated code
RUN_CURVES = [
    ("train_loss", "train loss, train mode (mean since last validation)", "tab:blue", "-"),
    (
        "train_eval_loss_running",
        "training images, eval mode, BN running statistics",
        "tab:orange",
        "-",
    ),
    ("val_loss_running", "validation, BN running statistics", "tab:red", "-"),
    ("val_loss_recal", "validation, BN recalibrated", "tab:red", "--"),
]


def plot_run_losses(run: dict, path: Path, title: str = "") -> str | None:
    """One run's losses vs epoch (runner.analysis.runs.loss_curves): the curves it did not record
    are left out."""
    curves = {k: v for k, v in (run.get("losses") or {}).items() if v}
    if not curves:
        return "no validation records"
    fig, ax = _figure(title=f"Losses of {run['path']} ({run['status']})\n{title}")
    a = ax[0, 0]
    for key, label, color, style in RUN_CURVES:
        if key in curves:
            points = curves[key]
            marker = _marker(len(points))
            a.plot(*zip(*points), style, color=color, label=label, marker=marker, ms=4)
    _log_if_wide(a)
    a.set(xlabel=EPOCHS, ylabel="loss (cross-entropy)")
    a.set_xlim(left=0)
    a.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def staleness_points(groups: list[dict]) -> list[dict]:
    """One point per configuration with a measured angle per step: {label, optimizer, bn_momentum,
    x = angular_update_step_mid, dispersion, dispersion_recal, bn_staleness_mu} (seed means; None
    where not recorded)."""
    out = []
    for g in groups:
        x = g["stats"].get("angular_update_step_mid", (None, None))[0]
        if x is None:
            continue
        point = {
            k: g["stats"].get(k, (None, None))[0]
            for k in ("dispersion", "dispersion_recal", "bn_staleness_mu")
        }
        out.append(
            {
                "label": g["label"],
                "optimizer": g["hparams"].get("optimizer.name"),
                "bn_momentum": g["hparams"].get("model.bn_momentum"),
                "x": x,
                **point,
            }
        )
    return out


def _name_points(ax, points: list[dict]) -> None:
    """Each point's configuration beside it: above and below in turn, so that points that coincide
    keep their names apart, and on the inner side of the panel, so that no name leaves it."""
    middle = (min(p["x"] for p in points) + max(p["x"] for p in points)) / 2
    for i, p in enumerate(points):
        right = p["x"] > middle
        offset = (-4 if right else 4, 4 if i % 2 == 0 else -10)
        side = "right" if right else "left"
        at = dict(xytext=offset, textcoords="offset points", fontsize=7, ha=side)
        for a, y in ((ax[0, 0], p["dispersion"]), (ax[0, 1], p["bn_staleness_mu"])):
            if y is not None:
                a.annotate(p["label"], (p["x"], y), **at)


def plot_staleness(points: list[dict], path: Path, title: str = "") -> str | None:
    """Left: dispersion of the val loss (filled: running statistics, hollow: recalibrated) against
    the measured angular update per step; right: BatchNorm staleness against it. Colour: optimizer;
    marker: BN momentum."""
    if not any(p["dispersion"] is not None or p["bn_staleness_mu"] is not None for p in points):
        return "no configuration has both an angular update and oscillation or staleness figures"
    optimizers = sorted({str(p["optimizer"]) for p in points})
    momenta = sorted({str(p["bn_momentum"]) for p in points})
    color = dict(zip(optimizers, _colors(len(optimizers))))
    marker = dict(zip(momenta, "osD^v<>"))
    what = "Loss scatter and BatchNorm staleness vs rotation per step"
    fig, ax = _figure(2, title=f"{what}\n{title}")
    for p in points:
        c, m = color[str(p["optimizer"])], marker[str(p["bn_momentum"])]
        if p["dispersion"] is not None:
            ax[0, 0].plot(p["x"], p["dispersion"], m, color=c)
        if p["dispersion_recal"] is not None:
            ax[0, 0].plot(p["x"], p["dispersion_recal"], m, color=c, mfc="white")
        if p["bn_staleness_mu"] is not None:
            ax[0, 1].plot(p["x"], p["bn_staleness_mu"], m, color=c)
    rotation = "angle per step of the scale-invariant weights (radians)"
    ax[0, 0].set(xlabel=rotation, ylabel="validation-loss scatter (log factor)")
    ax[0, 1].set(xlabel=rotation, ylabel="BatchNorm staleness (standard deviations)")
    if len(points) <= 8:  # few enough to name each point by its configuration
        _name_points(ax, points)
    for a in ax.flat:
        if not a.lines:
            _not_enough(a)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=color[o], label=o) for o in optimizers]
    handles += [
        Line2D([], [], ls="", marker=marker[b], color="grey", label=f"BN momentum {b}")
        for b in momenta
    ]
    handles += [Line2D([], [], ls="", marker="o", color="grey", mfc="white", label="hollow: recal")]
    columns = min(len(handles), 4)
    fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=columns)
    fig.savefig(path, dpi=100)
    return None
