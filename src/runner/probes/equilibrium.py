"""Why strong decoupled decay moves BatchNorm: rotational equilibrium (Kosson et al. 2023/24).

A weight tensor followed by BatchNorm is scale-invariant: its gradient is orthogonal to θ, so an
update Δ grows ‖θ‖² by ‖Δ‖² while the decay shrinks it by ≈ 2·d_t·‖θ‖². The two balance at the
equilibrium norm, where θ keeps turning at a fixed angular speed whatever its size, and the
BatchNorm that follows sees its input statistics move at that speed:
    weight_norm_eq    = lr_t·√(C / (2·d_t))      Adam/AdamW: each of the C values moves by ≈ lr_t
                                                 per step in a random walk (m̂/√v̂ has unit scale)
    angular_update_eq = √(2·d̄)                  the random-walk angle per step at equilibrium:
                                                 ‖Δ‖²_eff = 2·d·‖θ‖² ⇒ ‖Δ‖_eff/‖θ‖ = √(2d)
measured at each log point, per stage, as
    weight_norm/<stage>   ‖θ‖ of the stage's regularized tensors
    rotation/<stage>      the angle between θ at two consecutive log points,
                          2·asin(‖θ̂_b − θ̂_a‖/2)
    angular_update/<stage>  rotation / √k_eff: the per-step angle of a random walk that turns as
                          far in the k steps between them; k_eff = k − 2β(1 − β^k)/(1 − β)
                          + β²(1 − β^{2k})/(1 − β²) + β²(1 − β^k)²/(1 − β²) is the variance of the
                          sum of k momentum-averaged updates (β = Adam's β1 or SGD's momentum) in
                          units of one step's (k_eff = 16.2 for k = 25, β = 0.9). Updates that keep
                          one direction for many steps make it exceed the prediction
d̄ is the mean effective shrink over those steps (core.step_plan.effective_decay); Adam + L2 has
none and gets no prediction. C counts every regularized value of the stage.
"""

from __future__ import annotations

import math

import torch

from runner.core.step_plan import effective_decay
from runner.probes import LogPoint, Probe, Subject


def angle_between(norm_a: float, norm_b: float, diff_sq: float) -> float | None:
    """The angle between a and b from ‖a‖, ‖b‖ and ‖b − a‖² (precise for small angles, unlike
    acos of a dot product)."""
    if not (norm_a > 0 and norm_b > 0) or not math.isfinite(diff_sq):
        return None
    chord_sq = max(0.0, diff_sq - (norm_a - norm_b) ** 2) / (norm_a * norm_b)  # ‖â − b̂‖²
    return 2 * math.asin(min(1.0, math.sqrt(chord_sq) / 2))


def effective_steps(k: int, beta: float) -> float:
    """k_eff: Var(Σ of k consecutive momentum-averaged updates) / Var(one step's), for
    independent gradients."""
    if beta <= 0:
        return float(k)
    b2 = beta * beta
    inside = k - 2 * beta * (1 - beta**k) / (1 - beta) + b2 * (1 - beta ** (2 * k)) / (1 - b2)
    return inside + b2 * (1 - beta**k) ** 2 / (1 - b2)


def angular_speed(angle: float | None, steps: int, beta: float = 0.0) -> float | None:
    """angle / √k_eff: the per-step angle of a random walk that turns as far in `steps`
    momentum-averaged steps."""
    return None if angle is None or steps <= 0 else angle / math.sqrt(effective_steps(steps, beta))


def predicted_angular_speed(d_mean: float | None) -> float | None:
    """√(2·d̄): the random-walk angle per step of a scale-invariant tensor at equilibrium."""
    return math.sqrt(2 * d_mean) if d_mean and d_mean > 0 else None


def equilibrium_norm(lr_t: float, d_t: float, n_values: int) -> float | None:
    """lr_t·√(C/(2·d_t)): the equilibrium ‖θ‖ of C scale-invariant Adam-updated values under a
    per-step shrink d_t."""
    return lr_t * math.sqrt(n_values / (2 * d_t)) if d_t > 0 and lr_t > 0 else None


class Equilibrium(Probe):
    """The figures of the module docstring at every log point; between log points it keeps θ, the
    stage norms and the step of the previous one (saved with each checkpoint)."""

    name = "equilibrium"

    def __init__(self, subject: Subject):
        self.opt, self.plan, self.stages = subject.opt, subject.plan, subject.stages
        params = self.opt.regularized
        self.sizes = {
            s: sum(params[i].numel() for i in idx.tolist()) for s, idx in self.stages.items()
        }
        self.prev: list[torch.Tensor] | None = None  # θ at the previous log point
        self.prev_norms: dict[str, float] | None = None
        self.prev_step: int | None = None

    @torch.no_grad()
    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        """Per stage ‖θ‖ and ‖θ − θ_prev‖² (one foreach over the tensors), then θ becomes θ_prev."""
        params = self.opt.regularized
        out = {f"weight_norm/{s}": point.weight_norms[idx].norm() for s, idx in self.stages.items()}
        if self.prev is not None:
            diff = torch.stack(torch._foreach_norm(torch._foreach_sub(params, self.prev)))
            diff_sq = diff.float().pow(2)
            out.update({f"diff_sq/{s}": diff_sq[idx].sum() for s, idx in self.stages.items()})
            torch._foreach_copy_(self.prev, params)
        elif params:
            self.prev = [p.detach().clone() for p in params]
        return out

    def read_log(self, values: dict[str, float], point: LogPoint) -> dict[str, float]:
        norms = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("weight_norm/")}
        diff = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("diff_sq/")}
        first = self.prev_step if self.prev_step is not None else 0  # a fresh run: from its start
        out = {f"weight_norm/{s}": v for s, v in norms.items()}
        out.update(self._figures(norms, diff, first, point.step))
        self.prev_norms, self.prev_step = norms, point.step
        return {k: v for k, v in out.items() if v is not None}

    def _figures(self, norms: dict, diff: dict, first: int, last: int) -> dict:
        """The figures of steps (first, last]: the plan's lr_t and d_t of those steps."""
        lrs, decays = self.plan.lr[first:last], self.plan.d[first:last]
        rule = (self.opt.algorithm, self.plan.l2, self.opt.momentum)
        eff = [effective_decay(rule[0], d, lr, rule[1], rule[2]) for lr, d in zip(lrs, decays)]
        d_mean = sum(eff) / len(eff) if eff and all(eff) else None
        out = {"angular_update_eq": predicted_angular_speed(d_mean)}
        for stage, norm in norms.items():
            if self.prev_norms is not None and stage in diff and stage in self.prev_norms:
                angle = angle_between(self.prev_norms[stage], norm, diff[stage])
                if angle is not None:
                    out[f"rotation/{stage}"] = angle
                    out[f"angular_update/{stage}"] = angular_speed(angle, last - first, rule[2])
            if rule[0] == "adam" and decays and decays[-1] > 0:
                out[f"weight_norm_eq/{stage}"] = equilibrium_norm(
                    lrs[-1], decays[-1], self.sizes[stage]
                )
        if any(k.startswith("rotation/") for k in out):
            out["rotation_steps"] = last - first
        return out

    def state_dict(self) -> dict:
        return {"prev": self.prev, "prev_norms": self.prev_norms, "prev_step": self.prev_step}

    def load_state_dict(self, state: dict) -> None:
        prev = state.get("prev")
        if prev is not None:
            prev = [t.to(p.device, p.dtype).clone() for t, p in zip(prev, self.opt.regularized)]
        self.prev, self.prev_norms, self.prev_step = (
            prev,
            state.get("prev_norms"),
            state.get("prev_step"),
        )
