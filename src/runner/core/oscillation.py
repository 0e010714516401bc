"""How much a run's validation loss oscillates: pure functions over metrics.jsonl records (no I/O, no torch).

Each figure is computed on two series of the validation records (those with `val_loss`), in step order:
the running-statistics series v_i = `val_loss_running` (BatchNorm's running mean/var, what model.eval() uses), and the
recalibrated series w_i = `val_loss_recal` (BN statistics recomputed on training images just before; recorded
when trainer.bn_recalibrate > 0). Running statistics lag behind fast-changing weights, so v oscillates more than
the weights do; w shows what is left once that bookkeeping is taken out. e_i is the epoch, a_i the accuracy,
u_i = `train_eval_loss_running` (the same evaluation on a fixed, un-augmented training subset; `_recal` twin for w).
Each series stops before its first non-finite loss (a diverged run).

    tv_per_epoch          Σ_i |v_{i+1} − v_i| / (e_last − e_first)
    max_rise              max_i (v_i − m_i),   m_i = min_{j≤i} v_j   (the running minimum)
    max_rise_rel          max_i (v_i − m_i) / m_i
    n_rises               episodes with (v_i − m_i)/m_i > threshold; one ends when the ratio is back ≤ threshold
    val_roughness_mid     R(v) over epochs [T/3, 2T/3);  R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| / mean_i |x_i|
    roughness_ratio_mid   R(v)/R(u) over the same window (records having both)
    ..._last              the same over epochs [2T/3, T]
    <any of the above>_recal   the same figure of the recalibrated series w (None without it)
    recal_removed_share   1 − tv_per_epoch_recal / tv_per_epoch: the share of the oscillation that recalibration
                          removes (< 0 when w moves more than v; None when either is undefined or v is flat)
    epochs_to_90/92       first e_i with a_i ≥ 0.90 / 0.92, on summary.json's headline accuracy: recalibrated when
                          the run has it (epochs_to_metric says which: "recalibrated" | "running")
    gen_gap               v_last − u_last, or v_last − mean train_loss over the epoch before e_last (gen_gap_source)
    final_weight_norm     last finite `weight_norm`
"""

from __future__ import annotations

import math

from runner.core.headline import Headline, named

ACC_TARGETS = (0.90, 0.92)


def finite_float(x) -> float | None:
    """x as a float if it is a finite number, else None (JSON null, NaN, inf, strings)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def val_points(records: list[dict], recal: bool = False) -> list[dict]:
    """One validation series in step order: [{"step", "epoch", "loss", "acc", "train_eval"}], one point per step
    (the last record), cut before the first non-finite loss.

    recal=False reads val_loss_running, val_acc_running, train_eval_loss_running (BatchNorm running statistics;
    records in the names before those, core.headline.named); recal=True reads their `_recal` twins (statistics
    recomputed on training images), and is empty for a run without them."""
    sfx = "_recal" if recal else "_running"
    by_step = {}
    for r in records:
        if isinstance(r, dict) and "val_loss" in r and finite_float(r.get("step")) is not None:
            by_step[r["step"]] = named(r)  # a resumed run re-logs steps: the later record wins
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
    """The series summary.json's best/final_val_acc and final_val_loss come from: recalibrated when the run has it."""
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
    """(max_i (v_i − m_i), max_i (v_i − m_i)/m_i, argmax i of the absolute rise); relative rises need m_i > 0."""
    if not v:
        return None, None, None
    m = running_min(v)
    rises = [x - mi for x, mi in zip(v, m)]
    i = max(range(len(v)), key=rises.__getitem__)
    rel = [r / mi for r, mi in zip(rises, m) if mi > 0]
    return rises[i], (max(rel) if rel else None), i


def count_rises(v: list[float], threshold: float = 0.1) -> int | None:
    """Number of episodes in which (v_i − m_i)/m_i > threshold; one ends once the ratio is ≤ threshold again."""
    if not v:
        return None
    n, inside = 0, False
    for x, mi in zip(v, running_min(v)):
        above = mi > 0 and (x - mi) / mi > threshold
        n += above and not inside  # count an episode once, when it starts
        inside = above
    return n


def roughness(x: list[float]) -> float | None:
    """R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| / mean_i |x_i|, a scale-free zigzag; None below 3 points or mean 0."""
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


def roughness_ratio(points: list[dict], window: tuple[float, float, bool]) -> tuple[float | None, float | None]:
    """(R(val), R(val)/R(train_eval)) on the window's points; the ratio uses points having both losses."""
    val = [p["loss"] for p in points if in_window(p["epoch"], window)]
    paired = [p for p in points if in_window(p["epoch"], window) and p["train_eval"] is not None]
    r_val = roughness(val)
    r_v, r_u = roughness([p["loss"] for p in paired]), roughness([p["train_eval"] for p in paired])
    return r_val, (r_v / r_u if r_v is not None and r_u else None)


def epochs_to_acc(points: list[dict], target: float) -> float | None:
    """First e_i with a_i ≥ target; None if never reached."""
    return next((p["epoch"] for p in points if p["acc"] is not None and p["acc"] >= target), None)


def generalization_gap(points: list[dict], records: list[dict]) -> tuple[float | None, str | None]:
    """(gap, source): v_last − u_last ("train_eval"), else v_last − mean train_loss over (e_last − 1, e_last]."""
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
    """The figures of one validation series (see the module docstring), keyed without a `_recal` suffix."""
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
        r_val, ratio = roughness_ratio(points, phase_window(epochs_total, phase)) if epochs_total else (None, None)
        out[f"val_roughness_{phase}"] = r_val
        out[f"roughness_ratio_{phase}"] = ratio
    return out


def removed_share(tv_running: float | None, tv_recal: float | None) -> float | None:
    """1 − tv_recal/tv_running: how much of the running-statistics oscillation recalibration takes away."""
    if tv_running is None or tv_recal is None or tv_running == 0:
        return None
    return 1 - tv_recal / tv_running


def oscillation_block(records: list[dict], epochs_total: float | None, threshold: float = 0.1) -> dict:
    """All oscillation figures of one run as a flat dict of JSON-able values (None where undefined).

    `epochs_total` is T, the run's scheduled epochs (hparams.epochs); None falls back to the last validation epoch.
    The running series' figures keep their plain names, the recalibrated series' carry `_recal`.
    """
    running, recal = val_points(records), val_points(records, recal=True)
    last = max((p["epoch"] for p in running + recal), default=None)
    T = epochs_total if finite_float(epochs_total) and epochs_total > 0 else (last if last and last > 0 else None)
    out = series_figures(running, T, threshold)
    out["rise_threshold"] = threshold
    out.update({f"{k}_recal": x for k, x in series_figures(recal, T, threshold).items()})
    out["recal_removed_share"] = removed_share(out["tv_per_epoch"], out["tv_per_epoch_recal"])
    headline = Headline.of_records(records).recalibrated  # the accuracy summary.json reports
    for target in ACC_TARGETS:
        out[f"epochs_to_{round(target * 100)}"] = epochs_to_acc(recal if headline else running, target)
    out["epochs_to_metric"] = "recalibrated" if headline else "running"
    out["gen_gap"], out["gen_gap_source"] = generalization_gap(running, records)
    out["final_weight_norm"] = final_value(records, "weight_norm")
    return out
