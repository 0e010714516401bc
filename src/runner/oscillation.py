"""How much a run's validation loss oscillates: pure functions over metrics.jsonl records (no I/O, no torch).

The series are the validation records (those with `val_loss`) in step order: v_i at epochs e_i, with
accuracy a_i, and, when the runner evaluated it, u_i = `train_eval_loss` (same evaluation on a fixed,
un-augmented training subset). A diverged run's series stop before the first non-finite val_loss.

    tv_per_epoch          Σ_i |v_{i+1} − v_i| / (e_last − e_first)
    max_rise              max_i (v_i − m_i),   m_i = min_{j≤i} v_j   (the running minimum)
    max_rise_rel          max_i (v_i − m_i) / m_i
    n_rises               episodes with (v_i − m_i)/m_i > threshold; one ends when the ratio is back ≤ threshold
    roughness_ratio_mid   R(v)/R(u) over epochs [T/3, 2T/3);  R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| / mean_i |x_i|
    roughness_ratio_last  R(v)/R(u) over epochs [2T/3, T]
    epochs_to_90/92       first e_i with a_i ≥ 0.90 / 0.92
    gen_gap               v_last − u_last, or v_last − mean train_loss over the epoch before e_last (gen_gap_source)
    final_weight_norm     last finite `weight_norm`
"""
from __future__ import annotations

import math

ACC_TARGETS = (0.90, 0.92)


def finite_float(x) -> float | None:
    """x as a float if it is a finite number, else None (JSON null, NaN, inf, strings)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def is_recalibrated(records: list[dict]) -> bool:
    """Whether the run also evaluated with recomputed BatchNorm statistics: its validation records carry
    `val_loss_recal` (the trainer leaves the key out when trainer.bn_recalibrate=0)."""
    return any(isinstance(r, dict) and "val_loss" in r and "val_loss_recal" in r for r in records)


def val_points(records: list[dict], recal: bool = False) -> list[dict]:
    """One validation series in step order: [{"step", "epoch", "loss", "acc", "train_eval"}], one point per step
    (the last record), cut before the first non-finite loss.

    recal=False reads val_loss, val_acc, train_eval_loss (BatchNorm running statistics); recal=True reads their
    `_recal` twins (statistics recomputed on training images), and is empty for a run without them."""
    sfx = "_recal" if recal else ""
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
            out.append({"step": step, "epoch": e, "loss": v, "acc": finite_float(r.get("val_acc" + sfx)),
                        "train_eval": finite_float(r.get("train_eval_loss" + sfx))})
    return out


def headline_points(records: list[dict]) -> list[dict]:
    """The series summary.json's best/final_val_acc and final_val_loss come from: recalibrated when the run has it."""
    return val_points(records, recal=is_recalibrated(records))


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
    """Number of episodes in which (v_i − m_i)/m_i > threshold; an episode ends once the ratio is ≤ threshold again."""
    if not v:
        return None
    n, inside = 0, False
    for x, mi in zip(v, running_min(v)):
        above = mi > 0 and (x - mi) / mi > threshold
        n += above and not inside  # count an episode once, when it starts
        inside = above
    return n


def roughness(x: list[float]) -> float | None:
    """R(x) = mean_i |x_{i+1} − 2x_i + x_{i−1}| / mean_i |x_i|: scale-free zigzag; None below 3 points or zero mean."""
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
    vals = [(r["step"], finite_float(r[key])) for r in records
            if isinstance(r, dict) and key in r and finite_float(r.get("step")) is not None]
    vals = [v for _, v in sorted(vals, key=lambda sv: sv[0]) if v is not None]
    return vals[-1] if vals else None


def oscillation_block(records: list[dict], epochs_total: float | None, threshold: float = 0.1) -> dict:
    """All oscillation figures of one run as a flat dict of JSON-able values (None where undefined).

    `epochs_total` is T, the run's scheduled epochs (hparams.epochs); None falls back to the last validation epoch.
    """
    pts = val_points(records)
    v, e = [p["loss"] for p in pts], [p["epoch"] for p in pts]
    rise, rise_rel, i_rise = max_rise(v)
    T = epochs_total if finite_float(epochs_total) and epochs_total > 0 else (e[-1] if e and e[-1] > 0 else None)
    out = {
        "n_val_points": len(pts),
        "tv_per_epoch": total_variation_per_epoch(v, e),
        "max_rise": rise,
        "max_rise_rel": rise_rel,
        "max_rise_epoch": e[i_rise] if i_rise is not None else None,
        "n_rises": count_rises(v, threshold),
        "rise_threshold": threshold,
    }
    for phase in ("mid", "last"):
        r_val, ratio = roughness_ratio(pts, phase_window(T, phase)) if T else (None, None)
        out[f"val_roughness_{phase}"] = r_val
        out[f"roughness_ratio_{phase}"] = ratio
    for target in ACC_TARGETS:
        out[f"epochs_to_{round(target * 100)}"] = epochs_to_acc(pts, target)
    out["gen_gap"], out["gen_gap_source"] = generalization_gap(pts, records)
    out["final_weight_norm"] = final_value(records, "weight_norm")
    return out
