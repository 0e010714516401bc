"""Rotational equilibrium over a run's records: the middle-third means of the figures the
equilibrium, step_angle and l2_terms probes recorded at log points (runner.probes.equilibrium,
.rotation and .l2_terms for what each figure is and its formula)."""

from __future__ import annotations

import math

# the keys that make a log record one of these probes'
PROBE_KEYS = ("weight_norm_eq/", "angular_diffusion/", "angular_update_step/", "l2_grad_ratio/")


def equilibrium_block(records: list[dict], epochs_total: float | None) -> dict:
    """Per stage, over the log records of the schedule's middle third [T/3, 2T/3) (past the
    transient, before a decaying lr makes the equilibrium itself move faster than it settles):
        norm_ratio/<stage>       mean of weight_norm_si/<stage> / weight_norm_eq/<stage>
        step_ratio/<stage>       mean of angular_update_step/<stage> / angular_update_step_pred
        diffusion_ratio/<stage>  mean of angular_diffusion/<stage> / angular_diffusion_pred
        l2_update_ratio/<stage>, l2_dominant_share/<stage>, l2_grad_ratio/<stage>   their means
                                 (Adam + L2)
    and over the stages with scale-invariant kernels (all but the head) the means of
    angular_update_step_mid and _pred_mid, angular_diffusion_mid and _pred_mid (None where a run
    has none). Without T the window is the middle third of the logged epochs."""
    logs = [r for r in records if isinstance(r, dict) and _finite(r.get("epoch"))]
    logs = [r for r in logs if any(k.startswith(PROBE_KEYS) for k in r)]
    T = epochs_total or max((r["epoch"] for r in logs), default=0)
    mid = [r for r in logs if T / 3 <= r["epoch"] < 2 * T / 3]
    stages = sorted({k.split("/", 1)[1] for r in mid for k in r if k.startswith("weight_norm/")})
    out = {}
    for stage in stages:
        out[f"norm_ratio/{stage}"] = _mean_ratio(
            mid, f"weight_norm_si/{stage}", f"weight_norm_eq/{stage}"
        )
        out[f"step_ratio/{stage}"] = _mean_ratio(
            mid, f"angular_update_step/{stage}", "angular_update_step_pred"
        )
        out[f"diffusion_ratio/{stage}"] = _mean_ratio(
            mid, f"angular_diffusion/{stage}", "angular_diffusion_pred"
        )
        for key in ("l2_grad_ratio", "l2_update_ratio", "l2_dominant_share"):
            vals = [r[f"{key}/{stage}"] for r in mid if _finite(r.get(f"{key}/{stage}"))]
            if vals:
                out[f"{key}/{stage}"] = sum(vals) / len(vals)
    for name in ("angular_update_step", "angular_diffusion"):
        out[f"{name}_mid"] = _stage_mean(mid, name)
        preds = [r[f"{name}_pred"] for r in mid if _positive(r.get(f"{name}_pred"))]
        out[f"{name}_pred_mid"] = sum(preds) / len(preds) if preds else None
    return out


def _mean_ratio(records: list[dict], num: str, den: str) -> float | None:
    ratios = [r[num] / r[den] for r in records if _positive(r.get(num)) and _positive(r.get(den))]
    return sum(ratios) / len(ratios) if ratios else None


def _stage_mean(records: list[dict], name: str) -> float | None:
    """The mean over records of the mean over the stages that have `name/<stage>` (the stages
    with scale-invariant kernels)."""
    means = []
    for r in records:
        vals = [v for k, v in r.items() if k.startswith(name + "/") and _finite(v)]
        if vals:
            means.append(sum(vals) / len(vals))
    return sum(means) / len(means) if means else None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _positive(x) -> bool:
    return _finite(x) and x > 0
