"""Rotational equilibrium over a run's records: the middle-third means of the figures the
equilibrium and l2_terms probes recorded at log points (runner.probes.equilibrium for what each
figure is and its formula)."""

from __future__ import annotations

import math


def equilibrium_block(records: list[dict], epochs_total: float | None) -> dict:
    """Per stage, over the log records of the schedule's middle third [T/3, 2T/3) (past the
    transient, before a decaying lr makes the equilibrium itself move faster than τ):
    norm_ratio/<stage> = mean of weight_norm/<stage> / weight_norm_eq/<stage>, angular_ratio/<stage>
    = mean of angular_update/<stage> / angular_update_eq; for Adam + L2 also the means of
    l2_grad_ratio/<stage> and l2_sign_fraction/<stage>; angular_update_mid = mean of
    angular_update/<stage> over the stages but the head and those records, and angular_update_eq_mid
    = mean angular_update_eq over them (None where a run has none). Without T the window is the
    middle third of the logged epochs."""
    logs = [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), (int, float))]
    logs = [
        r
        for r in logs
        if any(k.startswith(("weight_norm_eq/", "angular_update/", "l2_grad_ratio/")) for k in r)
    ]
    T = epochs_total or max((r["epoch"] for r in logs), default=0)
    mid = [r for r in logs if T / 3 <= r["epoch"] < 2 * T / 3]
    out, stages = (
        {},
        sorted({k.split("/", 1)[1] for r in mid for k in r if k.startswith("weight_norm/")}),
    )
    for stage in stages:
        norms = [
            r[f"weight_norm/{stage}"] / r[f"weight_norm_eq/{stage}"] for r in mid if _both(r, stage)
        ]
        speeds = [
            r[f"angular_update/{stage}"] / r["angular_update_eq"]
            for r in mid
            if _positive(r.get(f"angular_update/{stage}")) and _positive(r.get("angular_update_eq"))
        ]
        out[f"norm_ratio/{stage}"] = sum(norms) / len(norms) if norms else None
        out[f"angular_ratio/{stage}"] = sum(speeds) / len(speeds) if speeds else None
        # Adam + L2 (core.update_rule.l2_stage_figures)
        for key in (
            "l2_grad_ratio",
            "l2_sign_fraction",
        ):
            vals = [r[f"{key}/{stage}"] for r in mid if _finite(r.get(f"{key}/{stage}"))]
            if vals:
                out[f"{key}/{stage}"] = sum(vals) / len(vals)
    body = [s for s in stages if s != "head"]  # the stages BatchNorm follows
    speeds = [
        sum(r[f"angular_update/{s}"] for s in body) / len(body)
        for r in mid
        if body and all(_finite(r.get(f"angular_update/{s}")) for s in body)
    ]
    out["angular_update_mid"] = sum(speeds) / len(speeds) if speeds else None
    eq = [r["angular_update_eq"] for r in mid if _positive(r.get("angular_update_eq"))]
    out["angular_update_eq_mid"] = sum(eq) / len(eq) if eq else None
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _both(r: dict, stage: str) -> bool:
    return _positive(r.get(f"weight_norm/{stage}")) and _positive(r.get(f"weight_norm_eq/{stage}"))
