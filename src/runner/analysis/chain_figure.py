"""chain.png: the four links of the chain as four panels of points, one point per log point or
validation of every completed run that recorded them (analysis.chain fits the same points; hollow
points are the ones its fits leave out: outside link (a)'s window, in an EMA's warm-up)."""

from __future__ import annotations

import math
from pathlib import Path

from runner.analysis.chain import (
    chain_stages,
    first_step,
    in_warmup,
    lag_point,
    mean_between,
    middle_third,
    statistics_sets,
)
from runner.analysis.runs import finite_number

PANELS = (
    ("(a) decay → rotation", "predicted angle per step (rad)", "measured angle per step (rad)"),
    ("(b) rotation → drift", "measured angle per step (rad)", "drift of exact means (std/step)"),
    ("(c) drift → lag", "predicted lag with its floors (std)", "measured lag (std)"),
    ("(d) lag → loss", "lag of the BatchNorm means (std)", "log(loss / zero-lag loss)"),
)


def chain_points(runs: list[dict]) -> dict[str, list[tuple]]:
    """{"a"|"b"|"c"|"d": [(x, y, group, kept)]}: group is the stage (a, b) or the statistics set
    (c, d); kept says whether analysis.chain's fit uses the point."""
    out = {k: [] for k in "abcd"}
    for run in (r for r in runs if r["status"] == "completed" and r.get("chain_records")):
        recs, hp = run["chain_records"], run["hparams"]
        lo, hi = middle_third(recs, finite_number(hp.get("epochs")))
        sets = statistics_sets(recs, finite_number(hp.get("model.bn_momentum")))
        stages, start = chain_stages(recs), first_step(recs, "bn_lag_rms")
        for r in recs:
            _log_points(r, stages, lo <= r["step"] < hi, out["a"])
            _validation_points(r, recs, stages, sets, start, out)
    return out


def _log_points(r: dict, stages: list[str], kept: bool, out: list) -> None:
    x = finite_number(r.get("angular_update_step_pred"))
    for stage in stages:
        y = finite_number(r.get(f"angular_update_step/{stage}"))
        if x and y:
            out.append((x, y, stage, kept))


def _validation_points(r, recs, stages, sets, start, out) -> None:
    vals = [v for v in recs if "bn_drift_mu/" + stages[0] in v] if stages else []
    for stage in stages:
        drift = finite_number(r.get(f"bn_drift_mu/{stage}"))
        before = [v["step"] for v in vals if v["step"] < r["step"]]
        if drift and before:
            angle = mean_between(recs, f"angular_update_step/{stage}", before[-1], r["step"])
            if angle:
                out["b"].append((angle, drift, stage, True))
    ref = finite_number(r.get("val_loss_recal_aug"))
    for sfx, m in sets.items():
        name = f"m = {m:g}" + (" (running)" if not sfx else "")
        for stage in stages:
            point = lag_point(r, sfx, stage)
            if point and start is not None:
                out["c"].append((point[1], point[0], name, not in_warmup(r["step"] - start, m)))
        loss = finite_number(r.get(f"val_loss_shadow{sfx}" if sfx else "val_loss_running"))
        lag = finite_number(r.get(f"bn_lag_rms{sfx}"))
        if ref and loss and lag is not None and ref > 0 and loss > 0:
            seen = r["step"] if not sfx else finite_number(r.get("bn_shadow_batches")) or r["step"]
            out["d"].append((lag, math.log(loss / ref), name, not in_warmup(seen, m)))


def plot_chain(points: dict[str, list[tuple]], path: Path, title: str = "") -> str | None:
    """Four panels; (a)-(c) on log axes with the line y = x (the theory) where it applies."""
    if not any(points.values()):
        return "no run recorded the chain (probes.step_angle, probes.shadow_bn)"
    from runner.analysis.figures import _colors, _figure, _not_enough

    fig, ax = _figure(2, 2, w=5.0, h=4.2, title=f"The chain from decay to the oscillation\n{title}")
    for (key, (name, xlabel, ylabel)), a in zip(zip("abcd", PANELS), ax.flat):
        pts = points[key]
        groups = list(dict.fromkeys(g for *_, g, _ in pts))
        for group, color in zip(groups, _colors(len(groups))):
            for kept in (True, False):
                xy = [(x, y) for x, y, g, k in pts if g == group and k == kept]
                if xy:
                    face = color if kept else "white"
                    label = group if kept else None
                    a.plot(*zip(*xy), "o", ms=3, color=color, mfc=face, label=label, alpha=0.7)
        a.set(title=name, xlabel=xlabel, ylabel=ylabel)
        if not pts:
            _not_enough(a)
            continue
        if key in "ac":  # the theory: measured = predicted
            lo = min(min(x, y) for x, y, *_ in pts if x > 0 and y > 0)
            hi = max(max(x, y) for x, y, *_ in pts)
            a.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
        if key in "abc" and all(x > 0 and y > 0 for x, y, *_ in pts):
            a.set_xscale("log")
            a.set_yscale("log")
        a.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)
    return None
