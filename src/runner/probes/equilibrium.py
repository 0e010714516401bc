"""Why strong decoupled decay moves BatchNorm: rotational equilibrium (Kosson et al. 2023/24).

A weight tensor followed by BatchNorm is scale-invariant (probes.scale_invariance): its gradient is
orthogonal to θ, so an update Δ grows ‖θ‖² by ‖Δ‖² while the decay shrinks it by ≈ 2·d_t·‖θ‖². The
two balance at the equilibrium norm, where θ keeps turning at a fixed angular speed whatever its
size, and the BatchNorm that follows sees its input statistics move at that speed. At each log
point, per stage, over the stage's scale-invariant kernels only (C_si values; the prediction needs
the invariance, so a v2 bottleneck's conv3, the projections and the head are left out):
    weight_norm/<stage>        ‖θ‖ of all the stage's regularized tensors
    weight_norm_si/<stage>     ‖θ‖ of its scale-invariant kernels
    weight_norm_eq/<stage>     lr_t·√(C_si/(2·d_t)) (Adam/AdamW: each value walks ≈ lr_t a step
                               long-run, m̂/√v̂ of unit scale; theory.equilibrium_norm)
    rotation/<stage>           the angle between θ_si at two consecutive log points
    angular_diffusion/<stage>  rotation / √k_eff: the long-run diffusion rate, the per-step angle of
                               a random walk that turns as far in the k steps between them;
                               k_eff = k − 2β(1 − β^k)/(1 − β) + β²(1 − β^{2k})/(1 − β²)
                               + β²(1 − β^k)²/(1 − β²) is the variance of the sum of k
                               momentum-averaged updates (β = Adam's β1 or SGD's momentum) in
                               units of one step's (16.2 for k = 25, β = 0.9)
    angular_diffusion_pred     √(2·d̄) (theory.diffusion_rate), d̄ the mean long-run shrink over
                               those steps (core.step_plan.effective_decay); none for Adam + L2
The per-step angle Kosson et al. predict, √(2·d(1 − β)/(1 + β)), is 4.36× smaller at β = 0.9:
probes.rotation measures it (angular_update_step/<stage>). Updates that keep one direction for
many steps make the diffusion rate exceed its prediction; the equilibrium norm also assumes the
random-walk update size, which real gradients need not give (the angle does not: a constant scale
of the updates cancels at equilibrium).
"""

from __future__ import annotations

import math

import torch

from runner.core.step_plan import effective_decay
from runner.probes import LogPoint, Probe, Subject
from runner.probes.rotation import stage_angle
from runner.probes.scale_invariance import invariant_stages
from runner.probes.theory import diffusion_rate, equilibrium_norm


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


class Equilibrium(Probe):
    """The figures of the module docstring at every log point; between log points it keeps θ_si,
    the stage norms and the step of the previous one (saved with each checkpoint)."""

    name = "equilibrium"

    def __init__(self, subject: Subject):
        self.opt, self.plan, self.stages = subject.opt, subject.plan, subject.stages
        params = self.opt.regularized
        device = params[0].device if params else None
        si = invariant_stages(subject.model, params)
        self.si = {s: torch.tensor(idx, device=device) for s, idx in si.items()}
        self.si_values = {s: sum(params[i].numel() for i in idx) for s, idx in si.items()}
        used = sorted({i for idx in si.values() for i in idx})
        self.tensors = [params[i] for i in used]
        at = {i: j for j, i in enumerate(used)}
        self.local = {s: torch.tensor([at[i] for i in idx], device=device) for s, idx in si.items()}
        self.prev: list[torch.Tensor] | None = None  # θ_si at the previous log point
        self.prev_sq: dict[str, float] | None = None
        self.prev_step: int | None = None

    @torch.no_grad()
    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        """Per stage ‖θ‖ and ‖θ_si‖², and ‖θ_si − θ_si,prev‖² (one foreach over the tensors), then
        θ_si becomes θ_si,prev."""
        norms = point.weight_norms
        out = {f"weight_norm/{s}": norms[idx].norm() for s, idx in self.stages.items()}
        out.update({f"si_sq/{s}": norms[idx].pow(2).sum() for s, idx in self.si.items()})
        if self.prev is not None:
            diff = torch.stack(torch._foreach_norm(torch._foreach_sub(self.tensors, self.prev)))
            diff_sq = diff.float().pow(2)
            out.update({f"diff_sq/{s}": diff_sq[idx].sum() for s, idx in self.local.items()})
            torch._foreach_copy_(self.prev, self.tensors)
        elif self.tensors:
            self.prev = [p.detach().clone() for p in self.tensors]
        return out

    def read_log(self, values: dict[str, float], point: LogPoint) -> dict[str, float]:
        by = lambda prefix: {
            k.split("/", 1)[1]: v for k, v in values.items() if k.startswith(prefix)
        }
        sq, diff = by("si_sq/"), by("diff_sq/")
        first = self.prev_step if self.prev_step is not None else 0  # a fresh run: from its start
        out = {f"weight_norm/{s}": v for s, v in by("weight_norm/").items()}
        out.update({f"weight_norm_si/{s}": math.sqrt(v) for s, v in sq.items()})
        out.update(self._figures(sq, diff, first, point.step))
        self.prev_sq, self.prev_step = sq, point.step
        return {k: v for k, v in out.items() if v is not None}

    def _figures(self, sq: dict, diff: dict, first: int, last: int) -> dict:
        """The figures of steps (first, last]: the plan's lr_t and d_t of those steps."""
        lrs, decays = self.plan.lr[first:last], self.plan.d[first:last]
        rule = (self.opt.algorithm, self.plan.l2, self.opt.momentum)
        eff = [effective_decay(rule[0], d, lr, rule[1], rule[2]) for lr, d in zip(lrs, decays)]
        d_mean = sum(eff) / len(eff) if eff and all(eff) else None
        out = {"angular_diffusion_pred": diffusion_rate(d_mean)}
        for stage, now_sq in sq.items():
            if self.prev_sq is not None and stage in diff and stage in self.prev_sq:
                angle = stage_angle(self.prev_sq[stage], now_sq, diff[stage])
                if angle is not None:
                    out[f"rotation/{stage}"] = angle
                    out[f"angular_diffusion/{stage}"] = angular_speed(angle, last - first, rule[2])
            if rule[0] == "adam" and decays and decays[-1] > 0:
                out[f"weight_norm_eq/{stage}"] = equilibrium_norm(
                    lrs[-1], decays[-1], self.si_values[stage]
                )
        if any(k.startswith("rotation/") for k in out):
            out["rotation_steps"] = last - first
        return out

    def state_dict(self) -> dict:
        return {"prev": self.prev, "prev_sq": self.prev_sq, "prev_step": self.prev_step}

    def load_state_dict(self, state: dict) -> None:
        prev = state.get("prev")
        if prev is not None:
            prev = [t.to(p.device, p.dtype).clone() for t, p in zip(prev, self.tensors)]
        self.prev, self.prev_sq, self.prev_step = prev, state.get("prev_sq"), state.get("prev_step")
