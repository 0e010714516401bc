"""The report's answer to "why does strong decoupled decay make the validation loss oscillate?":
a verdict that opens report.md, one sentence per link of the chain, each with its number, its 95 %
interval and the runs behind it, then the link-by-link tables (analysis.chain computes every fit;
docs/reports.md says what each means and its limits).
"""

from __future__ import annotations

from runner.analysis.chain import chain_fits
from runner.analysis.runs import fmt
from runner.analysis.tables import config_label, md_table

LINKS = {
    "a": "decay → rotation",
    "b": "rotation → drift",
    "c": "drift → lag",
    "d": "lag → loss",
}
NOT_MEASURED = {
    "a": "no run recorded the angle per step with a prediction (probes.step_angle; Adam + L2 has "
    "no prediction)",
    "b": "no run recorded the drift of the exact statistics (probes.shadow_bn with "
    "trainer.bn_recalibrate ≠ 0) beside the angle per step",
    "c": "no run recorded a predicted lag past its warm-up (probes.shadow_bn with "
    "trainer.bn_recalibrate ≠ 0, two or more validations)",
    "d": "no run recorded lags and losses with an augmented reference past the EMA's warm-up "
    "(probes.shadow_bn with trainer.bn_recalibrate ≠ 0)",
}


def interval(ci: dict, digits: int = 3, unit: str = "runs") -> str:
    """'0.95 (95 % interval 0.91 to 0.99, n = 12 runs)'; a single run has no interval."""
    if ci.get("mean") is None:
        return "not measured"
    m = f"{ci['mean']:.{digits}g}"
    if ci.get("lo") is None:
        return f"{m} (n = {ci['n']} {unit[:-1] if ci['n'] == 1 else unit}: no interval)"
    lo, hi = f"{ci['lo']:.{digits}g}", f"{ci['hi']:.{digits}g}"
    return f"{m} (95 % interval {lo} to {hi}, n = {ci['n']} {unit})"


def _ci_cell(ci: dict) -> str:
    if ci.get("mean") is None:
        return "-"
    m = fmt(ci["mean"], 3)
    return m if ci.get("lo") is None else f"{m} [{fmt(ci['lo'], 3)}, {fmt(ci['hi'], 3)}]"


def sentences(fits: dict) -> dict[str, str | None]:
    """One sentence per link, None where the fit has no number."""
    a, b, c, d = fits["a"]["all"], fits["b"]["all"], fits["c"].get("all*"), fits["d"]
    out = dict.fromkeys(LINKS)
    if a["across_runs"]["mean"] is not None:
        out["a"] = (
            f"the measured angle per step of the scale-invariant weights is "
            f"{interval(a['across_runs'])} × Kosson et al.'s prediction √(2d(1 − β)/(1 + β)), "
            f"over {a['n_points']} log points in the middle third of each run ({a['left_out']} "
            f"outside it left out)."
        )
    per_rad, slope = b["per_radian"]["across_runs"], b["log_log"]["across_runs"]
    if per_rad["mean"] is not None:
        r2 = b["log_log"]["pooled"]["r2"]
        out["b"] = (
            f"the exact BatchNorm means move {interval(per_rad)} standard deviations per radian "
            f"the weights turn; log-log slope {interval(slope)}"
            + (f", pooled R² {r2:.2f}" if r2 is not None else "")
            + f" over {b['per_radian']['n_points']} validations."
        )
    if c and c["across_runs"]["mean"] is not None:
        out["c"] = (
            f"the running and shadow statistics lag {interval(c['across_runs'])} × what the drift "
            f"predicts with the batch-noise and reference floors added, over {c['n_points']} "
            f"stage × set × validation points ({c['warmup_left_out']} set-validations left out "
            f"while the prediction still leaned on its start)."
        )
    if d["across_runs"]["mean"] is not None:
        r2 = d["pooled"]["r2"]
        out["d"] = (
            f"each standard deviation of lag in the BatchNorm means raises the validation "
            f"log-loss by {interval(d['across_runs'])} against the zero-lag reference"
            + (f", pooled R² {r2:.2f}" if r2 is not None else "")
            + f" over {d['pooled']['n']} set-validations ({d['warmup_left_out']} in an EMA's "
            f"warm-up left out)."
        )
    return out


def verdict_section(fits: dict | None) -> str:
    """## Verdict: a sentence per link; empty unless some run measured a link past (a) (the angle
    per step is on by default, so (a) alone is any run's, not a study's; the chain section has
    it)."""
    said = sentences(fits) if fits is not None else {}
    if not any(said.get(k) for k in "bcd"):
        return ""
    lines = [
        f"- **{LINKS[k]}** ({k}): {text}"
        if text
        else f"- **{LINKS[k]}** ({k}): not measured: {NOT_MEASURED[k]}."
        for k, text in said.items()
    ]
    head = (
        f"Each link of the chain from strong decay to the oscillation, measured in "
        f"{fits['runs']} completed runs; every interval treats runs as the independent draws "
        f"(docs/reports.md#the-chain-link-by-link)."
    )
    return "## Verdict\n\n" + head + "\n\n" + "\n".join(lines) + "\n"


def chain_section(fits: dict | None, groups: list[dict]) -> str:
    """## The chain, link by link: each link per stage (across runs) and per configuration."""
    if fits is None:
        return ""
    parts = [
        "## The chain, link by link\n",
        "Each cell: the mean over runs with its 95 % interval in brackets; points are the log "
        "points or validations behind it (correlated within a run, so never the n of the "
        "interval).\n",
        _stage_table(fits),
        _set_table(fits),
        _config_table(groups),
        _lag_table(fits, groups),
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _stage_table(fits: dict) -> str:
    header = ["stage", "(a) angle / predicted", "(b) drift per radian", "(b) log-log slope"]
    header += ["(c) lag / predicted (running)", "runs", "points (a)"]
    rows = []
    for stage in [*fits["stages"], "all"]:
        a, b = fits["a"].get(stage), fits["b"].get(stage)
        c = fits["c"].get(stage)
        rows.append(
            [
                stage,
                _ci_cell(a["across_runs"]) if a else "-",
                _ci_cell(b["per_radian"]["across_runs"]) if b else "-",
                _ci_cell(b["log_log"]["across_runs"]) if b else "-",
                _ci_cell(c["across_runs"]) if c else "-",
                str(a["across_runs"]["n"]) if a else "-",
                str(a["n_points"]) if a else "-",
            ]
        )
    return "### Per stage\n\n" + md_table(header, rows) + "\n"


def _set_table(fits: dict) -> str:
    """(c) per statistics set, all stages pooled, and (d) once."""
    keys = [k for k in fits["c"] if k.startswith("all") and k != "all*"]
    if not keys:
        return ""
    header = ["statistics", "(c) lag / predicted", "runs", "points", "warm-up left out"]
    rows = []
    for k in keys:
        fit = fits["c"][k]
        name = "running" if k == "all" else f"shadow m = {k.split('@', 1)[1]}"
        ci = fit["across_runs"]
        rows.append(
            [name, _ci_cell(ci), str(ci["n"]), str(fit["n_points"]), str(fit["warmup_left_out"])]
        )
    d = fits["d"]
    tail = (
        f"(d) log(loss / zero-lag loss) per unit of lag: {_ci_cell(d['across_runs'])} across "
        f"{d['across_runs']['n']} runs; pooled slope {fmt(d['pooled']['slope'], 3)}, R² "
        f"{fmt(d['pooled']['r2'], 2)} over {d['pooled']['n']} points."
    )
    return "### Per set of statistics\n\n" + md_table(header, rows) + "\n\n" + tail + "\n"


def _config_table(groups: list[dict]) -> str:
    """Each link across the seeds of each configuration (arm)."""
    header = ["configuration", "runs", "(a) angle / predicted", "(b) drift per radian"]
    header += ["(c) lag / predicted", "(d) loss per lag"]
    rows = []
    for g in groups:
        fits = chain_fits(g["runs"])
        if fits is None:
            continue
        c = fits["c"].get("all*")
        rows.append(
            [
                config_label(g),
                str(fits["runs"]),
                _ci_cell(fits["a"]["all"]["across_runs"]),
                _ci_cell(fits["b"]["all"]["per_radian"]["across_runs"]),
                _ci_cell(c["across_runs"]) if c else "-",
                _ci_cell(fits["d"]["across_runs"]),
            ]
        )
    return "### Per configuration\n\n" + md_table(header, rows) + "\n" if rows else ""


def _lag_table(fits: dict, groups: list[dict]) -> str:
    """Lag against momentum from one run: per configuration and statistics set, the seed means of
    the measured lag, its prediction, its noise floor and the loss gap it makes."""
    from runner.analysis.stats import mean_ci

    header = ["configuration", "momentum", "lag", "predicted lag", "noise floor", "log loss gap"]
    rows = []
    for g in groups:
        per_run = [fits["lags"][r["path"]] for r in g["runs"] if r["path"] in fits["lags"]]
        sets = list(dict.fromkeys(k for lags in per_run for k in lags))
        for sfx in sets:
            rows_of = [lags[sfx] for lags in per_run if sfx in lags]
            cells = [
                _ci_cell(mean_ci([x[k] for x in rows_of]))
                for k in ("lag", "lag_pred", "noise", "loss_gap")
            ]
            m = rows_of[0]["momentum"]
            name = f"{fmt(m)} (running)" if not sfx else fmt(m)
            rows.append([config_label(g), name, *cells])
    if not rows:
        return ""
    return (
        "### Lag against momentum\n\nPer run the mean over its validations past each EMA's "
        "warm-up, in standard deviations of the exact statistics; then the mean over runs.\n\n"
        + md_table(header, rows)
        + "\n"
    )
