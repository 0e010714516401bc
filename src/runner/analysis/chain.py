"""The chain from strong decay to the oscillation, one fit per link, from the records of many runs.

    (a) decay → rotation   angular_update_step/<stage> against angular_update_step_pred
                           (probes.theory): ratio of means per run, then mean ± 95 % interval across
                           runs
    (b) rotation → drift   bn_drift_mu/<stage> (how far the exact statistics move per step between
                           two validations, in units of their std) against the mean step angle over
                           the same steps: log-log slope (1 if the drift is proportional to the
                           rotation) and the ratio drift/angle
    (c) drift → lag        bn_lag_rms<@m>/<stage> measured against √(lag_pred² + noise²), the lag
                           the measured drift predicts (probes.theory.ema_lag_path) and the
                           batch-noise floor σ_b²·m/(2 − m): ratio per run and momentum, across runs
    (d) lag → loss         log(val_loss<@m>/val_loss_recal_aug) against bn_lag_rms<@m>, over the
                           running and every shadow momentum at each validation: the same weights
                           with different statistics, so the slope is a within-run, exact control

Keys without @m are the running statistics (the model's momentum); `@0.003` etc. the shadow sets
(probes.shadow_bn). A validation at step s is in the warm-up of momentum m while more than 5 % of
the EMA's weight, (1 − m)^s, still sits on its initial value; such points are left out of (c) and
(d) and counted.
Intervals come from analysis.stats and treat runs (seeds) as the independent draws: points within a
run are correlated, so a pooled fit's n (points) is reported beside, never instead of, the runs' n.

Also here, the figures that replace or qualify analysis.oscillation's:
    dispersion_bias          by simulation: dispersion/σ − 1 of white noise at f validations per
                             epoch (+12 % at 1, +7 % at 2, +4 % at 3; undefined beyond 2 epochs
                             apart)
    gap_share                Σ r_g²/(Σ r_g² + Σ r_w²), r_g = r_v − r_w: the running − recalibrated
                             gap's share of the detrended variance, bounded in [0, 1]
                             (analysis.oscillation's dispersion_share_gap, Σ r_v(r_v − r_w)/Σ r_v²,
                             is not), with corr(r_g, r_w) beside it to say how far the split is
                             from additive
    paired_accuracy_noise    Δacc between two evaluations of one fixed set and its noise floor
                             √(n01 + n10)/n from the images whose correctness flipped
"""

from __future__ import annotations

import math
import random
import statistics

from runner.analysis.oscillation import detrended, rms
from runner.analysis.stats import mean_ci, ratio_of_means, regression

WARM_WEIGHT = 0.05  # an EMA is in its warm-up while more than this weight sits on its start value


def in_warmup(step: float, momentum: float, weight: float = WARM_WEIGHT) -> bool:
    """(1 − m)^s > weight: the running average still leans on its initial value."""
    return (1 - momentum) ** step > weight


def _num(x) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def suffix(momentum: float | None) -> str:
    """ "" for the running statistics, "@<m>" for a shadow set (e.g. "@0.003")."""
    return "" if momentum is None else f"@{momentum:g}"


def ratio_across_runs(runs: dict[str, list[tuple[float, float]]]) -> dict:
    """Per run the ratio of means ȳ/x̄ of its (y, x) pairs, then their mean ± interval across
    runs."""
    per_run = {}
    for run, pairs in runs.items():
        if pairs:
            per_run[run] = ratio_of_means([y for y, _ in pairs], [x for _, x in pairs])
    return {
        "across_runs": mean_ci([r["ratio"] for r in per_run.values()]),
        "per_run": per_run,
        "n_points": sum(len(v) for v in runs.values()),
    }


def slope_across_runs(runs: dict[str, list[tuple[float, float]]]) -> dict:
    """The pooled regression of y on x over every (x, y) pair, and each run's slope, mean ±
    interval."""
    every = [pair for pairs in runs.values() for pair in pairs]
    pooled = regression([x for x, _ in every], [y for _, y in every])
    per_run = {k: regression([x for x, _ in v], [y for _, y in v]) for k, v in runs.items()}
    return {"pooled": pooled, "across_runs": mean_ci([r["slope"] for r in per_run.values()])}


def link_a(runs: dict[str, list[dict]], stages: list[str], start_step: float = 0) -> dict:
    """(a) per stage: measured angular_update_step/<stage> over angular_update_step_pred, log points
    from start_step on (past the approach to equilibrium)."""
    out = {}
    for stage in stages:
        pairs = {
            run: [
                (y, x)
                for r in recs
                if r.get("step", -1) >= start_step
                and (y := _num(r.get(f"angular_update_step/{stage}"))) is not None
                and (x := _num(r.get("angular_update_step_pred"))) is not None
            ]
            for run, recs in runs.items()
        }
        out[stage] = ratio_across_runs(pairs)
    return out


def mean_between(records: list[dict], key: str, lo: float, hi: float) -> float | None:
    """The mean of `key` over the records with lo < step ≤ hi."""
    inside = [_num(r.get(key)) for r in records if lo < r.get("step", -1) <= hi]
    vals = [v for v in inside if v is not None]
    return sum(vals) / len(vals) if vals else None


def link_b(runs: dict[str, list[dict]], stages: list[str]) -> dict:
    """(b) per stage: log drift against log mean step angle between consecutive validations (slope,
    R²), and the drift per radian of rotation (ratio of means)."""
    out = {}
    for stage in stages:
        logs, ratios = {}, {}
        for run, recs in runs.items():
            vals = [r for r in recs if _num(r.get(f"bn_drift_mu/{stage}")) is not None]
            pairs = []
            for prev, r in zip(vals, vals[1:]):
                angle = mean_between(recs, f"angular_update_step/{stage}", prev["step"], r["step"])
                drift = r[f"bn_drift_mu/{stage}"]
                if angle and angle > 0 and drift > 0:
                    pairs.append((drift, angle))
            logs[run] = [(math.log(a), math.log(d)) for d, a in pairs]
            ratios[run] = pairs
        out[stage] = {"log_log": slope_across_runs(logs), "per_radian": ratio_across_runs(ratios)}
    return out


def link_c(runs: dict[str, list[dict]], stages: list[str], momenta: dict[str, float]) -> dict:
    """(c) per stage and statistics set (momenta: {"" or "@m": m}): measured RMS lag over the lag
    the drift predicts with its noise floor added in quadrature; warm-up validations left out."""
    out = {}
    for sfx, m in momenta.items():
        for stage in stages:
            pairs, left_out = {}, 0
            for run, recs in runs.items():
                pairs[run] = []
                for r in recs:
                    y = _num(r.get(f"bn_lag_rms{sfx}/{stage}"))
                    pred = _num(r.get(f"bn_lag_pred_rms{sfx}/{stage}"))
                    noise = _num(r.get(f"bn_noise_rms{sfx}/{stage}")) or 0.0
                    if y is None or pred is None:
                        continue
                    if in_warmup(r["step"], m):
                        left_out += 1
                        continue
                    pairs[run].append((y, math.hypot(pred, noise)))
            out[f"{stage}{sfx}"] = {**ratio_across_runs(pairs), "warmup_left_out": left_out}
    return out


def link_d(runs: dict[str, list[dict]], momenta: dict[str, float]) -> dict:
    """(d) log(val_loss<@m>/val_loss_recal_aug) against bn_lag_rms<@m>, every statistics set at
    every validation past its warm-up; the slope's interval across runs and the pooled fit."""
    pairs, left_out = {}, 0
    for run, recs in runs.items():
        pairs[run] = []
        for r in recs:
            ref = _num(r.get("val_loss_recal_aug"))
            for sfx, m in momenta.items():
                loss = _num(r.get(f"val_loss_shadow{sfx}" if sfx else "val_loss_running"))
                lag = _num(r.get(f"bn_lag_rms{sfx}"))
                if None in (ref, loss, lag) or ref <= 0 or loss <= 0:
                    continue
                if in_warmup(r["step"], m):
                    left_out += 1
                    continue
                pairs[run].append((lag, math.log(loss / ref)))
    return {**slope_across_runs(pairs), "warmup_left_out": left_out}


def simulated_dispersion_bias(
    per_epoch: float,
    epochs: float = 20.0,
    half_window: float = 2.0,
    reps: int = 200,
    seed: int = 0,
) -> float | None:
    """dispersion/σ − 1 for a log-loss series of white noise σ validated `per_epoch` times an epoch,
    through analysis.oscillation's own detrending (its median leaves out the point, so the noise of
    the neighbours' median adds to the residual); None where no point has a full window."""
    rng, ratios = random.Random(seed), []
    for _ in range(reps):
        e = [i / per_epoch for i in range(1, int(epochs * per_epoch) + 1)]
        x = [rng.gauss(0.0, 1.0) for _ in e]
        r = detrended(x, e, min(half_window, (e[-1] - e[0]) / 4)) if len(e) > 2 else {}
        if r:
            ratios.append(rms(r.values()))
    return statistics.mean(ratios) - 1 if ratios else None


def gap_share(r_running: dict, r_recal: dict) -> dict:
    """Σ r_g²/(Σ r_g² + Σ r_w²) with r_g = r_v − r_w over the points both have
    (analysis.oscillation's detrended log residuals, keyed by step), in [0, 1]; and corr(r_g, r_w)
    (0 when the split is additive). None where both are zero or below 3 points."""
    keys = [k for k in r_running if k in r_recal]
    g = [r_running[k] - r_recal[k] for k in keys]
    w = [r_recal[k] for k in keys]
    sg, sw = sum(x * x for x in g), sum(x * x for x in w)
    if len(keys) < 3 or sg + sw == 0:
        return {"gap_share": None, "gap_recal_corr": None, "n": len(keys)}
    gw = sum(a * b for a, b in zip(g, w))
    corr = gw / math.sqrt(sg * sw) if sg > 0 and sw > 0 else None
    return {"gap_share": sg / (sg + sw), "gap_recal_corr": corr, "n": len(keys)}


def paired_accuracy_noise(correct_a: list[bool], correct_b: list[bool]) -> dict:
    """Δacc = acc_b − acc_a of two evaluations of one fixed set of n images, and its noise floor
    √(n01 + n10)/n (the sd of Δacc if each flipped image went either way at random). The same
    weights give 0 and 0: evaluation is deterministic; different weights flip some images."""
    n = len(correct_a)
    n01 = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    n10 = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    return {"delta": (n01 - n10) / n, "floor": math.sqrt(n01 + n10) / n, "flipped": n01 + n10}
