"""The report's figures: validation curves, weight norms, the lr × λ heat map, oscillation vs λ, one run's losses.

Each `plot_*` draws one PNG from configuration groups (see runner.analysis.runs.group_configs), or from one run
(runner.analysis.runs.load_run), with matplotlib Figure objects (no pyplot state) and returns None, or a one-line reason
it was skipped. The data each figure shows comes from a function of its own (heatmap_grid, oscillation_series,
runner.analysis.runs.loss_curves), which the tests check instead of pixels.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from runner.analysis.runs import finite_number, fmt, sort_key

SHORT = {"diverged": "div", "running": "run", "interrupted": "int", "not started": ""}  # heat map cells without a mean


def _figure(ncols: int = 1, nrows: int = 1, w: float = 5.5, h: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


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
    return es, [statistics.fmean(at[e]) for e in es], [min(at[e]) for e in es], [max(at[e]) for e in es]


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]  # one colour per configuration, shared by every panel
    return [cmap(i % cmap.N) for i in range(n)]


def _curves(groups: list[dict], path: Path, panels: list[tuple], log_first: bool = False) -> None:
    """One line per configuration (seed mean) with a min–max band; panels = [(series getter, y label)]."""
    fig, ax = _figure(len(panels))
    for g, color in zip(groups, _colors(len(groups))):
        for a, (get, _) in zip(ax.flat, panels):
            es, mean, lo, hi = _band([get(r) for r in _curve_runs(g)])
            if es:
                a.plot(es, mean, color=color, label=g["label"])
                a.fill_between(es, lo, hi, color=color, alpha=0.2, linewidth=0)
    for a, (_, name) in zip(ax.flat, panels):
        a.set(xlabel="epoch", ylabel=name)
    if log_first:
        ax[0, 0].set_yscale("log")
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=100)


def plot_val_curves(groups: list[dict], path: Path, evaluation: str = "headline") -> str | None:
    """Each run's headline validation series (val_loss, val_acc), labelled with the evaluation it is."""
    if not any(r["val"] for g in groups for r in g["runs"]):
        return "no validation records"
    _curves(
        groups,
        path,
        [
            (lambda r: [(e, v) for e, v, _ in r["val"]], f"validation loss ({evaluation} BN statistics)"),
            (lambda r: [(e, a) for e, _, a in r["val"]], f"validation accuracy ({evaluation} BN statistics)"),
        ],
        log_first=True,
    )


def plot_weight_norm(groups: list[dict], path: Path) -> str | None:
    if not any(r["wnorm"] for g in groups for r in g["runs"]):
        return "no weight_norm records"
    _curves(groups, path, [(lambda r: r["wnorm"], "‖θ‖ of the regularized weights")])


LAMBDA = "wd|l2"  # one decay-strength axis when Adam-L2 runs sweep l2 and AdamW runs sweep wd


def decay_keys(groups: list[dict], keys: list[str]) -> list[str]:
    """keys with wd and l2 merged into LAMBDA when both vary but no run uses both (λ = the nonzero one)."""
    both = all(not (finite_number(g["hparams"].get("wd")) and finite_number(g["hparams"].get("l2"))) for g in groups)
    if not ("wd" in keys and "l2" in keys and both):
        return keys
    return [LAMBDA if k == "wd" else k for k in keys if k != "l2"]


def hp_value(g: dict, key: str):
    """A configuration's hparam; LAMBDA reads wd, or l2 where wd is 0."""
    hp = g["hparams"]
    return (hp.get("wd") or hp.get("l2")) if key == LAMBDA else hp.get(key)


def heatmap_grid(groups: list[dict], keys: list[str], x: str = "lr", y: str = "wd", metric: str = "best_val_acc"):
    """The heat map as data: {"x_key", "y_key", "panel_keys", "x_values", "y_values", "panels": [{"title",
    "values": [[mean or None]] (rows = y, cols = x), "labels": [[cell text]]}]}; None with fewer than 2 configurations.

    x and y fall back to the swept keys with the most distinct values when they do not vary (wd and l2 become one
    axis, LAMBDA, when each run uses only one of them); each combination of the other swept keys (e.g.
    optimizer.name) gets its own panel. A cell without completed runs reads "div", "run" or "int" after its
    runs' statuses (blank when there are none)."""
    if len(groups) < 2:
        return None
    keys = decay_keys(groups, keys)
    x, y = (LAMBDA if k in ("wd", "l2") and LAMBDA in keys else k for k in (x, y))
    n_distinct = lambda k: len({repr(hp_value(g, k)) for g in groups})
    ranked = sorted(keys, key=lambda k: (-n_distinct(k), finite_number(hp_value(groups[0], k)) is None, k))
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
        mean, n_div = g["stats"][metric][0], g["statuses"].get("diverged", 0)
        p["values"][i][j] = mean
        if mean is not None:
            p["labels"][i][j] = f"{mean:.3f}" + (f"\n({n_div} div)" if n_div else "")
        else:
            p["labels"][i][j] = next((SHORT[s] for s in SHORT if g["statuses"].get(s)), "")
    return {
        "x_key": x,
        "y_key": y,
        "panel_keys": panel_keys,
        "x_values": xs,
        "y_values": ys,
        "metric": metric,
        "panels": [panels[k] for k in sorted(panels, key=lambda t: [sort_key(v) for v in t])],
    }


def _axis_label(key: str) -> str:
    return "λ (wd, or l2 where wd = 0)" if key == LAMBDA else key


def plot_heatmap(grid: dict | None, path: Path) -> str | None:
    if grid is None:
        return "needs at least two configurations"
    import numpy as np

    finite = [v for p in grid["panels"] for row in p["values"] for v in row if v is not None]
    if not finite:
        return f"no completed run has {grid['metric']}"
    lo, hi = min(finite), max(finite)
    lo, hi = (lo - 0.005, hi + 0.005) if hi - lo < 1e-9 else (lo, hi)  # one value: still a valid colour scale
    ncols = min(len(grid["panels"]), 4)
    nrows = math.ceil(len(grid["panels"]) / ncols)
    fig, ax = _figure(ncols, nrows, w=1.5 + 0.9 * len(grid["x_values"]), h=1.3 + 0.6 * len(grid["y_values"]))
    for a in ax.flat[len(grid["panels"]) :]:
        a.set_visible(False)
    for a, p in zip(ax.flat, grid["panels"]):
        z = np.array([[np.nan if v is None else v for v in row] for row in p["values"]], float)
        im = a.imshow(np.ma.masked_invalid(z), origin="lower", cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        for i, row in enumerate(p["labels"]):
            for j, text in enumerate(row):
                r, g_, b, _ = im.cmap(im.norm(z[i, j])) if np.isfinite(z[i, j]) else (1, 1, 1, 1)
                dark = 0.299 * r + 0.587 * g_ + 0.114 * b < 0.5  # white text on dark cells
                a.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        a.set_xticks(range(len(grid["x_values"])), [fmt(v) for v in grid["x_values"]])
        a.set_yticks(range(len(grid["y_values"])), [fmt(v) for v in grid["y_values"]])
        a.set_xlabel(_axis_label(grid["x_key"]))
        a.set_ylabel(_axis_label(grid["y_key"]))
        a.set_title(p["title"] or grid["metric"], fontsize=9)
    fig.colorbar(im, ax=ax.ravel().tolist(), label=grid["metric"].replace("_", " "))
    fig.savefig(path, dpi=100)


def oscillation_series(groups: list[dict], keys: list[str], figures=("tv_per_epoch", "max_rise_rel")):
    """{line label: [(λ, {figure: seed mean})] sorted by λ}, λ = wd or l2, whichever varies (LAMBDA when both do),
    one line per combination of the other swept keys (optimizer.name, ...); None when neither wd nor l2 varies.
    Each figure comes with its recalibrated twin, `<figure>_recal` (None for runs without val_loss_recal)."""
    keys = decay_keys(groups, keys)
    lam_key = next((k for k in (LAMBDA, "wd", "l2") if k in keys), None)
    if lam_key is None:
        return None
    line_keys = [k for k in keys if k not in (LAMBDA, "wd", "l2")]
    both = [name for f in figures for name in (f, f + "_recal")]
    lines: dict[str, list] = {}
    for g in groups:
        lam = hp_value(g, lam_key)
        label = ", ".join(f"{k}={fmt(hp_value(g, k))}" for k in line_keys) or "all runs"
        if finite_number(lam) is not None:
            lines.setdefault(label, []).append((lam, {f: g["stats"].get(f, (None, None))[0] for f in both}))
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


def plot_oscillation(series: dict | None, path: Path, figures=("tv_per_epoch", "max_rise_rel")) -> str | None:
    """One panel per figure; per line the running-statistics value solid, the recalibrated one dashed in the
    same colour, so the gap between them is the part of the oscillation that is BatchNorm bookkeeping."""
    if not series:
        return "neither wd nor l2 varies"
    if not any(finite_number(d.get(f)) is not None for pts in series.values() for _, d in pts for f in figures):
        return "no completed run has oscillation figures"
    from matplotlib.lines import Line2D

    names = {
        "tv_per_epoch": "val-loss total variation per epoch",
        "max_rise_rel": "largest rise above running min (rel.)",
    }
    fig, ax = _figure(len(figures))
    lams = sorted({lam for pts in series.values() for lam, _ in pts})
    any_recal = False
    for i, f in enumerate(figures):
        a = ax[0, i]
        for (label, pts), color in zip(series.items(), _colors(len(series))):
            for key, style in ((f, "-"), (f + "_recal", "--")):
                xy = [(lam, d.get(key)) for lam, d in pts if finite_number(d.get(key)) is not None]
                if xy:
                    a.plot(
                        *zip(*xy),
                        style,
                        marker="o",
                        color=color,
                        mfc="white" if style == "--" else color,
                        label=label if style == "-" else None,
                    )
                    any_recal |= style == "--"
        _lambda_axis(a, lams)
        a.set(xlabel="decay strength λ (wd or l2)", ylabel=names.get(f, f))
    handles, labels = ax[0, 0].get_legend_handles_labels()
    if any_recal:
        handles += [
            Line2D([], [], color="grey", ls="-", marker="o"),
            Line2D([], [], color="grey", ls="--", marker="o", mfc="white"),
        ]
        labels += ["BN running statistics", "BN recalibrated"]
    ax[0, 0].legend(handles, labels, fontsize="small")
    fig.savefig(path, dpi=100)


# (key, legend, colour, line style) of a run's loss figure; validation pairs share the dashed = recalibrated code
RUN_CURVES = [
    ("train_loss", "train loss, train mode (mean since last validation)", "tab:blue", "-"),
    ("train_eval_loss_running", "training images, eval mode, BN running statistics", "tab:orange", "-"),
    ("val_loss_running", "validation, BN running statistics", "tab:red", "-"),
    ("val_loss_recal", "validation, BN recalibrated", "tab:red", "--"),
]


def plot_run_losses(run: dict, path: Path) -> str | None:
    """One run's losses vs epoch (runner.analysis.runs.loss_curves): the curves it did not record are left out."""
    curves = {k: v for k, v in (run.get("losses") or {}).items() if v}
    if not curves:
        return "no validation records"
    fig, ax = _figure()
    a = ax[0, 0]
    for key, label, color, style in RUN_CURVES:
        if key in curves:
            a.plot(*zip(*curves[key]), style, color=color, label=label, marker="." if len(curves[key]) < 40 else None)
    if all(y > 0 for c in curves.values() for _, y in c):
        a.set_yscale("log")
    a.set(xlabel="epoch", ylabel="loss", title=f"{run['path']} ({run['status']})")
    a.title.set_fontsize(9)
    a.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def staleness_points(groups: list[dict]) -> list[dict]:
    """One point per configuration with a measured angular update: {label, optimizer, bn_momentum, x =
    angular_update_mid, dispersion, dispersion_recal, bn_staleness_mu} (seed means; None where not recorded)."""
    out = []
    for g in groups:
        x = g["stats"].get("angular_update_mid", (None, None))[0]
        if x is None:
            continue
        point = {k: g["stats"].get(k, (None, None))[0] for k in ("dispersion", "dispersion_recal", "bn_staleness_mu")}
        out.append({"label": g["label"], "optimizer": g["hparams"].get("optimizer.name"),
                    "bn_momentum": g["hparams"].get("model.bn_momentum"), "x": x, **point})  # fmt: skip
    return out


def plot_staleness(points: list[dict], path: Path) -> str | None:
    """Left: dispersion of the val loss (filled: running statistics, hollow: recalibrated) against the measured
    angular update per step; right: BatchNorm staleness against it. Colour: optimizer; marker: BN momentum."""
    if not any(p["dispersion"] is not None or p["bn_staleness_mu"] is not None for p in points):
        return "no configuration has both an angular update and oscillation or staleness figures"
    optimizers = sorted({str(p["optimizer"]) for p in points})
    momenta = sorted({str(p["bn_momentum"]) for p in points})
    color = dict(zip(optimizers, _colors(len(optimizers))))
    marker = dict(zip(momenta, "osD^v<>"))
    fig, ax = _figure(2)
    for p in points:
        c, m = color[str(p["optimizer"])], marker[str(p["bn_momentum"])]
        if p["dispersion"] is not None:
            ax[0, 0].plot(p["x"], p["dispersion"], m, color=c)
        if p["dispersion_recal"] is not None:
            ax[0, 0].plot(p["x"], p["dispersion_recal"], m, color=c, mfc="white")
        if p["bn_staleness_mu"] is not None:
            ax[0, 1].plot(p["x"], p["bn_staleness_mu"], m, color=c)
    ax[0, 0].set(xlabel="angular update per step (rad)", ylabel="val-loss dispersion (hollow: recalibrated)")
    ax[0, 1].set(xlabel="angular update per step (rad)", ylabel="BN staleness: mean |Δμ| / σ")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=color[o], label=o) for o in optimizers]
    handles += [Line2D([], [], ls="", marker=marker[b], color="grey", label=f"BN momentum {b}") for b in momenta]
    ax[0, 1].legend(handles=handles, fontsize=8)
    fig.savefig(path, dpi=100)
    return None
