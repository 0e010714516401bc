"""Why strong decoupled decay moves BatchNorm: rotational equilibrium (Kosson et al. 2023/24), and the decay's
EMA timescale (Wang & Aitchison 2024).

A weight tensor followed by BatchNorm is scale-invariant: its gradient is orthogonal to θ, so an update Δ grows
‖θ‖² by ‖Δ‖² while the decay shrinks it by ≈ 2·d_t·‖θ‖². The two balance at the equilibrium norm, where θ keeps
turning at a fixed angular speed whatever its size, and the BatchNorm that follows sees its input statistics move
at that speed:
    weight_norm_eq    = lr_t·√(C / (2·d_t))      Adam/AdamW: each of the C values moves by ≈ lr_t per step in a
                                                 random walk (m̂/√v̂ has unit scale), so ‖Δ‖² ≈ lr_t²·C a step
    angular_update_eq = √(2·d̄)                  the random-walk angle per step at equilibrium, for any update
                                                 rule: ‖Δ‖²_eff = 2·d·‖θ‖² ⇒ ‖Δ‖_eff/‖θ‖ = √(2d)
measured as
    rotation          the angle between θ at two consecutive log points, 2·asin(‖θ̂_b − θ̂_a‖/2)
    angular_update    rotation / √k_eff: the per-step angle of a random walk that turns as far in the k steps
                      between them; k_eff = k − 2β(1 − β^k)/(1 − β) + β²(1 − β^{2k})/(1 − β²) + β²(1 − β^k)²/(1 − β²)
                      is the variance of the sum of k momentum-averaged updates (β = Adam's β1 or SGD's momentum)
                      in units of one step's, less than k because the window's last gradients are still in the
                      momentum and earlier ones leak in (k_eff = 16.2 for k = 25, β = 0.9). Updates that keep one
                      direction for many steps make it exceed the prediction
d̄ is the mean d_t over those steps; SGD + L2 shrinks by lr_t·λ₂/(1 − momentum) a step in the long run, which serves
as its d; Adam + L2 has no such shrink (its L2 term is divided by √v̂: core.update_rule) and gets no prediction.

The EMA timescale of the weights is τ = 1/d_t steps: θ_t is an exponential moving average of the updates with that
memory (Wang & Aitchison 2024). `tau_steps` uses the mean d_t of the run, `tau_fraction` = tau_steps / total steps.
"""

from __future__ import annotations

import math

import torch


def angle_between(norm_a: float, norm_b: float, diff_sq: float) -> float | None:
    """The angle between a and b from ‖a‖, ‖b‖ and ‖b − a‖² (precise for small angles, unlike acos of a dot)."""
    if not (norm_a > 0 and norm_b > 0) or not math.isfinite(diff_sq):
        return None
    chord_sq = max(0.0, diff_sq - (norm_a - norm_b) ** 2) / (norm_a * norm_b)  # ‖â − b̂‖²
    return 2 * math.asin(min(1.0, math.sqrt(chord_sq) / 2))


def effective_steps(k: int, beta: float) -> float:
    """k_eff: Var(Σ of k consecutive momentum-averaged updates) / Var(one step's), for independent gradients."""
    if beta <= 0:
        return float(k)
    b2 = beta * beta
    inside = k - 2 * beta * (1 - beta**k) / (1 - beta) + b2 * (1 - beta ** (2 * k)) / (1 - b2)
    return inside + b2 * (1 - beta**k) ** 2 / (1 - b2)


def angular_speed(angle: float | None, steps: int, beta: float = 0.0) -> float | None:
    """angle / √k_eff: the per-step angle of a random walk that turns as far in `steps` momentum-averaged steps."""
    return None if angle is None or steps <= 0 else angle / math.sqrt(effective_steps(steps, beta))


def predicted_angular_speed(d_mean: float | None) -> float | None:
    """√(2·d̄): the random-walk angle per step of a scale-invariant tensor at equilibrium."""
    return math.sqrt(2 * d_mean) if d_mean and d_mean > 0 else None


def equilibrium_norm(lr_t: float, d_t: float, n_values: int) -> float | None:
    """lr_t·√(C/(2·d_t)): the equilibrium ‖θ‖ of C scale-invariant Adam-updated values under a per-step shrink d_t."""
    return lr_t * math.sqrt(n_values / (2 * d_t)) if d_t > 0 and lr_t > 0 else None


def effective_decay(algorithm: str, decay: float, lr_t: float, l2: float, momentum: float) -> float | None:
    """The per-step shrink the equilibrium argument uses: d_t for decoupled decay; lr_t·λ₂/(1 − momentum) for SGD +
    L2; None for Adam + L2 alone (no shrink) or no regularization."""
    if decay > 0:
        return decay
    if l2 > 0 and algorithm == "sgd":
        return lr_t * l2 / (1 - momentum)
    return None


def ema_timescale(decays: list[float], total_steps: int) -> dict:
    """tau_steps = 1/mean d_t over the run's steps, tau_fraction = tau_steps/total_steps; None without decay."""
    d = decays[:total_steps]
    mean = sum(d) / len(d) if d else 0.0
    if mean <= 0:
        return {"tau_steps": None, "tau_fraction": None}
    return {"tau_steps": 1 / mean, "tau_fraction": 1 / (mean * len(d))}


class Rotation:
    """θ at the previous log point, kept on the device, to measure how far each tensor has turned since."""

    def __init__(self):
        self.prev: list[torch.Tensor] | None = None

    @torch.no_grad()
    def diff_sq(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """Per-tensor ‖θ − θ_prev‖² as one device tensor (None at the first call), then θ becomes θ_prev."""
        if not params:
            return None
        out = None
        if self.prev is not None:
            out = torch.stack(torch._foreach_norm(torch._foreach_sub(params, self.prev))).float().pow(2)
            torch._foreach_copy_(self.prev, params)
        else:
            self.prev = [p.detach().clone() for p in params]
        return out


def log_point_figures(
    stage_norms: dict[str, float],
    diff_sq: dict[str, float],
    prev_norms: dict[str, float] | None,
    steps: int,
    lrs: list[float],
    decays: list[float],
    sizes: dict[str, int],
    rule: dict,
) -> dict:
    """The equilibrium figures of one log point (module docstring), from the stage norms now and at the previous
    log point `steps` steps ago, ‖θ − θ_prev‖² per stage, and the lr_t and d_t of the steps in between.
    rule: {"algorithm", "l2", "momentum"} of the optimizer, momentum being Adam's β1 or SGD's momentum."""
    eff = [effective_decay(rule["algorithm"], d, lr, rule["l2"], rule["momentum"]) for lr, d in zip(lrs, decays)]
    d_mean = sum(e for e in eff if e) / len(eff) if eff and all(eff) else None
    out = {}
    if d_mean is not None:
        out["angular_update_eq"] = predicted_angular_speed(d_mean)
    for stage, norm in stage_norms.items():
        if prev_norms is not None and stage in diff_sq and stage in prev_norms:
            angle = angle_between(prev_norms[stage], norm, diff_sq[stage])
            if angle is not None:
                speed = angular_speed(angle, steps, rule["momentum"])
                out[f"rotation/{stage}"], out[f"angular_update/{stage}"] = angle, speed
        if rule["algorithm"] == "adam" and decays and decays[-1] > 0 and stage in sizes:
            out[f"weight_norm_eq/{stage}"] = equilibrium_norm(lrs[-1], decays[-1], sizes[stage])
    if any(k.startswith("rotation/") for k in out):
        out["rotation_steps"] = steps
    return {k: v for k, v in out.items() if v is not None}


def run_timescale(lrs: list[float], decays: list[float], total: int, rule: dict) -> dict:
    """tau_steps and tau_fraction of a run's plan (its lr_t and d_t tables), on the effective shrink: d_t, or
    lr_t·λ₂/(1 − momentum) for SGD + L2 (None for Adam + L2, which has none)."""
    eff = [effective_decay(rule["algorithm"], d, lr, rule["l2"], rule["momentum"]) or 0.0 for lr, d in zip(lrs, decays)]
    return ema_timescale(eff, total)


def equilibrium_block(records: list[dict], epochs_total: float | None) -> dict:
    """Per stage, over the log records of the schedule's middle third [T/3, 2T/3) (past the transient, before a
    decaying lr makes the equilibrium itself move faster than τ): norm_ratio/<stage> = mean of
    weight_norm/<stage> / weight_norm_eq/<stage>, angular_ratio/<stage> = mean of angular_update/<stage> /
    angular_update_eq; for Adam + L2 also the means of l2_grad_ratio/<stage> and l2_sign_fraction/<stage>;
    angular_update_mid = mean of angular_update/<stage> over the stages but the head and those records, and
    angular_update_eq_mid = mean angular_update_eq over them (None where a run has none). Without T
    the window is the middle third of the logged epochs."""
    logs = [r for r in records if isinstance(r, dict) and isinstance(r.get("epoch"), (int, float))]
    logs = [r for r in logs if any(k.startswith(("weight_norm_eq/", "angular_update/", "l2_grad_ratio/")) for k in r)]
    T = epochs_total or max((r["epoch"] for r in logs), default=0)
    mid = [r for r in logs if T / 3 <= r["epoch"] < 2 * T / 3]
    out, stages = {}, sorted({k.split("/", 1)[1] for r in mid for k in r if k.startswith("weight_norm/")})
    for stage in stages:
        norms = [r[f"weight_norm/{stage}"] / r[f"weight_norm_eq/{stage}"] for r in mid if _both(r, stage)]
        speeds = [r[f"angular_update/{stage}"] / r["angular_update_eq"] for r in mid
                  if _positive(r.get(f"angular_update/{stage}")) and _positive(r.get("angular_update_eq"))]  # fmt: skip
        out[f"norm_ratio/{stage}"] = sum(norms) / len(norms) if norms else None
        out[f"angular_ratio/{stage}"] = sum(speeds) / len(speeds) if speeds else None
        for key in ("l2_grad_ratio", "l2_sign_fraction"):  # Adam + L2 (core.update_rule.l2_stage_figures)
            vals = [r[f"{key}/{stage}"] for r in mid if _finite(r.get(f"{key}/{stage}"))]
            if vals:
                out[f"{key}/{stage}"] = sum(vals) / len(vals)
    body = [s for s in stages if s != "head"]  # the stages BatchNorm follows
    speeds = [sum(r[f"angular_update/{s}"] for s in body) / len(body) for r in mid
              if body and all(_finite(r.get(f"angular_update/{s}")) for s in body)]  # fmt: skip
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
