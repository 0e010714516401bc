"""The L2 term under Adam: how large λ₂·θ is against the data gradient and against √v̂.

Adam divides the L2 term by √v̂ like the rest of the gradient (core.update_rule), so where λ₂·θ
dominates, Adam + L2 turns into a sign step on θ instead of a decay. At each log point, per stage
(Adam + L2 only; θ and v̂ as they stand after the log point's step, g that step's data gradient):
    l2_grad_ratio/<stage>     ‖λ₂θ‖ / ‖g‖
    l2_sign_fraction/<stage>  the share of the stage's values with (λ₂θ)² > v̂
"""

from __future__ import annotations

import torch

from runner.probes import LogPoint, Probe, Subject


class L2Terms(Probe):
    name = "l2_terms"

    def __init__(self, subject: Subject):
        self.opt, self.stages, self.l2 = subject.opt, subject.stages, subject.plan.l2
        self.active = self.l2 > 0 and isinstance(self.opt.inner, torch.optim.Adam)
        params = self.opt.regularized
        self.sizes = {
            s: sum(params[i].numel() for i in idx.tolist()) for s, idx in self.stages.items()
        }

    @torch.no_grad()
    def at_log(self, point: LogPoint) -> dict[str, torch.Tensor]:
        params = self.opt.regularized
        state = self.opt.inner.state.get(params[0]) if params else None
        if not self.active or not state or point.grad_norms is None:
            return {}
        beta2 = self.opt.inner.param_groups[0]["betas"][1]
        step = torch.as_tensor(state["step"], device=params[0].device, dtype=torch.float32)
        moments = [self.opt.inner.state[p]["exp_avg_sq"] for p in params]
        v_hat = torch._foreach_div(moments, 1 - beta2**step)
        l2_sq = torch._foreach_mul(params, params)
        torch._foreach_mul_(l2_sq, self.l2**2)
        over = torch._foreach_sign(torch._foreach_sub(l2_sq, v_hat))  # +1 where (λ₂θ)² > v̂
        torch._foreach_add_(over, 1.0)
        counts = torch.stack(torch._foreach_norm(over, 1)).float() / 2  # Σ (sign + 1)/2 (ties ½)
        g_sq = point.grad_norms[: len(params)].pow(2)
        l2_sq = point.weight_norms.pow(2) * self.l2**2
        out = {}
        for s, idx in self.stages.items():
            out[f"l2_grad_ratio/{s}"] = (l2_sq[idx].sum() / g_sq[idx].sum()).sqrt()
            out[f"l2_sign_fraction/{s}"] = counts[idx].sum() / self.sizes[s]
        return out
