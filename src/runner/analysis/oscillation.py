"""How much a run's validation loss oscillates: pure functions over metrics.jsonl records (no I/O,
no torch).

Each figure is computed on two series of the validation records (those with `val_loss`), in step
order: the running-statistics series v_i = `val_loss_running` (BatchNorm's running mean/var, what
model.eval() uses), and the recalibrated series w_i = `val_loss_recal` (BN statistics recomputed on
training images just before; recorded when trainer.bn_recalibrate ≠ 0). Running statistics lag
behind fast-changing weights, so v oscillates more than the weights do; w shows what is left once
that bookkeeping is taken out. e_i is the epoch, a_i the accuracy, u_i = `train_eval_loss_running`
(the same evaluation on a fixed, un-augmented training subset; `_recal` twin for w). Each series
stops before its first non-finite loss (a diverged run).

    tv_per_epoch          Σ_i |v_{i+1} − v_i| / (e_last − e_first)
    max_rise              max_i (v_i − m_i),   m_i = min_{j≤i} v_j   (the running minimum)
    max_rise_rel          max_i (v_i − m_i) / m_i
    n_rises               episodes with (v_i − m_i)/m_i > threshold; one ends when the ratio is back
                          ≤ threshold
    val_roughness_mid     R(v) over epochs [T/3, 2T/3);  R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| /
                          mean_i |x_i|
    roughness_ratio_mid   R(v)/R(u) over the same window (records having both)
    ..._last              the same over epochs [2T/3, T]
    <any of the above>_recal   the same figure of the recalibrated series w (None without it)
    recal_removed_share   1 − tv_per_epoch_recal / tv_per_epoch: the share of the oscillation that
                          recalibration removes (< 0 when w moves more than v; None when either is
                          undefined or v is flat)
    epochs_to_90/92       first e_i with a_i ≥ 0.90 / 0.92, on summary.json's headline accuracy:
                          recalibrated when the run has it (epochs_to_metric says which:
                          "recalibrated" | "running")
    gen_gap               v_last − u_last, or v_last − mean train_loss over the epoch before e_last
                          (gen_gap_source)
    final_weight_norm     last finite `weight_norm`

TV, max_rise, n_rises, roughness and recal_removed_share depend on how often the run validates
(between two validations the fluctuations are nearly white, so TV grows with their number and
max_rise is an extreme value): compare them only between runs with the same `val_every_steps`. The
figures below do not depend on it:

    dispersion            √(mean_i r_i²),  r_i = log v_i − median{log v_j : j ≠ i, |e_j − e_i| ≤ h},
                          over the points whose whole window [e_i − h, e_i + h] lies inside the
                          series (h = dispersion_half_window, 2 epochs, shrunk to a quarter of the
                          span for shorter runs); the typical factor by which one validation's loss
                          sits off its local level (0.25: ×/÷ 1.28). Leaving v_i out of its own
                          median keeps a sparse series from being pulled towards itself.
    dispersion_recal      the same of w;  dispersion_train_eval (u) and dispersion_train_eval_recal
    dispersion_points     how many points dispersion averages over (n of its r_i)
    dispersion_lo, _hi    its 95 % interval as the std of independent normal residuals
                          (analysis.stats.rms_interval: ±13 % at 29 points, ×0.6 to ×2.9 at 4);
                          neighbouring residuals share medians, so it is a little narrow
    dispersion_bias       dispersion/σ − 1 of white noise of std σ validated as often as this run
                          (`simulated_dispersion_bias`): the median of few neighbours is itself
                          noisy, so dispersion reads high, +13 % at one validation an epoch, +7 % at
                          two, +4 % at three; undefined (None) beyond two epochs between
                          validations. Dispersion is comparable across runs only within that bias
    gap_share             Σ g_i² / (Σ g_i² + Σ r_w,i²), g_i = r_v,i − r_w,i over the points with
                          both: the running − recalibrated gap's share of the detrended variance,
                          in [0, 1]; gap_recal_corr = corr(g, r_w) says how far the two parts are
                          from independent (then the variances add: Σ r_v² = Σ g² + Σ r_w²)
    change_corr_train_eval
                          corr(Δ log v, Δ log u) of consecutive validations: ≈ 1 when val and
                          train-eval move together (an evaluation effect shared by both image
                          sets), ≈ 0 for independent noise
    change_corr_train     corr(Δ log v, Δ log t̄), t̄_i = mean train_loss of the steps (s_{i−1},
                          s_i]: train mode
    acc_dispersion        √(mean_i ρ_i²) with ρ_i the same residual of the accuracy a_i (no log)
    acc_dispersion_recal  the same of the recalibrated accuracy: the floor acc_dispersion is read
                          against, what the weights alone make on the same images (one fixed set
                          evaluated twice by the same weights gives the same accuracy: its noise is
                          the weights', not the images')
    acc_sampling_error    √(ā(1 − ā)/n_val), ā = mean a_i: the standard error of an accuracy against
                          a new set of n_val images (summary data.n_val; None without it): what
                          separates two configurations' accuracies, not two validations' of one
    val_every_steps       the median number of steps between two validations

BatchNorm staleness over the run, from the per-validation keys of runner.probes.bn_staleness
(validations with both series):
    bn_<pair>_<what>      mean over validations of bn_<pair>_<what>_mean, pair ∈ staleness | lag |
                          mismatch, what ∈ mu | logvar
    gap_loss_mean         mean_i (v_i − w_i): the running − recalibrated loss gap
    gap_lag_mean          mean_i (v_i − v^aug_i), v^aug = val_loss_recal_aug (statistics of the
                          augmented draw): the part of the gap that is lag; gap_mismatch_mean =
                          mean_i (v^aug_i − w_i) the part that is clean vs augmented images; the two
                          add up to gap_loss_mean
(the gap's relation to the lag it comes from is analysis.chain's link (d), measured within each
validation with shadow statistics instead of correlating two levels that both trend down)
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import statistics

from runner.analysis.stats import rms_interval
from runner.core.headline import Headline

ACC_TARGETS = (0.90, 0.92)
HALF_WINDOW = 2.0  # epochs each side of a point for its running median (dispersion)
FREQUENCY_DEPENDENT = ("tv_per_epoch", "max_rise", "max_rise_rel", "n_rises", "recal_removed_share")


def finite_float(x) -> float | None:
    """x as a float if it is a finite number, else None (JSON null, NaN, inf, strings)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def val_points(records: list[dict], recal: bool = False) -> list[dict]:
    """One validation series in step order: [{"step", "epoch", "loss", "acc", "train_eval"}], one
    point per step (the last record), cut before the first non-finite loss.

    recal=False reads val_loss_running, val_acc_running, train_eval_loss_running (BatchNorm running
    statistics); recal=True reads their `_recal` twins (statistics recomputed on training images),
    and is empty for a run without them."""
    sfx = "_recal" if recal else "_running"
    by_step = {}
    for r in records:
        if isinstance(r, dict) and "val_loss" in r and finite_float(r.get("step")) is not None:
            by_step[r["step"]] = r  # a resumed run re-logs steps: the later record wins
    out = []
    for step in sorted(by_step):
        r = by_step[step]
        v, e = finite_float(r.get("val_loss" + sfx)), finite_float(r.get("epoch"))
        if v is None:
            break  # diverged: the series stops at the last finite value
        if e is not None:
            out.append(
                {
                    "step": step,
                    "epoch": e,
                    "loss": v,
                    "acc": finite_float(r.get("val_acc" + sfx)),
                    "train_eval": finite_float(r.get("train_eval_loss" + sfx)),
                }
            )
    return out


def headline_points(records: list[dict]) -> list[dict]:
    """The series summary.json's best/final_val_acc and final_val_loss come from: recalibrated when
    the run has it."""
    return val_points(records, recal=Headline.of_records(records).recalibrated)


def total_variation_per_epoch(v: list[float], e: list[float]) -> float | None:
    """Σ|v_{i+1} − v_i| / (e_last − e_first); None with fewer than 2 points or a zero epoch span."""
    if len(v) < 2 or e[-1] <= e[0]:
        return None
    return sum(abs(b - a) for a, b in zip(v, v[1:])) / (e[-1] - e[0])


def running_min(v: list[float]) -> list[float]:
    """m_i = min_{j≤i} v_j."""
    out, m = [], math.inf
    for x in v:
        m = min(m, x)
        out.append(m)
    return out


def max_rise(v: list[float]) -> tuple[float | None, float | None, int | None]:
    """(max_i (v_i − m_i), max_i (v_i − m_i)/m_i, argmax i of the absolute rise); relative rises
    need m_i > 0."""
    if not v:
        return None, None, None
    m = running_min(v)
    rises = [x - mi for x, mi in zip(v, m)]
    i = max(range(len(v)), key=rises.__getitem__)
    rel = [r / mi for r, mi in zip(rises, m) if mi > 0]
    return rises[i], (max(rel) if rel else None), i


def count_rises(v: list[float], threshold: float = 0.1) -> int | None:
    """Number of episodes in which (v_i − m_i)/m_i > threshold; one ends once the ratio is ≤
    threshold again."""
    if not v:
        return None
    n, inside = 0, False
    for x, mi in zip(v, running_min(v)):
        above = mi > 0 and (x - mi) / mi > threshold
        n += above and not inside  # count an episode once, when it starts
        inside = above
    return n


def roughness(x: list[float]) -> float | None:
    """R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| / mean_i |x_i|, a scale-free zigzag; None below 3
    points or mean 0."""
    if len(x) < 3:
        return None
    scale = sum(abs(a) for a in x) / len(x)
    if scale == 0:
        return None
    d2 = [abs(c - 2 * b + a) for a, b, c in zip(x, x[1:], x[2:])]
    return sum(d2) / len(d2) / scale


def phase_window(epochs_total: float, phase: str) -> tuple[float, float, bool]:
    """(lo, hi, hi_inclusive) of a schedule phase: middle = [T/3, 2T/3), last = [2T/3, T]."""
    T = float(epochs_total)
    return {"mid": (T / 3, 2 * T / 3, False), "last": (2 * T / 3, T, True)}[phase]


def in_window(e: float, window: tuple[float, float, bool]) -> bool:
    lo, hi, closed = window
    # a tiny tolerance: epochs are step/steps_per_epoch floats, T/3 is not
    eps = 1e-9 * max(1.0, abs(hi))
    return lo - eps <= e and (e <= hi + eps if closed else e < hi - eps)


def roughness_ratio(
    points: list[dict], window: tuple[float, float, bool]
) -> tuple[float | None, float | None]:
    """(R(val), R(val)/R(train_eval)) on the window's points; the ratio uses points having both
    losses."""
    val = [p["loss"] for p in points if in_window(p["epoch"], window)]
    paired = [p for p in points if in_window(p["epoch"], window) and p["train_eval"] is not None]
    r_val = roughness(val)
    r_v, r_u = roughness([p["loss"] for p in paired]), roughness([p["train_eval"] for p in paired])
    return r_val, (r_v / r_u if r_v is not None and r_u else None)


def epochs_to_acc(points: list[dict], target: float) -> float | None:
    """First e_i with a_i ≥ target; None if never reached."""
    return next((p["epoch"] for p in points if p["acc"] is not None and p["acc"] >= target), None)


def generalization_gap(points: list[dict], records: list[dict]) -> tuple[float | None, str | None]:
    """(gap, source): v_last − u_last ("train_eval"), else v_last − mean train_loss over (e_last −
    1, e_last]."""
    if not points:
        return None, None
    last = points[-1]
    if last["train_eval"] is not None:
        return last["loss"] - last["train_eval"], "train_eval"
    e, losses = last["epoch"], []
    for r in records:
        if isinstance(r, dict):
            ep, loss = finite_float(r.get("epoch")), finite_float(r.get("train_loss"))
            if ep is not None and loss is not None and e - 1 < ep <= e:
                losses.append(loss)
    if not losses:
        return None, None
    return last["loss"] - sum(losses) / len(losses), "train_loss_last_epoch"


def final_value(records: list[dict], key: str) -> float | None:
    """The last finite value of `key` in step order."""
    vals = [
        (r["step"], finite_float(r[key]))
        for r in records
        if isinstance(r, dict) and key in r and finite_float(r.get("step")) is not None
    ]
    vals = [v for _, v in sorted(vals, key=lambda sv: sv[0]) if v is not None]
    return vals[-1] if vals else None


def series_figures(points: list[dict], epochs_total: float | None, threshold: float) -> dict:
    """The figures of one validation series (see the module docstring), keyed without a `_recal`
    suffix."""
    v, e = [p["loss"] for p in points], [p["epoch"] for p in points]
    rise, rise_rel, i_rise = max_rise(v)
    out = {
        "n_val_points": len(points),
        "tv_per_epoch": total_variation_per_epoch(v, e),
        "max_rise": rise,
        "max_rise_rel": rise_rel,
        "max_rise_epoch": e[i_rise] if i_rise is not None else None,
        "n_rises": count_rises(v, threshold),
    }
    for phase in ("mid", "last"):
        r_val, ratio = (
            roughness_ratio(points, phase_window(epochs_total, phase))
            if epochs_total
            else (None, None)
        )
        out[f"val_roughness_{phase}"] = r_val
        out[f"roughness_ratio_{phase}"] = ratio
    return out


def removed_share(tv_running: float | None, tv_recal: float | None) -> float | None:
    """1 − tv_recal/tv_running: how much of the running-statistics oscillation recalibration takes
    away."""
    if tv_running is None or tv_recal is None or tv_running == 0:
        return None
    return 1 - tv_recal / tv_running


def detrended(x: list[float], e: list[float], half: float) -> dict[int, float]:
    """{i: x_i − median{x_j : j ≠ i, |e_j − e_i| ≤ half}} for every i whose window lies inside [e_0,
    e_last] and holds at least two other points (the running median dispersion is measured around).
    """
    eps = 1e-9 * max(1.0, abs(e[-1])) if e else 0.0
    out = {}
    for i, (xi, ei) in enumerate(zip(x, e)):
        if ei - half < e[0] - eps or ei + half > e[-1] + eps:
            continue
        nb = [xj for j, (xj, ej) in enumerate(zip(x, e)) if j != i and abs(ej - ei) <= half + eps]
        if len(nb) >= 2:
            out[i] = xi - statistics.median(nb)
    return out


def rms(values) -> float | None:
    values = list(values)
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else None


def half_window(points: list[dict]) -> float | None:
    """h: HALF_WINDOW epochs, or a quarter of the series' span when that is shorter; None below 2
    points."""
    if len(points) < 2 or points[-1]["epoch"] <= points[0]["epoch"]:
        return None
    return min(HALF_WINDOW, (points[-1]["epoch"] - points[0]["epoch"]) / 4)


def log_residuals(points: list[dict], field: str, half: float | None) -> dict[int, float]:
    """detrended log of `field` ("loss" or "train_eval") over the points that have a positive value
    of it, keyed by step."""
    kept = [p for p in points if p[field] is not None and p[field] > 0]
    if half is None or len(kept) < 3:
        return {}
    r = detrended([math.log(p[field]) for p in kept], [p["epoch"] for p in kept], half)
    return {kept[i]["step"]: v for i, v in r.items()}


def change_corr(a: list[float], b: list[float]) -> float | None:
    """Pearson correlation of consecutive differences of two paired series; None below 3 pairs or a
    flat one."""
    da, db = [y - x for x, y in zip(a, a[1:])], [y - x for x, y in zip(b, b[1:])]
    if len(da) < 2:
        return None
    ma, mb = sum(da) / len(da), sum(db) / len(db)
    sab = sum((x - ma) * (y - mb) for x, y in zip(da, db))
    saa, sbb = sum((x - ma) ** 2 for x in da), sum((y - mb) ** 2 for y in db)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else None


def train_loss_between(points: list[dict], records: list[dict]) -> list[float | None]:
    """t̄_i: the mean finite train_loss of the steps (s_{i−1}, s_i] before validation i (None when
    there is none)."""
    by_step = {}
    for r in records:
        if (
            isinstance(r, dict)
            and finite_float(r.get("train_loss")) is not None
            and finite_float(r.get("step"))
        ):
            by_step[r["step"]] = r["train_loss"]
    steps, out, prev = sorted(by_step), [], -math.inf
    for p in points:
        lo, hi = bisect.bisect_right(steps, prev), bisect.bisect_right(steps, p["step"])
        vals = [by_step[k] for k in steps[lo:hi]]
        out.append(sum(vals) / len(vals) if vals else None)
        prev = p["step"]
    return out


def paired_corr(points: list[dict], other: list[float | None]) -> float | None:
    """change_corr of log v and log `other` over the points where both are positive."""
    pairs = [
        (p["loss"], o) for p, o in zip(points, other) if o is not None and o > 0 and p["loss"] > 0
    ]
    return change_corr([math.log(a) for a, _ in pairs], [math.log(b) for _, b in pairs])


def dispersion_figures(
    running: list[dict], recal: list[dict], records: list[dict], n_val: int | None
) -> dict:
    """The oscillation figures that do not depend on the validation frequency (module docstring)."""
    half = half_window(running)
    r_v, r_u = log_residuals(running, "loss", half), log_residuals(running, "train_eval", half)
    half_w = half_window(recal)
    r_w, r_uw = log_residuals(recal, "loss", half_w), log_residuals(recal, "train_eval", half_w)
    r_a, a_bar = acc_residuals(running, half)
    steps = [p["step"] for p in running]
    every = statistics.median(b - a for a, b in zip(steps, steps[1:])) if len(steps) > 1 else None
    per_epoch = validations_per_epoch(running)
    return {
        "val_every_steps": every,
        "dispersion_half_window": half,
        "dispersion": rms(r_v.values()),
        "dispersion_points": len(r_v) or None,
        **dict(zip(("dispersion_lo", "dispersion_hi"), rms_interval(rms(r_v.values()), len(r_v)))),
        "dispersion_bias": dispersion_bias(per_epoch, running),
        "dispersion_recal": rms(r_w.values()),
        "dispersion_train_eval": rms(r_u.values()),
        "dispersion_train_eval_recal": rms(r_uw.values()),
        **gap_share(r_v, r_w),
        "change_corr_train_eval": paired_corr(running, [p["train_eval"] for p in running]),
        "change_corr_train": paired_corr(running, train_loss_between(running, records)),
        "acc_dispersion": rms(r_a.values()),
        "acc_dispersion_recal": rms(acc_residuals(recal, half_w)[0].values()),
        "acc_sampling_error": math.sqrt(a_bar * (1 - a_bar) / n_val)
        if a_bar is not None and n_val
        else None,
    }


def acc_residuals(points: list[dict], half: float | None) -> tuple[dict, float | None]:
    """({i: detrended accuracy residual}, mean accuracy over those points)."""
    accs = [p for p in points if p["acc"] is not None]
    if not half or len(accs) < 3:
        return {}, None
    r = detrended([p["acc"] for p in accs], [p["epoch"] for p in accs], half)
    return r, (sum(accs[i]["acc"] for i in r) / len(r) if r else None)


def gap_share(r_running: dict, r_recal: dict) -> dict:
    """gap_share = Σ g²/(Σ g² + Σ r_w²), g = r_v − r_w over the points both have (detrended log
    residuals keyed by step), in [0, 1]; gap_recal_corr = corr(g, r_w), 0 when the split is
    additive. None where both are zero or below 3 points."""
    keys = [k for k in r_running if k in r_recal]
    g = [r_running[k] - r_recal[k] for k in keys]
    w = [r_recal[k] for k in keys]
    sg, sw = sum(x * x for x in g), sum(x * x for x in w)
    if len(keys) < 3 or sg + sw == 0:
        return {"gap_share": None, "gap_recal_corr": None}
    gw = sum(a * b for a, b in zip(g, w))
    corr = gw / math.sqrt(sg * sw) if sg > 0 and sw > 0 else None
    return {"gap_share": sg / (sg + sw), "gap_recal_corr": corr}


def validations_per_epoch(points: list[dict]) -> float | None:
    """The median number of validations an epoch (1 / the median epochs between two)."""
    gaps = [b["epoch"] - a["epoch"] for a, b in zip(points, points[1:])]
    gap = statistics.median(gaps) if gaps else None
    return 1 / gap if gap else None


def dispersion_bias(per_epoch: float | None, points: list[dict]) -> float | None:
    """`simulated_dispersion_bias` at this series' validations per epoch and span (cached)."""
    if per_epoch is None or len(points) < 3:
        return None
    span = points[-1]["epoch"] - points[0]["epoch"]
    return simulated_dispersion_bias(round(per_epoch, 2), round(span, 1))


@functools.lru_cache(maxsize=256)
def simulated_dispersion_bias(
    per_epoch: float,
    epochs: float = 20.0,
    reps: int = 200,
    seed: int = 0,
) -> float | None:
    """dispersion/σ − 1 of a log-loss series of white noise σ validated `per_epoch` times an epoch
    for `epochs`, through this module's own detrending (its median leaves the point out, so the
    noise of the neighbours' median adds to the residual); None where no point has a full window.
    A trend the median follows adds a few points more (decaying: 1-3 in simulation)."""
    rng, ratios = random.Random(seed), []
    n = int(epochs * per_epoch) + 1
    e = [i / per_epoch for i in range(n)]
    if n < 3:
        return None
    half = min(HALF_WINDOW, (e[-1] - e[0]) / 4)
    for _ in range(reps):
        r = detrended([rng.gauss(0.0, 1.0) for _ in e], e, half)
        if r:
            ratios.append(rms(r.values()))
    return statistics.mean(ratios) - 1 if ratios else None


def mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bn_gap_figures(running: list[dict], recal: list[dict], records: list[dict]) -> dict:
    """BatchNorm staleness over the run (runner.probes.bn_staleness's per-validation keys) and the
    loss gap it explains: means over the validations having both series."""
    by_step = {
        r["step"]: r for r in records if isinstance(r, dict) and "val_loss" in r and "step" in r
    }
    w_of = {p["step"]: p["loss"] for p in recal}
    pts = [(p, by_step[p["step"]]) for p in running if p["step"] in w_of and p["step"] in by_step]
    out = {}
    for name in ("staleness", "lag", "mismatch"):
        for what in ("mu", "logvar"):
            vals = [finite_float(r.get(f"bn_{name}_{what}_mean")) for _, r in pts]
            out[f"bn_{name}_{what}"] = mean_or_none([v for v in vals if v is not None])
    aug = [(p, finite_float(r.get("val_loss_recal_aug"))) for p, r in pts]
    aug = [(p, a) for p, a in aug if a is not None]
    out["gap_loss_mean"] = mean_or_none([p["loss"] - w_of[p["step"]] for p, _ in pts])
    out["gap_lag_mean"] = mean_or_none([p["loss"] - a for p, a in aug])
    out["gap_mismatch_mean"] = mean_or_none([a - w_of[p["step"]] for p, a in aug])
    return out


def oscillation_block(
    records: list[dict],
    epochs_total: float | None,
    threshold: float = 0.1,
    n_val: int | None = None,
) -> dict:
    """All oscillation figures of one run as a flat dict of JSON-able values (None where undefined).

    `epochs_total` is T, the run's scheduled epochs (hparams.epochs); None falls back to the last
    validation epoch. `n_val` is the number of validation images (the accuracy's noise floor; None
    leaves it out). The running series' figures keep their plain names, the recalibrated series'
    carry `_recal`.
    """
    running, recal = val_points(records), val_points(records, recal=True)
    last = max((p["epoch"] for p in running + recal), default=None)
    T = (
        epochs_total
        if finite_float(epochs_total) and epochs_total > 0
        else (last if last and last > 0 else None)
    )
    out = series_figures(running, T, threshold)
    out["rise_threshold"] = threshold
    out.update({f"{k}_recal": x for k, x in series_figures(recal, T, threshold).items()})
    out["recal_removed_share"] = removed_share(out["tv_per_epoch"], out["tv_per_epoch_recal"])
    headline = Headline.of_records(records).recalibrated  # the accuracy summary.json reports
    for target in ACC_TARGETS:
        out[f"epochs_to_{round(target * 100)}"] = epochs_to_acc(
            recal if headline else running, target
        )
    out["epochs_to_metric"] = "recalibrated" if headline else "running"
    out["gen_gap"], out["gen_gap_source"] = generalization_gap(running, records)
    out["final_weight_norm"] = final_value(records, "weight_norm")
    out.update(dispersion_figures(running, recal, records, n_val))
    out.update(bn_gap_figures(running, recal, records))
    out["frequency_dependent"] = list(FREQUENCY_DEPENDENT)
    return out
