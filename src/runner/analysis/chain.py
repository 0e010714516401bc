"""The chain from strong decay to the oscillation, one fit per link, from the records of many runs
({run: its records}; runner.probes.rotation and .shadow_bn write the keys).

    (a) decay → rotation   angular_update_step/<stage> against angular_update_step_pred: per run
                           the ratio of means over the log points inside its window (the middle
                           third of the schedule: past the approach to equilibrium, before a
                           decaying lr outruns it), then mean ± 95 % interval across runs
    (b) rotation → drift   bn_drift_mu/<stage> (how far the exact statistics moved per step since
                           the previous validation, in their stds) against the mean measured step
                           angle over the same steps: the drift per radian (ratio of means) and the
                           log-log slope (1 if the drift is proportional to the rotation)
    (c) drift → lag        bn_lag_rms<@m>/<stage> against √(pred² + noise² + ref²): the lag the
                           drift predicts for an EMA of momentum m (probes.bn_lag), the batch-noise
                           floor that EMA keeps and the reference images' own sampling error;
                           ratio per run, set and stage, across runs
    (d) lag → loss         log(val_loss<@m>/val_loss_recal_aug) against bn_lag_rms<@m>, over the
                           running and every shadow set at each validation: the same weights with
                           different statistics, so the slope is a within-run, exact control

Keys without @m are the running statistics (the model's momentum); `@0.003` etc. the shadow sets
(probes.shadow_bn). Left out, and counted: for (c) the validations where the predicted lag still
gives more than 5 % weight to where it started, (1 − m)^(s − s_first) > 0.05 (it starts from the
measured lag at the run's first validation, whose path before is unknown); for (d) those in an
EMA's own warm-up, (1 − m)^n > 0.05 after n batches (torch's start, mean 0 and var 1, still
weighs, and the variance's lag, which bn_lag_rms does not measure, with it). "all" pools a run's
stages before its ratio or slope.
Intervals come from analysis.stats and treat runs (seeds, arms) as the independent draws: points
within a run are correlated, so a pooled fit's n (points) is reported beside, never instead of,
the runs' n.
"""

from __future__ import annotations

import math

from runner.analysis.stats import mean_ci, ratio_of_means, regression

WARM_WEIGHT = 0.05  # an EMA is in its warm-up while more than this weight sits on its start value


def in_warmup(step: float, momentum: float, weight: float = WARM_WEIGHT) -> bool:
    """(1 − m)^s > weight: the running average still leans on its initial value."""
    return (1 - momentum) ** step > weight


def _num(x) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


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


def _window(windows: dict | None, run: str) -> tuple[float, float]:
    return (windows or {}).get(run, (-math.inf, math.inf))


def link_a(runs: dict[str, list[dict]], stages: list[str], windows: dict | None = None) -> dict:
    """(a) per stage and "all": measured angular_update_step/<stage> over angular_update_step_pred,
    the log points with lo <= step < hi of each run's window ({run: (lo, hi)}; none: all)."""
    pairs = {stage: {} for stage in [*stages, "all"]}
    left_out = 0
    for run, recs in runs.items():
        lo, hi = _window(windows, run)
        for stage in stages:
            pairs[stage][run] = []
        pairs["all"][run] = []
        for r in recs:
            x = _num(r.get("angular_update_step_pred"))
            if x is None:
                continue
            inside = lo <= r.get("step", -1) < hi
            for stage in stages:
                if (y := _num(r.get(f"angular_update_step/{stage}"))) is None:
                    continue
                if not inside:
                    left_out += 1
                    continue
                pairs[stage][run].append((y, x))
                pairs["all"][run].append((y, x))
    out = {stage: ratio_across_runs(p) for stage, p in pairs.items()}
    out["all"]["left_out"] = left_out
    return out


def mean_between(records: list[dict], key: str, lo: float, hi: float) -> float | None:
    """The mean of `key` over the records with lo < step ≤ hi."""
    inside = [_num(r.get(key)) for r in records if lo < r.get("step", -1) <= hi]
    vals = [v for v in inside if v is not None]
    return sum(vals) / len(vals) if vals else None


def link_b(runs: dict[str, list[dict]], stages: list[str]) -> dict:
    """(b) per stage and "all": log drift against log mean step angle between consecutive
    validations (slope, R²), and the drift per radian of rotation (ratio of means)."""
    logs = {stage: {} for stage in [*stages, "all"]}
    ratios = {stage: {} for stage in [*stages, "all"]}
    for run, recs in runs.items():
        logs["all"][run], ratios["all"][run] = [], []
        for stage in stages:
            vals = [r for r in recs if _num(r.get(f"bn_drift_mu/{stage}")) is not None]
            pairs = []
            for prev, r in zip(vals, vals[1:]):
                angle = mean_between(recs, f"angular_update_step/{stage}", prev["step"], r["step"])
                drift = r[f"bn_drift_mu/{stage}"]
                if angle and angle > 0 and drift > 0:
                    pairs.append((drift, angle))
            logs[stage][run] = [(math.log(a), math.log(d)) for d, a in pairs]
            ratios[stage][run] = pairs
            logs["all"][run] += logs[stage][run]
            ratios["all"][run] += pairs
    return {
        stage: {
            "log_log": slope_across_runs(logs[stage]),
            "per_radian": ratio_across_runs(ratios[stage]),
        }
        for stage in logs
    }


def first_step(records: list[dict], key: str) -> float | None:
    """The step of the first record that has `key`."""
    return min((r["step"] for r in records if _num(r.get(key)) is not None), default=None)


def lag_point(r: dict, sfx: str, stage: str) -> tuple[float, float] | None:
    """(measured RMS lag, √(pred² + noise² + ref²)) of one validation, set and stage."""
    y = _num(r.get(f"bn_lag_rms{sfx}/{stage}"))
    pred = _num(r.get(f"bn_lag_pred_rms{sfx}/{stage}"))
    if y is None or pred is None:
        return None
    noise = _num(r.get(f"bn_noise_rms{sfx}/{stage}")) or 0.0
    ref = _num(r.get(f"bn_ref_noise_rms/{stage}")) or 0.0
    return y, math.sqrt(pred**2 + noise**2 + ref**2)


def link_c(runs: dict[str, list[dict]], stages: list[str], momenta: dict[str, dict]) -> dict:
    """(c) per stage and "all" and per statistics set (momenta: {run: {"" or "@m": m}}), and over
    all sets ("all*"): measured RMS lag over √(pred² + noise² + ref²); the validations whose
    prediction still leans on its start are left out and counted (per set; "all*": in all)."""
    pairs: dict[str, dict] = {}
    left: dict[str, int] = {}
    for run, recs in runs.items():
        start = first_step(recs, "bn_lag_rms")
        for sfx, m in momenta[run].items():
            for r in recs:
                points = {s: lag_point(r, sfx, s) for s in stages}
                if not any(points.values()):
                    continue
                if in_warmup(r["step"] - start, m):
                    left[sfx] = left.get(sfx, 0) + 1
                    continue
                for stage, point in points.items():
                    for key in (f"{stage}{sfx}", f"all{sfx}", "all*"):
                        if point is not None:
                            pairs.setdefault(key, {}).setdefault(run, []).append(point)
    out = {}
    for key, by_run in pairs.items():
        sfx = key.split("@", 1)[1] if "@" in key else ""
        out[key] = ratio_across_runs(by_run)
        out[key]["warmup_left_out"] = (
            sum(left.values()) if key == "all*" else left.get(f"@{sfx}" if sfx else "", 0)
        )
    return out


def link_d(runs: dict[str, list[dict]], momenta: dict[str, dict]) -> dict:
    """(d) log(val_loss<@m>/val_loss_recal_aug) against bn_lag_rms<@m>, every statistics set
    (momenta: {run: {"" or "@m": m}}) at every validation past its EMA's warm-up; the slope's
    interval across runs and the pooled fit."""
    pairs, left_out = {}, 0
    for run, recs in runs.items():
        pairs[run] = []
        for r in recs:
            ref = _num(r.get("val_loss_recal_aug"))
            for sfx, m in momenta[run].items():
                loss = _num(r.get(f"val_loss_shadow{sfx}" if sfx else "val_loss_running"))
                lag = _num(r.get(f"bn_lag_rms{sfx}"))
                if None in (ref, loss, lag) or ref <= 0 or loss <= 0:
                    continue
                seen = r["step"] if not sfx else _num(r.get("bn_shadow_batches")) or r["step"]
                if in_warmup(seen, m):
                    left_out += 1
                    continue
                pairs[run].append((lag, math.log(loss / ref)))
    return {**slope_across_runs(pairs), "warmup_left_out": left_out}


def lag_by_momentum(records: list[dict], momenta: dict[str, float]) -> dict[str, dict]:
    """Per statistics set of one run, the means over its validations past the EMA's warm-up of the
    measured and predicted RMS lag, its noise floor and the loss gap log(val_loss<@m>/
    val_loss_recal_aug): lag against momentum from one run."""
    out = {}
    for sfx, m in momenta.items():
        rows = []
        for r in records:
            seen = r.get("step", 0) if not sfx else _num(r.get("bn_shadow_batches")) or r["step"]
            if _num(r.get(f"bn_lag_rms{sfx}")) is None or in_warmup(seen, m):
                continue
            loss = _num(r.get(f"val_loss_shadow{sfx}" if sfx else "val_loss_running"))
            ref = _num(r.get("val_loss_recal_aug"))
            gap = math.log(loss / ref) if loss and ref and loss > 0 and ref > 0 else None
            rows.append(
                (
                    r[f"bn_lag_rms{sfx}"],
                    _num(r.get(f"bn_lag_pred_rms{sfx}")),
                    _num(r.get(f"bn_noise_rms{sfx}")),
                    gap,
                )
            )
        names = ("lag", "lag_pred", "noise", "loss_gap")
        out[sfx] = {k: _mean([row[i] for row in rows]) for i, k in enumerate(names)}
        out[sfx]["momentum"], out[sfx]["n"] = m, len(rows)
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def statistics_sets(records: list[dict], bn_momentum: float | None) -> dict[str, float]:
    """{"": the running statistics' momentum, "@m": m of every shadow set the records hold}."""
    shadows = {k.split("@", 1)[1] for r in records for k in r if k.startswith("val_loss_shadow@")}
    out = {} if bn_momentum is None else {"": float(bn_momentum)}
    return out | {f"@{m}": float(m) for m in sorted(shadows, key=float)}


def chain_stages(records: list[dict]) -> list[str]:
    """The stages with a measured step angle or a lag, in first-seen order."""
    seen = {}
    for r in records:
        for k in r:
            if k.startswith(("angular_update_step/", "bn_lag_rms/")):
                seen.setdefault(k.split("/", 1)[1], None)
    return list(seen)


def middle_third(records: list[dict], epochs_total: float | None) -> tuple[float, float]:
    """The steps [T/3, 2T/3) of a run's schedule (T its epochs, in steps via the records' own
    step/epoch), where link (a) looks: past the approach to equilibrium, before the end of a
    decaying schedule."""
    spe = next((r["step"] / r["epoch"] for r in records if (_num(r.get("epoch")) or 0) > 0), None)
    if spe is None:
        return (-math.inf, math.inf)
    total = (epochs_total or max(r["epoch"] for r in records if _num(r.get("epoch")))) * spe
    return (total / 3, 2 * total / 3)


def chain_fits(runs: list[dict]) -> dict | None:
    """Every link's fit over the completed runs that recorded the chain (analysis.runs: each run's
    `chain_records`, `hparams`), with the stages and the runs behind them; None without any."""
    done = [r for r in runs if r["status"] == "completed" and r.get("chain_records")]
    if not done:
        return None
    recs = {r["path"]: r["chain_records"] for r in done}
    stages = list(dict.fromkeys(s for v in recs.values() for s in chain_stages(v)))
    momenta = {
        r["path"]: statistics_sets(r["chain_records"], _num(r["hparams"].get("model.bn_momentum")))
        for r in done
    }
    windows = {
        r["path"]: middle_third(r["chain_records"], _num(r["hparams"].get("epochs"))) for r in done
    }
    return {
        "stages": stages,
        "runs": len(done),
        "a": link_a(recs, stages, windows),
        "b": link_b(recs, stages),
        "c": link_c(recs, stages, momenta),
        "d": link_d(recs, momenta),
        "lags": {r["path"]: lag_by_momentum(r["chain_records"], momenta[r["path"]]) for r in done},
    }
